"""The trace-norm MTL network and its training model.

Hu, Liu, Yuan, Yu, Hua, Zhang, Shen, Shao, Hospedales, Robertson, Yang, "Deep
Multi-Task Learning to Recognise Subtle Facial Expressions of Mental States"
(ECCV 2018), Sec. 2.

* Sec. 2.2 and 2.4, two task networks of one architecture (ResNet-34, the 3x3
  average pool): :func:`build_trunks` (``emotion_trunk``, ``landmarks_trunk``);
  with the heads and the domain classifier: :func:`build_network`.
* Eqs 1-3, the tensor trace norm of the 33 paired convolutions
  (``sharing: trace_norm``): :func:`trace_regularizer`
  (``models.layers.TraceNormRegularizer``), :meth:`TraceNormMTLModel.trace_norm`.
* Eq 4, ADA: ONE ``g_Phi`` behind a gradient-reversal layer on the stacked
  features ``Z = [f_1(X_1); f_2(X_2)]``, predicting which task's data a row is
  from: :meth:`TraceNormMTLModel.domain_logits`, :func:`domain_loss`.
* Sec. 2.4, the task losses: :func:`masked_emotion_loss`,
  :func:`masked_landmark_l1`; each task network on its task's rows:
  :meth:`TraceNormMTLModel.task_forward`.
* Table 4, hard sharing RN(k) (``sharing: hard``): :func:`hard_shared_layers`;
  ``sharing: none``: two single-task networks.
* Sec. 4.2, Fig. 3, TNDR: :meth:`TraceNormMTLModel.trace_norm_rates`.

Deviations and reading choices: docs/methods.md, section Trace-norm deep MTL
+ ADA.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Set

import keras
import numpy as np
import tensorflow as tf

from components import contract
from models import backbones
from models.layers import GradientReversal, TraceNormRegularizer
from models.loss_model import LabelSetMask, LossModel, replica_scaled

NUM_CLASSES = contract.NUM_EMOTIONS
NUM_LANDMARK_COORDS = 2 * contract.NUM_LANDMARKS
TASKS = ("emotion", "landmarks")
NUM_TRACE_LAYERS = 33
SHARING = ("trace_norm", "hard", "none")
_NEG = -1e9


# --------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------
def masked_emotion_loss(logits, emotion, emotion_mask) -> tf.Tensor:
    """Softmax cross-entropy of the emotion task (Sec. 2.4), mean over the rows
    with ``emotion >= 0``.

    Logits of emotions outside a row's ``emotion_mask`` are replaced (not
    offset) by -1e9, so they receive exactly zero gradient; a row with
    ``emotion == -1`` has weight 0; no rows give 0.
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
    """l1 landmark regression loss (Sec. 2.4, Table 6): mean over the rows with
    ``landmarks_mask > 0`` of the mean absolute coordinate error (136 coordinates)."""
    pred = tf.cast(pred, tf.float32)
    target = tf.cast(tf.reshape(landmarks, tf.shape(pred)), tf.float32)
    m = tf.reshape(tf.cast(landmarks_mask, tf.float32), [-1])
    per_sample = tf.reduce_mean(tf.abs(pred - target), axis=-1)
    return tf.reduce_sum(m * per_sample) / tf.maximum(tf.reduce_sum(m), 1.0)


def domain_loss(domain_logits, labels) -> tf.Tensor:
    """Eq 4's ``l(g_Phi(Z), y)``: mean softmax cross-entropy of the rows' source
    labels (rows with ``labels < 0`` give no loss; no rows give 0)."""
    d = tf.reshape(tf.cast(labels, tf.int64), [-1])
    known = d >= 0
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.where(known, d, tf.zeros_like(d)), logits=tf.cast(domain_logits, tf.float32))
    w = tf.cast(known, tf.float32)
    return tf.reduce_sum(w * ce) / tf.maximum(tf.reduce_sum(w), 1.0)


# --------------------------------------------------------------------------
# network
# --------------------------------------------------------------------------
_BLOCK_LAYER = re.compile(r"_(conv|bn)(\d+)$")
_PROJ_LAYER = re.compile(r"_(proj|projbn)(\d+)$")


def _first_conv_of_stage(stage: int) -> int:
    """Index k of the first block convolution of ResNet-34 stage ``stage`` (1..4)."""
    return 1 + 2 * sum(backbones.RESNET34_BLOCKS[:stage - 1])


