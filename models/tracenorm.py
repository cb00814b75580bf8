"""Trace-norm regularised deep multi-task learning with adversarial domain alignment.

Seed papers: Yang & Hospedales, "Trace Norm Regularised Deep Multi-Task
Learning" (ICLR-W 2017) and "Deep Multi-task Representation Learning: A
Tensor Factorisation Approach" (ICLR 2017), as used for facial expression
recognition with facial landmarks as the second task by Hu et al., "Deep
Multi-Task Learning to Recognise Subtle Facial Expressions of Mental States"
(ECCV 2018).

Architecture (one network per task, no hard sharing)::

    image [B, S, S, 1]
      -> ResNet-34_emotion   (models.backbones.resnet34, 33 main convs)  -> f_e [B, 8w]
      -> ResNet-34_landmarks (same topology, own weights)                 -> f_l [B, 8w]
    f_e -> Dense(8)    = z                 (emotion logits)
    f_l -> Dense(136)  = p                 (68 x (x, y) in [0, 1], linear)
    f_t -> R_lambda -> MLP 128-64-D  = d_t (t in {e, l}; D = number of datasets;
                                            32-16-D in the small preset)

``S = 96`` and a 3x3 average pool before the heads in both presets
(ResNet-34 reduces 96 px to a 3x3 map, so the pool yields ``8w`` features:
512 at the paper's ``w = 64``, 64 at the small preset's ``w = 8``).

Objective of one batch (``B`` samples, ``i`` indexes samples)::

    L = L_emo + alpha * L_lmk + beta * L_ada + mu * sum_{l=1}^{33} ||W_l||_*          (1)

    L_emo = sum_i e_i CE(softmax_{M_i}(z_i), y_i) / max(1, sum_i e_i)                (2)
            e_i = [y_i >= 0]; softmax_{M_i} is the softmax over the emotions of
            the sample's label set (emotion_mask M_i; other logits excluded)
    L_lmk = sum_i m_i (1/136) sum_k |p_ik - t_ik| / max(1, sum_i m_i)                 (3)
            m_i = landmarks_mask_i (l1 landmark regression)
    L_ada = 1/2 sum_{t in {e,l}} sum_i c_i CE(softmax(d_t(x_i)), dataset_id_i)
                                                              / max(1, sum_i c_i)     (4)
            c_i = [dataset_id_i >= 0]; gradient reversal R_lambda between f_t and
            the domain MLP (Ganin & Lempitsky 2015, Eq 13):
            R(f) = f forward, dR/df = -lambda I backward, with the DANN ramp
            lambda_p = lambda_max (2 / (1 + exp(-gamma p)) - 1), p = step/total
            (:class:`DANNRamp`, from ``TraceNormMTL.callbacks``; a fit without
            it keeps lambda = lambda_max)
    ||W_l||_*: tensor trace norm of the l-th conv kernels of the two task
            networks stacked on a last (task) axis, W_l in R^{k x k x c_in x c_out x 2}
            (Hu et al. Eqs 1-3 via models.layers.tensor_trace_norm):
            LAF  gamma ||W_(N)||_*                      (default)
            Tucker sum_i gamma_i ||W_(i)||_*
            TT   sum_i gamma_i ||W_[i]||_*
            with exact or randomized SVD (cfg ``trace_norm_svd``).

Trace-norm decrease rate (the paper's per-layer plot): ``r_l = ||W_l||_* (now) /
||W_l||_* (at build)``; the build-time norms are stored in the non-trainable
weight ``init_trace_norms`` (so they survive save/load) and
:meth:`TraceNormMTL.trace_norm_rates` returns the 33 rates;
:func:`trace_norm_decrease_plot` draws them.

Interpretation choices (the papers leave these open):

* **Which conv layers**: the 33 main convolutions of ResNet-34 (the 7x7 stem
  and the 32 3x3 block convolutions, ``models.backbones.conv_layers``); the 3
  1x1 projection shortcuts, the batch norms and the heads are not regularised
  (the heads differ in shape across tasks).
* **Disjoint tasks**: every sample runs through both task networks, but it
  trains only the heads its masks allow (Eqs 2-3): an emotion-only sample
  (``landmarks_mask = 0``) sends no gradient into the landmark head and a
  landmark-only sample (``emotion = -1``) none into the emotion head. Both
  networks still see every sample in the domain branch (Eq 4), which is the
  point of the alignment: the emotion network must see the landmark dataset
  to make its features dataset-invariant, and vice versa.
* **Domain classifier**: one MLP 512-128-64-D per task network (the input
  width is the backbone's feature width, 512 in the paper preset), behind one
  shared gradient-reversal layer; the domain label is ``dataset_id``
  (``-1``, unknown, gives no loss). With fewer than two datasets in
  ``cfg["datasets"]`` the branch is not built (``L_ada = 0``). The two task
  terms are averaged (Eq 4).
* **Normalisation**: each task loss is a mean over the samples that carry
  its label (Eqs 2-4), so the loss scale does not depend on the task mix of a
  batch; a batch without any label of a kind contributes 0 for it.
* **Landmark head**: linear, kernel initialised to zero and bias to 0.5, so
  every point starts at the image centre (a randomly initialised kernel
  would start with an l1 error several times the face's size).
* **Label space at inference**: the training step ORs the ``emotion_mask`` of
  every emotion-labelled sample into the saved ``label_set`` of a
  :class:`models.loss_model.LabelSetMask`; ``probabilities`` is the softmax over
  that set (all 8 emotions before any training), so logits never trained
  (e.g. ``contempt`` with 7-class data) get probability 0.
* Optimiser: SGD with momentum 0.9, constant lr 0.01 (paper preset);
  the small preset uses Adam (lr 2e-3, Keras ``CosineDecay`` to 0 over the
  fit's ``schedule_steps``, :func:`models.optimizers.learning_rate`) so that a
  few CPU epochs suffice. The
  trace-norm strength ``mu``, landmark weight ``alpha`` and adversarial
  weight ``beta`` are not given by the paper and are our choice.
* **Small preset**: the paper's topology (33 convs, 96 px, 3x3 pool) at width
  8 (``8w = 64`` features, domain MLP 64-32-16-D). 96 px, not 48: with the
  ResNet-34 stem (7x7/2 conv + 3x3/2 max-pool) a 48 px face is a 12x12 map
  after the stem, and on the synthetic faces (40 subjects, emotion-only lab /
  landmark-only wild) held-out emotion accuracy stayed at 14-27 % after 10-16
  epochs at 48 px (Adam or SGD, width 8 or 16, flatten or global pooling)
  against 38-45 % at 96 px; a step costs about 0.1-0.2 s on 2 CPU cores.
  (``small_input=True``, the 3x3/1 stem, crashed inside TF 2.16's oneDNN
  kernels in the backward pass at width 8.)
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import keras
import numpy as np
import tensorflow as tf

from components import contract
from models import backbones
from models.base import Method
from models.layers import DANNLambdaSchedule, GradientReversal, TraceNormRegularizer
from models.optimizers import optimizer_from_cfg
from models.loss_model import LabelSetMask, LossModel

NUM_CLASSES = contract.NUM_EMOTIONS
NUM_LANDMARK_COORDS = 2 * contract.NUM_LANDMARKS
TASKS = ("emotion", "landmarks")
NUM_TRACE_LAYERS = 33
_NEG = -1e9


# --------------------------------------------------------------------------
# losses (Eqs 2-4)
# --------------------------------------------------------------------------
def masked_emotion_loss(logits, emotion, emotion_mask) -> tf.Tensor:
    """Eq 2: mean masked-softmax cross-entropy over the samples with ``emotion >= 0``.

    Logits of emotions outside a sample's ``emotion_mask`` are replaced (not
    offset) by -1e9, so they receive exactly zero gradient; a sample with
    ``emotion == -1`` has weight 0 and contributes exactly zero gradient.
    """
    logits = tf.cast(logits, tf.float32)
    y = tf.reshape(tf.cast(emotion, tf.int64), [-1])
    mask = tf.cast(emotion_mask, tf.float32)
    # a row without label set (unlabelled sample) keeps all logits: finite, weight 0
    has_set = tf.reduce_sum(mask, axis=-1, keepdims=True) > 0
    allowed = tf.logical_or(mask > 0, tf.logical_not(has_set))
    masked = tf.where(allowed, logits, tf.cast(_NEG, logits.dtype))
    labelled = y >= 0
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.where(labelled, y, tf.zeros_like(y)), logits=masked)
    w = tf.cast(labelled, tf.float32)
    return tf.reduce_sum(w * ce) / tf.maximum(tf.reduce_sum(w), 1.0)


def masked_landmark_l1(pred, landmarks, landmarks_mask) -> tf.Tensor:
    """Eq 3: mean over landmark-labelled samples of the mean absolute coordinate error."""
    pred = tf.cast(pred, tf.float32)
    target = tf.cast(tf.reshape(landmarks, tf.shape(pred)), tf.float32)
    m = tf.reshape(tf.cast(landmarks_mask, tf.float32), [-1])
    per_sample = tf.reduce_mean(tf.abs(pred - target), axis=-1)
    return tf.reduce_sum(m * per_sample) / tf.maximum(tf.reduce_sum(m), 1.0)


def domain_loss(domain_logits, dataset_id) -> tf.Tensor:
    """One term of Eq 4: mean cross-entropy of the dataset label over samples with
    ``dataset_id >= 0``."""
    d = tf.reshape(tf.cast(dataset_id, tf.int64), [-1])
    known = d >= 0
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.where(known, d, tf.zeros_like(d)), logits=tf.cast(domain_logits, tf.float32))
    w = tf.cast(known, tf.float32)
    return tf.reduce_sum(w * ce) / tf.maximum(tf.reduce_sum(w), 1.0)


# --------------------------------------------------------------------------
# network
# --------------------------------------------------------------------------
def _trace_regularizer(cfg: Dict[str, Any]) -> TraceNormRegularizer:
    return TraceNormRegularizer(float(cfg["trace_norm_strength"]), kind=cfg["trace_norm_kind"],
                                svd=cfg["trace_norm_svd"], gammas=cfg["trace_norm_gammas"],
                                rank=cfg["trace_norm_rank"])


def build_network(cfg: Dict[str, Any]) -> keras.Model:
    """Functional ``image -> dict``: both task ResNet-34s, heads and domain branch.

    Outputs: ``emotion_logits`` [B, 8], ``probabilities`` [B, 8] (softmax over
    the label set seen in training, :class:`models.loss_model.LabelSetMask`),
    ``landmarks`` [B, 136], ``emotion_features`` / ``landmarks_features``
    [B, 8w] and, with >= 2 datasets in ``cfg["datasets"]``,
    ``emotion_domain_logits`` / ``landmarks_domain_logits`` [B, D].
    Layer names: trunk ``f"{task}_conv{k}"`` (k = 0..32, paired across tasks),
    ``gradient_reversal``, ``f"{task}_domain_classifier"``.
    """
    s = int(cfg["image_size"])
    image = keras.Input((s, s, 1), name="image")
    feats = {task: backbones.resnet34(image, width=int(cfg["width"]), name=task,
                                      pool_size=cfg["pool_size"],
                                      small_input=bool(cfg["small_input"]),
                                      weight_decay=float(cfg["weight_decay"]))
             for task in TASKS}
    logits = keras.layers.Dense(NUM_CLASSES, name="emotion_logits")(feats["emotion"])
    masked = LabelSetMask(NUM_CLASSES, name="label_set")(logits)
    probs = keras.layers.Softmax(name="probabilities")(masked)
    # zero kernel, bias 0.5: every point starts at the image centre (module docstring)
    lmk = keras.layers.Dense(NUM_LANDMARK_COORDS, name="landmarks", kernel_initializer="zeros",
                             bias_initializer=keras.initializers.Constant(0.5))(
        feats["landmarks"])
    out = {"emotion_logits": logits, "probabilities": probs, "landmarks": lmk,
           "emotion_features": feats["emotion"], "landmarks_features": feats["landmarks"]}
    n_domains = len(cfg["datasets"])
    if n_domains >= 2:
        feat_dim = int(feats["emotion"].shape[-1])
        grl = GradientReversal(float(cfg["ada_max_lambda"]), name="gradient_reversal")
        for task in TASKS:
            head = keras.Sequential(
                [keras.Input((feat_dim,))]
                + [keras.layers.Dense(u, activation="relu", name=f"{task}_ada{j + 1}")
                   for j, u in enumerate(cfg["ada_units"])]
                + [keras.layers.Dense(n_domains, name=f"{task}_ada_logits")],
                name=f"{task}_domain_classifier")
            out[f"{task}_domain_logits"] = head(grl(feats[task]))
    return keras.Model(image, out, name="tracenorm_net")


# --------------------------------------------------------------------------
# training model
# --------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="fermtl.tracenorm")
class TraceNormMTLModel(LossModel):
    """Training model: :func:`build_network` plus the objective of Eq 1.

    ``fit`` takes batches of model-input dicts; ``call`` takes an image batch
    (or such a dict) and returns the network's outputs. The 33 paired conv
    layers are ``trace_groups``; their trace norms at build time are the
    non-trainable weight ``init_trace_norms``.
    """

    loss_terms = ("loss", "emotion_loss", "landmark_loss", "domain_loss", "trace_norm",
                  "ada_lambda")

    def __init__(self, cfg: Dict[str, Any], **kwargs):
        self.cfg = dict(cfg)
        super().__init__(build_network(self.cfg), **kwargs)
        self.trace_groups = list(zip(*(backbones.conv_layers(self.net, task)
                                       for task in TASKS)))
        if len(self.trace_groups) != NUM_TRACE_LAYERS:
            raise RuntimeError(f"expected {NUM_TRACE_LAYERS} paired conv layers, "
                               f"found {len(self.trace_groups)}")
        self.trace_regularizer = _trace_regularizer(self.cfg)
        self.has_domain_branch = len(self.cfg["datasets"]) >= 2
        self.init_trace_norms = self.add_weight(
            name="init_trace_norms", shape=(NUM_TRACE_LAYERS,), initializer="zeros",
            trainable=False)
        self.init_trace_norms.assign(self.layer_trace_norms())

    def get_config(self):
        return {**super().get_config(), "cfg": self.cfg}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        cfg = config.pop("cfg")
        return cls(cfg, **{k: v for k, v in config.items() if k in ("name", "trainable")})

    # -- pieces ----------------------------------------------------------------
    @property
    def gradient_reversal(self) -> Optional[GradientReversal]:
        """The shared gradient-reversal layer (None without a domain branch)."""
        return self.net.get_layer("gradient_reversal") if self.has_domain_branch else None

    def domain_logits(self, features, task: str, reverse: bool = True):
        """``d_t(R_lambda(f))`` of Eq 4 for ``task`` in :data:`TASKS`
        (``reverse=False`` skips the reversal layer)."""
        x = self.gradient_reversal(features) if reverse else features
        return self.net.get_layer(f"{task}_domain_classifier")(x)

    # -- trace norm ------------------------------------------------------------
    def layer_trace_norms(self) -> tf.Tensor:
        """``[||W_l||_*]_{l=1..33}`` (unscaled; cfg's kind and SVD) at the current weights."""
        return tf.stack([self.trace_regularizer.group_norm(g) for g in self.trace_groups])

    def trace_norm(self) -> tf.Tensor:
        """``sum_l ||W_l||_*``: Eq 1's regulariser without the strength ``mu``."""
        return tf.add_n([self.trace_regularizer.group_norm(g) for g in self.trace_groups])

    def trace_norm_rates(self) -> List[float]:
        """Per-layer decrease rate ``||W_l||_* / ||W_l||_*(build time)``, l = 1..33."""
        now = np.asarray(self.layer_trace_norms(), np.float64)
        init = np.asarray(self.init_trace_norms, np.float64)
        return [float(a / b) if b > 0 else float("nan") for a, b in zip(now, init)]

    # -- objective (Eq 1) --------------------------------------------------------
    def compute_batch_loss(self, batch, outputs, training):
        """Eq 1 (``loss``) and its terms: ``emotion_loss`` (Eq 2), ``landmark_loss``
        (Eq 3), ``domain_loss`` (Eq 4), ``trace_norm`` (unscaled sum over the 33
        layers), ``ada_lambda`` (current reversal factor)."""
        cfg = self.cfg
        l_emo = masked_emotion_loss(outputs["emotion_logits"], batch["emotion"],
                                    batch["emotion_mask"])
        l_lmk = masked_landmark_l1(outputs["landmarks"], batch["landmarks"],
                                   batch["landmarks_mask"])
        if self.has_domain_branch and "dataset_id" in batch:
            l_ada = 0.5 * tf.add_n([domain_loss(outputs[f"{t}_domain_logits"],
                                                batch["dataset_id"]) for t in TASKS])
            lam = tf.convert_to_tensor(self.gradient_reversal.lambda_var)
        else:
            l_ada, lam = tf.constant(0.0), tf.constant(0.0)
        tn = self.trace_norm()
        loss = l_emo + float(cfg["landmark_weight"]) * l_lmk
        if float(cfg["ada_weight"]):
            loss = loss + float(cfg["ada_weight"]) * l_ada
        if float(cfg["trace_norm_strength"]):
            loss = loss + float(cfg["trace_norm_strength"]) * tn
        return {"loss": loss, "emotion_loss": l_emo, "landmark_loss": l_lmk,
                "domain_loss": l_ada, "trace_norm": tn, "ada_lambda": lam}

    def loss_terms_of(self, batch, training: bool = False) -> Dict[str, tf.Tensor]:
        """Forward pass + :meth:`compute_batch_loss` (plus regularisation losses),
        exactly what :meth:`train_step` differentiates (tests, diagnostics)."""
        terms = dict(self.compute_batch_loss(batch, self(batch["image"], training=training),
                                             training))
        if self.losses:
            terms["loss"] = terms["loss"] + tf.add_n(self.losses)
        return terms

    def train_step(self, batch):
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        logs = super().train_step(batch)
        labelled = tf.cast(tf.reshape(batch["emotion"], [-1]) >= 0, tf.float32)
        self.net.get_layer("label_set").update(
            tf.cast(batch["emotion_mask"], tf.float32) * labelled[:, None])
        return logs

    def test_step(self, batch):
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        return super().test_step(batch)


class DANNRamp(DANNLambdaSchedule):
    """:class:`models.layers.DANNLambdaSchedule` on the model's ``gradient_reversal``
    layer, found when Keras attaches the model (``Method.callbacks`` gets no model).

    ``total_steps`` defaults to ``epochs x steps`` of the running ``fit`` (Keras'
    ``self.params``), so the ramp ends with the fit whatever ``epochs`` it was
    given; the step counter is ``epoch x steps + batch``, so a resumed fit
    (``initial_epoch > 0``) continues the ramp where it left off.
    """

    def __init__(self, total_steps: int = 1, gamma: float = 10.0, max_lambda: float = 1.0,
                 use_fit_params: bool = True):
        super().__init__([], max(int(total_steps), 1), gamma, max_lambda)
        self.use_fit_params = use_fit_params
        self._steps_per_epoch = None

    def set_model(self, model):
        super().set_model(model)
        grl = getattr(model, "gradient_reversal", None)
        self.layers_ = [grl] if grl is not None else []

    def on_train_begin(self, logs=None):
        params = self.params or {}
        steps, epochs = params.get("steps"), params.get("epochs")
        if steps:
            self._steps_per_epoch = int(steps)
            if self.use_fit_params and epochs:
                self.total_steps = int(steps) * int(epochs)
        super().on_train_begin(logs)

    def on_epoch_begin(self, epoch, logs=None):
        if self._steps_per_epoch:
            self.step = int(epoch) * self._steps_per_epoch
        super().on_epoch_begin(epoch, logs)


# --------------------------------------------------------------------------
# method
# --------------------------------------------------------------------------
class TraceNormMTL(Method):
    """Trace-norm deep MTL (emotion + 68 landmarks) with adversarial domain alignment."""

    name = "tracenorm"
    presets = {
        "small": {
            # the paper's topology at width 8 (see "Small preset" in the module docstring)
            "image_size": 96,
            "width": 8,
            "pool_size": 3,             # 3x3 average pool before the heads
            "small_input": False,       # keep the 7x7/2 stem + max-pool of ResNet-34
            "weight_decay": 0.0,
            "datasets": [],             # dataset_id vocabulary = the ADA domains
            "landmark_weight": 1.0,     # alpha, Eq 1
            "ada_weight": 0.1,          # beta, Eq 1
            "ada_units": [32, 16],
            "ada_gamma": 10.0,
            "ada_max_lambda": 1.0,
            "trace_norm_strength": 1e-3,  # mu, Eq 1
            "trace_norm_kind": "laf",     # laf | tucker | tt
            "trace_norm_svd": "exact",    # exact | randomized | gram
            "trace_norm_gammas": None,
            "trace_norm_rank": None,
            "optimizer": "adam",
            "learning_rate": 2e-3,
            "lr_schedule": "cosine",      # constant | cosine (over the fit)
            "momentum": 0.9,
            "batch_size": 32,
            "epochs": 12,
        },
        "paper": {
            "image_size": 96,
            "width": 64,
            "pool_size": 3,             # 3x3 average pool before the heads
            "small_input": False,
            "weight_decay": 0.0,
            "datasets": [],
            "landmark_weight": 1.0,
            "ada_weight": 1.0,
            "ada_units": [128, 64],     # 512-128-64-D
            "ada_gamma": 10.0,
            "ada_max_lambda": 1.0,
            "trace_norm_strength": 1e-3,
            "trace_norm_kind": "laf",
            "trace_norm_svd": "exact",
            "trace_norm_gammas": None,
            "trace_norm_rank": None,
            "optimizer": "sgd",
            "learning_rate": 0.01,
            "lr_schedule": "constant",
            "momentum": 0.9,
            "batch_size": 64,
            "epochs": 50,
        },
    }

    def build(self, cfg: Dict[str, Any]) -> keras.Model:
        model = TraceNormMTLModel(cfg, name="tracenorm")
        model.compile(optimizer=optimizer_from_cfg(cfg), jit_compile=False)
        return model

    def inference_model(self, model: keras.Model, cfg: Dict[str, Any]) -> keras.Model:
        net = model.net
        return keras.Model(net.input,
                           {"probabilities": net.get_layer("probabilities").output,
                            "landmarks": net.get_layer("landmarks").output,
                            "embedding": net.output["emotion_features"]},
                           name="tracenorm_inference")

    def callbacks(self, cfg: Dict[str, Any], steps_per_epoch: int):
        if len(cfg["datasets"]) < 2 or not cfg["ada_weight"]:
            return []
        # the ramp's length is re-read from the running fit (DANNRamp.on_train_begin)
        total = max(int(steps_per_epoch or 0) * int(cfg["epochs"]), 1)
        return [DANNRamp(total, cfg["ada_gamma"], cfg["ada_max_lambda"])]

    def trace_norm_rates(self, model: keras.Model) -> List[float]:
        """The 33 per-layer trace-norm decrease rates ``||W_l||_* / ||W_l||_*(init)``."""
        return model.trace_norm_rates()


# --------------------------------------------------------------------------
# figure
# --------------------------------------------------------------------------
def trace_norm_decrease_plot(rates, path, title: Optional[str] = None) -> str:
    """Bar chart of per-layer trace-norm decrease rates (Yang & Hospedales' figure).

    ``rates``: a sequence of 33 values, or a mapping ``label -> sequence`` for
    several runs (grouped bars, e.g. LAF / Tucker / TT). Writes a PNG to
    ``path`` (matplotlib Agg) and returns the path.
    """
    # late: only this figure needs matplotlib (and its Agg backend must be
    # chosen before pyplot loads); training the method does not import it
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = dict(rates) if isinstance(rates, dict) else {"rate": list(rates)}
    if not series or not any(len(v) for v in series.values()):
        raise ValueError("trace_norm_decrease_plot: no rates")
    n = max(len(v) for v in series.values())
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * n + 2), 3.2), dpi=100)
    width = 0.8 / len(series)
    for j, (label, values) in enumerate(series.items()):
        xs = np.arange(1, len(values) + 1) + (j - (len(series) - 1) / 2) * width
        ax.bar(xs, np.asarray(values, np.float64), width=width, label=str(label))
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xlabel("conv layer (stacked across tasks)")
    ax.set_ylabel("trace norm / trace norm at init")
    ax.set_xlim(0.3, n + 0.7)
    ax.set_title(title or "Trace-norm decrease rate per layer")
    if len(series) > 1:
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(str(path))), exist_ok=True)
    fig.savefig(str(path), format="png")
    plt.close(fig)
    return str(path)