def hard_shared_layers(trunk: keras.Model, k: int) -> Set[str]:
    """Names of the weighted layers RN(k) shares (Sec. 4.2, Table 4): the stem
    (``conv0``/``bn0``) and the block convolutions 1..k with their batch norms and
    the projection shortcuts of the blocks they belong to. ``k`` must close a
    residual block (even, 2..32); the paper's values 6, 14, 26, 32 close stages."""
    if k % 2 or not 2 <= k <= 2 * sum(backbones.RESNET34_BLOCKS):
        raise ValueError(f"hard_shared_convs must be an even number of block convolutions "
                         f"in 2..32 (whole residual blocks), got {k}")
    shared = set()
    for layer in trunk.layers:
        if not layer.weights:
            continue
        block, proj = _BLOCK_LAYER.search(layer.name), _PROJ_LAYER.search(layer.name)
        if block and int(block.group(2)) <= k:
            shared.add(layer.name)
        elif proj and _first_conv_of_stage(int(proj.group(2))) <= k:
            shared.add(layer.name)
    return shared


def build_trunks(cfg: Dict[str, Any]) -> Dict[str, keras.Model]:
    """The two task networks ``{task}_trunk``: ``image [B, S, S, 1] -> f [B, 8w]``.

    The landmark trunk is a clone of the emotion trunk (own weights, layer names
    ``landmarks_*``) except, with ``sharing: hard``, the layers of
    :func:`hard_shared_layers`, which are the emotion trunk's own layer objects.
    """
    sharing = cfg["sharing"]
    if sharing not in SHARING:
        raise ValueError(f"sharing must be one of {SHARING}, got {sharing!r}")
    s = int(cfg["image_size"])
    image = keras.Input((s, s, 1), name="emotion_image")
    feats = backbones.resnet34(image, width=int(cfg["width"]), name="emotion",
                               pool_size=cfg["pool_size"], small_input=bool(cfg["small_input"]),
                               weight_decay=float(cfg["weight_decay"]))
    emotion = keras.Model(image, feats, name="emotion_trunk")
    shared = (hard_shared_layers(emotion, int(cfg["hard_shared_convs"])) if sharing == "hard"
              else set())

    def clone(layer):
        if layer.name in shared:
            return layer
        config = dict(layer.get_config(), name="landmarks" + layer.name[len("emotion"):])
        return layer.__class__.from_config(config)

    image_l = keras.Input((s, s, 1), name="landmarks_image")
    copy = keras.models.clone_model(emotion, input_tensors=image_l, clone_function=clone)
    return {"emotion": emotion,
            "landmarks": keras.Model(image_l, copy.output, name="landmarks_trunk")}


def trunk_convs(trunk: keras.Model) -> List[keras.layers.Conv2D]:
    """The 33 main convolutions of a trunk in order (shared ones keep the
    ``emotion_`` prefix and come first, as RN(k) shares a prefix)."""
    return backbones.conv_layers(trunk, "emotion") + backbones.conv_layers(trunk, "landmarks")


def build_network(cfg: Dict[str, Any]) -> keras.Model:
    """Functional ``image -> dict``, both task networks on the same image (inference).

    Outputs: ``emotion_logits`` [B, 8], ``probabilities`` [B, 8] (softmax over
    the label set seen in training, :class:`models.loss_model.LabelSetMask`),
    ``landmarks`` [B, 136], ``emotion_features`` / ``landmarks_features``
    [B, 8w] and, with ``cfg["ada"]``, ``emotion_domain_logits`` /
    ``landmarks_domain_logits`` [B, 2]: the one domain classifier on either
    trunk's features. Layers: ``emotion_trunk``, ``landmarks_trunk``,
    ``emotion_logits``, ``landmarks``, ``gradient_reversal``, ``domain_classifier``.
    """
    trunks = build_trunks(cfg)
    s = int(cfg["image_size"])
    image = keras.Input((s, s, 1), name="image")
    feats = {task: trunks[task](image) for task in TASKS}
    logits = keras.layers.Dense(NUM_CLASSES, name="emotion_logits")(feats["emotion"])
    masked = LabelSetMask(NUM_CLASSES, name="label_set")(logits)
    probs = keras.layers.Softmax(name="probabilities")(masked)
    # zero kernel, bias 0.5: every point starts at the image centre (docs/methods.md)
    lmk = keras.layers.Dense(NUM_LANDMARK_COORDS, name="landmarks", kernel_initializer="zeros",
                             bias_initializer=keras.initializers.Constant(0.5))(
        feats["landmarks"])
    out = {"emotion_logits": logits, "probabilities": probs, "landmarks": lmk,
           "emotion_features": feats["emotion"], "landmarks_features": feats["landmarks"]}
    if cfg["ada"]:
        feat_dim = int(feats["emotion"].shape[-1])
        grl = GradientReversal(float(cfg["ada_max_lambda"]), name="gradient_reversal")
        g_phi = keras.Sequential(
            [keras.Input((feat_dim,))]
            + [keras.layers.Dense(u, activation="relu", name=f"ada{j + 1}")
               for j, u in enumerate(cfg["ada_units"])]
            + [keras.layers.Dense(len(TASKS), name="ada_logits")],
            name="domain_classifier")
        for task in TASKS:
            out[f"{task}_domain_logits"] = g_phi(grl(feats[task]))
    return keras.Model(image, out, name="tracenorm_net")


def trace_regularizer(cfg: Dict[str, Any]) -> TraceNormRegularizer:
    """The tensor trace norm of ``cfg`` (kind Eq 1/2/3, SVD back-end, gammas, rank)."""
    return TraceNormRegularizer(float(cfg["trace_norm_strength"]), kind=cfg["trace_norm_kind"],
                                svd=cfg["trace_norm_svd"], gammas=cfg["trace_norm_gammas"],
                                rank=cfg["trace_norm_rank"])


# --------------------------------------------------------------------------
# training model
# --------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="fermtl.tracenorm")
class TraceNormMTLModel(LossModel):
    """Training model: :func:`build_network` and the objective

    ``L = L_emo + alpha L_lmk + beta L_ada + mu sum_{l=1}^{33} ||W_l||_*``

    on routed batches (:meth:`task_forward`). ``call`` takes an image batch (or
    a model-input dict) and returns the network's outputs (both trunks on
    every image). The 33 paired conv layers are ``trace_groups``; their trace
    norms at build time are the non-trainable weight ``init_trace_norms``.
    """

    loss_terms = ("loss", "emotion_loss", "landmark_loss", "domain_loss", "trace_norm",
                  "ada_lambda")

    def __init__(self, cfg: Dict[str, Any], **kwargs):
        self.cfg = dict(cfg)
        super().__init__(build_network(self.cfg), **kwargs)
        self.trace_groups = list(zip(*(trunk_convs(self.trunk(task)) for task in TASKS)))
        if len(self.trace_groups) != NUM_TRACE_LAYERS:
            raise RuntimeError(f"expected {NUM_TRACE_LAYERS} paired conv layers, "
                               f"found {len(self.trace_groups)}")
        self.trace_regularizer = trace_regularizer(self.cfg)
        self.has_domain_branch = bool(self.cfg["ada"])
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
    def trunk(self, task: str) -> keras.Model:
        """The task network ``f_Theta_t`` (``image -> features``) of ``task`` in :data:`TASKS`."""
        return self.net.get_layer(f"{task}_trunk")

    @property
    def penalised(self) -> bool:
        """Whether the trace norm is in the loss (``sharing: trace_norm`` and ``mu > 0``)."""
        return self.cfg["sharing"] == "trace_norm" and bool(float(self.cfg["trace_norm_strength"]))

    @property
    def gradient_reversal(self) -> Optional[GradientReversal]:
        """The gradient-reversal layer in front of ``g_Phi`` (None without ADA)."""
        return self.net.get_layer("gradient_reversal") if self.has_domain_branch else None

    @property
    def domain_classifier(self) -> Optional[keras.Model]:
        """``g_Phi`` of Eq 4: the one MLP on the stacked features (None without ADA)."""
        return self.net.get_layer("domain_classifier") if self.has_domain_branch else None

    def domain_logits(self, z, reverse: bool = True):
        """``g_Phi(R_lambda(Z))`` of Eq 4 (``reverse=False`` skips the reversal)."""
        return self.domain_classifier(self.gradient_reversal(z) if reverse else z)

    # -- trace norm ------------------------------------------------------------
    def layer_trace_norms(self) -> tf.Tensor:
        """``[||W_l||_*]_{l=1..33}`` (unscaled; cfg's kind and SVD) at the current weights."""
        return tf.stack([self.trace_regularizer.group_norm(g) for g in self.trace_groups])

    def trace_norm(self) -> tf.Tensor:
        """``sum_l ||W_l||_*``: the regulariser without the strength ``mu``."""
        return tf.add_n([self.trace_regularizer.group_norm(g) for g in self.trace_groups])

    def trace_norm_rates(self) -> List[float]:
        """Per-layer decrease rate ``||W_l||_* / ||W_l||_*(build time)``, l = 1..33
        (the paper's TNDR, Sec. 4.2, Fig. 3)."""
        now = np.asarray(self.layer_trace_norms(), np.float64)
        init = np.asarray(self.init_trace_norms, np.float64)
        return [float(a / b) if b > 0 else float("nan") for a, b in zip(now, init)]

    # -- routed forward pass ------------------------------------------------------
    def _trunk_on(self, task, images, training):
        """``f_Theta_t(images)``; an empty batch skips the trunk (batch-norm
        statistics of zero rows would be NaN)."""
        trunk = self.trunk(task)
        width = int(trunk.output.shape[-1])
        return tf.cond(tf.shape(images)[0] > 0, lambda: trunk(images, training=training),
                       lambda: tf.zeros([0, width], images.dtype))

    def task_forward(self, batch, training: bool = False) -> Dict[str, tf.Tensor]:
        """Each task network on its own batch: the rows with an emotion label
        (``emotion >= 0``) through the emotion network, the rows with landmarks
        (``landmarks_mask > 0``) through the landmark network. With
        ``route_batches: false`` every row runs through both networks (batch-norm
        statistics over the whole batch) and only the task's rows are kept after
        it (why: docs/methods.md, batch per task).

        Returns ``{task}_index`` (the batch rows routed to ``task``),
        ``{task}_features``, ``emotion_logits`` [n_e, 8], ``landmarks`` [n_l, 136]
        and, with ADA, ``domain_logits`` = ``g_Phi(R(Z))`` on
        ``Z = [f_e(X_e); f_l(X_l)]`` with ``domain_labels`` (0 / 1: which task's
        data the row is from), Eq 4.
        """
        image = tf.convert_to_tensor(batch["image"])
        index = {"emotion": tf.where(tf.reshape(batch["emotion"], [-1]) >= 0)[:, 0],
                 "landmarks": tf.where(tf.reshape(batch["landmarks_mask"], [-1]) > 0)[:, 0]}
        out = {}
        for task in TASKS:
            out[f"{task}_index"] = index[task]
            if self.cfg["route_batches"]:
                out[f"{task}_features"] = self._trunk_on(task, tf.gather(image, index[task]),
                                                         training)
            else:  # every row through both networks, the task's rows kept afterwards
                out[f"{task}_features"] = tf.gather(
                    self.trunk(task)(image, training=training), index[task])
        out["emotion_logits"] = self.net.get_layer("emotion_logits")(out["emotion_features"])
        out["landmarks"] = self.net.get_layer("landmarks")(out["landmarks_features"])
        if self.has_domain_branch:
            z = tf.concat([out[f"{task}_features"] for task in TASKS], axis=0)
            out["domain_logits"] = self.domain_logits(z)
            out["domain_labels"] = tf.concat(
                [tf.fill(tf.shape(index[task]), tf.constant(t, tf.int64))
                 for t, task in enumerate(TASKS)], axis=0)
        return out

    # -- objective ---------------------------------------------------------------
    def compute_batch_loss(self, batch, outputs, training):
        """``loss`` and its terms on :meth:`task_forward` outputs: ``emotion_loss``,
        ``landmark_loss``, ``domain_loss`` (Eq 4), ``trace_norm`` (unscaled sum over
        the 33 layers; 0 for variants without the penalty), ``ada_lambda``."""
        cfg = self.cfg
        e, m = outputs["emotion_index"], outputs["landmarks_index"]
        l_emo = masked_emotion_loss(outputs["emotion_logits"], tf.gather(batch["emotion"], e),
                                    tf.gather(batch["emotion_mask"], e))
        l_lmk = masked_landmark_l1(outputs["landmarks"], tf.gather(batch["landmarks"], m),
                                   tf.gather(batch["landmarks_mask"], m))
        loss = l_emo + float(cfg["landmark_weight"]) * l_lmk
        if self.has_domain_branch:
            l_ada = domain_loss(outputs["domain_logits"], outputs["domain_labels"])
            lam = tf.convert_to_tensor(self.gradient_reversal.lambda_var)
            loss = loss + float(cfg["ada_weight"]) * l_ada
        else:
            l_ada, lam = tf.constant(0.0), tf.constant(0.0)
        if self.penalised:
            tn = self.trace_norm()
            loss = loss + float(cfg["trace_norm_strength"]) * tn
        else:
            tn = tf.constant(0.0)
        return {"loss": loss, "emotion_loss": l_emo, "landmark_loss": l_lmk,
                "domain_loss": l_ada, "trace_norm": tn, "ada_lambda": lam}

    def loss_terms_of(self, batch, training: bool = False) -> Dict[str, tf.Tensor]:
        """Routed forward pass + :meth:`compute_batch_loss` (plus regularisation
        losses): exactly what :meth:`train_step` differentiates."""
        terms = dict(self.compute_batch_loss(batch, self.task_forward(batch, training),
                                             training))
        if self.losses:
            terms["loss"] = terms["loss"] + tf.add_n(self.losses)
        return terms

    def train_step(self, batch):
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        with tf.GradientTape() as tape:
            terms = self.loss_terms_of(batch, training=True)
            loss = replica_scaled(terms["loss"])
        variables = self.trainable_variables
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        labelled = tf.cast(tf.reshape(batch["emotion"], [-1]) >= 0, tf.float32)
        self.net.get_layer("label_set").update(
            tf.cast(batch["emotion_mask"], tf.float32) * labelled[:, None])
        return self._log(terms)

    def test_step(self, batch):
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        return self._log(self.loss_terms_of(batch, training=False))
