"""Multi-dataset network: component CNNs, each pre-trained on its own dataset,
fine-tuned on the other's and integrated by a weighted sum of their scores.

Yang, Li, Cao, "Facial Expression Recognition Based on Multi-dataset Neural
Network"; its centre loss is Wen, Zhang, Li, Qiao, "A Discriminative Feature
Learning Approach for Deep Face Recognition" (ECCV 2016).

* Sec. 3.2.1, the component CNN ``C_j``: :func:`build_component`; the
  components and their integration: :func:`build_network`.
* Sec. 3.2.2, ``S_i = sum_j lambda_j C_{j,i}`` with ``sum_j lambda_j = 1``:
  :class:`WeightedSum`.
* Eqs 1-5, centre loss and centre update: :class:`models.losses.CenterLoss`,
  one per component (:class:`MultiDatasetModel`).
* Eqs 6-9, MD loss: :func:`models.losses.md_loss`.
* Eq 10, ``L = 1/N sum_i lambda_i L_MDi``: :func:`models.losses.multi_dataset_loss`
  in :meth:`MultiDatasetModel.stage_loss`.
* Sec. 4, pre-train / fine-tune / integrate: :meth:`MultiDatasetModel.stage_loss`,
  :class:`StageSchedule` (one ``fit``), :func:`train_stages`, :func:`set_stage`.

Ablations: ``md_weight: 0`` (no MD loss), ``n_components: 1`` (one component
on every dataset, the same loss and lr phases: :meth:`MultiDatasetModel.stage_loss`).

Deviations and reading choices: docs/methods.md, section Multi-dataset network.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from components import contract
from models import backbones
from models.base import Method
from models.layers import CReLU, InceptionModule
from models.losses import CenterLoss, md_loss, multi_dataset_loss
from models.losses.classification import masked_softmax_cross_entropy
from models.optimizers import optimizer_from_cfg
from models.loss_model import LabelSetMask, LossModel

NUM_CLASSES = contract.NUM_EMOTIONS
STAGES = ("pretrain", "finetune", "integrate")


# --------------------------------------------------------------------------
# network
# --------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="fermtl.multidataset")
class WeightedSum(keras.layers.Layer):
    """``S = sum_j lambda_j C_j`` with ``lambda = softmax(a)`` (weighted-sum
    integration, Sec. 3.2.2), so ``sum_j lambda_j = 1``; ``C_j`` are the
    components' pre-softmax scores.

    ``a`` (``lambda_logits``) is trainable iff ``learn`` is true; it starts at
    ``log(init)`` (``init`` renormalised to sum to 1; uniform when None).
    """

    def __init__(self, num_inputs: int = 2, learn: bool = True,
                 init: Optional[Sequence[float]] = None, **kwargs):
        super().__init__(**kwargs)
        self.num_inputs = int(num_inputs)
        self.learn = bool(learn)
        self.init = None if init is None else [float(v) for v in init]
        lam = np.full(self.num_inputs, 1.0 / self.num_inputs) if init is None else np.asarray(
            self.init, np.float64)
        if lam.shape != (self.num_inputs,) or (lam <= 0).any():
            raise ValueError(f"lambdas must be {self.num_inputs} positive values, got {init}")
        lam = lam / lam.sum()
        self.lambda_logits = self.add_weight(
            name="lambda_logits", shape=(self.num_inputs,),
            initializer=keras.initializers.Constant(np.log(lam).astype(np.float32)),
            trainable=self.learn)

    def lambdas(self):
        return tf.nn.softmax(tf.convert_to_tensor(self.lambda_logits))

    def call(self, inputs):
        lam = tf.cast(self.lambdas(), inputs[0].dtype)
        return tf.add_n([lam[j] * inputs[j] for j in range(self.num_inputs)])

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]

    def get_config(self):
        return {**super().get_config(), "num_inputs": self.num_inputs, "learn": self.learn,
                "init": self.init}


def fc_activation(kind: str, name: str) -> keras.layers.Layer:
    """Activation of the FC layers: ``"prelu"`` (one slope per unit, as in Wen
    et al.'s centre-loss network) or ``"relu"`` (the network before the fix)."""
    if kind == "prelu":
        return keras.layers.PReLU(alpha_initializer=keras.initializers.Constant(0.25),
                                  name=name)
    if kind == "relu":
        return keras.layers.ReLU(name=name)
    raise ValueError(f"multidataset: fc_activation must be 'prelu' or 'relu', got {kind!r}")


def build_component(cfg: Dict[str, Any], index: int) -> keras.Model:
    """Component CNN ``C_index``: ``image -> {"logits", "features"}``::

        image -> per-image standardisation (``standardize``)
          -> 5 x (Conv2D(conv_filters[i], conv_kernels[i]) + CReLU
                  [-> max-pool 2 x 2 after the convs in ``pool_after``]),
             the inception module after conv 2
          -> FC(fc_units) + act -> dropout -> FC(fc_units) + act  = features
          -> dropout -> FC(8)                                       = logits

    ``act`` is :func:`fc_activation`; the conv layers and the inception module
    use ``conv_initializer``."""
    s = int(cfg["image_size"])
    image = keras.Input((s, s, 1), name="image")
    f = cfg["conv_filters"]
    k = cfg["conv_kernels"]
    x = (backbones.PerImageStandardization(name="standardize")(image) if cfg["standardize"]
         else image)
    for i in range(5):
        x = keras.layers.Conv2D(f[i], k[i], padding="same",
                                kernel_initializer=cfg["conv_initializer"], name=f"conv{i + 1}")(x)
        x = CReLU(name=f"crelu{i + 1}")(x)
        if i + 1 in cfg["pool_after"]:
            x = keras.layers.MaxPooling2D(2, padding="same", name=f"pool{i + 1}")(x)
        if i == 1:
            x = InceptionModule(*cfg["inception"], kernel_initializer=cfg["conv_initializer"],
                                name="inception")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for i in range(2):
        x = keras.layers.Dense(cfg["fc_units"], name=f"fc{i + 1}")(x)
        x = fc_activation(cfg["fc_activation"], f"fc{i + 1}_{cfg['fc_activation']}")(x)
        features = x
        x = keras.layers.Dropout(cfg["dropout"], name=f"dropout{i + 1}")(x)
    logits = keras.layers.Dense(NUM_CLASSES, name="scores")(x)
    # the centre / MD losses see the FC2 activations before dropout
    return keras.Model(image, {"logits": logits, "features": features},
                       name=f"component_{index}")


def build_network(cfg: Dict[str, Any]) -> keras.Model:
    """``image -> {"logits_j", "features_j" (j < n), "logits" (S), "probabilities"}``;
    ``probabilities`` is ``softmax(S)`` over the label set seen in training
    (``models.loss_model.LabelSetMask``)."""
    s = int(cfg["image_size"])
    n = int(cfg["n_components"])
    image = keras.Input((s, s, 1), name="image")
    outputs = {}
    for j in range(n):
        out = build_component(cfg, j)(image)
        outputs[f"logits_{j}"] = out["logits"]
        outputs[f"features_{j}"] = out["features"]
    # one component: S = C_0, lambda = softmax(a) = 1 whatever a is, so not trained
    scores = WeightedSum(n, cfg["learn_lambda"] and n > 1, cfg["lambdas"], name="integration")(
        [outputs[f"logits_{j}"] for j in range(n)])
    outputs["logits"] = scores
    outputs["probabilities"] = keras.layers.Softmax(name="probabilities")(
        LabelSetMask(name="label_set")(scores))
    return keras.Model(image, outputs, name="multidataset_network")


# --------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------
def dataset_groups(dataset_id, n_groups: int):
    """Eq. 10 group of each sample: ``dataset_id mod n_groups`` (``-1`` -> 0)."""
    d = tf.reshape(tf.cast(dataset_id, tf.int64), [-1])
    return tf.where(d >= 0, tf.math.floormod(d, n_groups), tf.zeros_like(d))


def _only(emotion, member):
    """``emotion`` with samples outside ``member`` marked unlabelled (-1): every
    loss used here ignores them, so this restricts a loss to a subset."""
    return tf.where(member, emotion, -tf.ones_like(emotion))


class MultiDatasetModel(LossModel):
    """Training model (``models.loss_model.LossModel``): the integrated network
    ``net``, one :class:`models.losses.CenterLoss` per component (each in its own
    feature space), the ``stage`` variable and the staged loss
    (:meth:`stage_loss`). Save/restore with ``save_weights``/``load_weights``
    (centres, lambda and stage are part of the weights; ``load_weights`` also
    switches to the saved stage)."""

    loss_terms = ("loss", "ce", "center", "md", "accuracy")

    def __init__(self, net: keras.Model, cfg: Dict[str, Any], **kwargs):
        super().__init__(net, **kwargs)
        self.cfg = dict(cfg)
        self.n = int(self.cfg["n_components"])
        self.center_losses = [
            CenterLoss(NUM_CLASSES, self.cfg["fc_units"], self.cfg["center_alpha"],
                       reduction="mean", name=f"centers_{j}") for j in range(self.n)]
        self.stage = self.add_weight(name="stage", shape=(), dtype="int32",
                                     initializer="zeros", trainable=False)
        self._stage = 0

    def lambdas(self):
        """Current integration weights ``lambda`` (they sum to 1)."""
        return self.net.get_layer("integration").lambdas()

    def _ce(self, logits, emotion, mask, member):
        """Masked softmax CE of ``logits`` averaged over the samples in ``member``."""
        return masked_softmax_cross_entropy(_only(emotion, member), logits, mask)["loss"]

    def _aux(self, j, features, emotion, member, training):
        """``(L_C, L_MD)`` of component ``j``'s features over ``member`` (0 when
        empty); with ``training`` the centres of component ``j`` move."""
        y = _only(emotion, member)
        layer = self.center_losses[j]
        feats = tf.cast(features, tf.float32)
        md = md_loss(feats, y, tf.convert_to_tensor(layer.centers), self.cfg["md_nearest"],
                     variant=self.cfg["md_variant"], hinge=self.cfg["md_hinge"],
                     lambda_reduction=self.cfg["md_lambda"],
                     margin_scale=self.cfg["md_margin_scale"], reduction="mean")
        center = layer(feats, y, training=training)    # loss before the alpha update
        return tf.cast(center, tf.float32), tf.cast(md, tf.float32)

    def stage_loss(self, batch, outputs, stage: int, training: bool = False):
        """``{"loss", "ce", "center", "md"}`` of stage ``stage`` (a Python int).
        With ``training`` the centres move (alpha rule).

        Loss of a subset ``D`` of the batch for scores ``z`` and features ``f``::

            L(D) = CE_mask(z, y) + center_weight * L_C(f, y) + md_weight * L_MD(f, y)

        ``CE_mask`` the masked softmax cross-entropy, ``L_C`` and ``L_MD``
        averaged over the subset's labelled samples. ``D_d`` are the samples of
        dataset ``d`` (``dataset_id``; dataset ``d`` belongs to component
        ``d mod n``, :func:`dataset_groups`), ``w`` = ``dataset_weights``:

        =====  ==========  ==================================================  =======
        stage  name        loss                                                lr
        =====  ==========  ==================================================  =======
        0      pretrain    ``sum_j L_j(D_j)``: component j on its own dataset  lr
        1      finetune    ``sum_j sum_{d != j} w_d L_j(D_d)``: on the others  lr / 10
        2      integrate   Eq 10 on ``S``; all components and lambda train     lr / 10
        =====  ==========  ==================================================  =======

        ``L_j`` uses ``C_j`` and ``f_j``; in stage 2 the centre / MD terms are
        summed over the components' features. The lr factors are
        ``stage_lr_factors`` (:func:`set_stage`)."""
        cfg = self.cfg
        emotion = tf.reshape(tf.cast(batch["emotion"], tf.int64), [-1])
        mask = batch["emotion_mask"]
        w = [float(v) for v in cfg["dataset_weights"]]
        group = dataset_groups(batch["dataset_id"], len(w))
        ce = center = md = tf.constant(0.0)
        if stage in (0, 1):
            for j in range(self.n):
                own = sum(w[d] for d in range(len(w)) if d % self.n == j)
                for d in range(len(w)):
                    if (stage == 0) != (d % self.n == j):   # stage 0: own datasets; 1: others
                        continue
                    scale = w[d] / own if stage == 0 else w[d]
                    member = tf.equal(group, d)
                    lc, lm = self._aux(j, outputs[f"features_{j}"], emotion, member, training)
                    ce += scale * self._ce(outputs[f"logits_{j}"], emotion, mask, member)
                    center += scale * lc
                    md += scale * lm
            total = ce + cfg["center_weight"] * center + cfg["md_weight"] * md
            # lambda is not used before stage 2: give it an explicit zero gradient
            # (otherwise Keras warns that it has none)
            total += 0.0 * tf.reduce_sum(tf.convert_to_tensor(
                self.net.get_layer("integration").lambda_logits))
        else:
            per_dataset = []
            for d in range(len(w)):
                member = tf.equal(group, d)
                c = self._ce(outputs["logits"], emotion, mask, member)     # CE of S
                lc = lm = tf.constant(0.0)
                for j in range(self.n):                                   # per component
                    lcj, lmj = self._aux(j, outputs[f"features_{j}"], emotion, member,
                                         training)
                    lc, lm = lc + lcj, lm + lmj
                per_dataset.append(c + cfg["center_weight"] * lc + cfg["md_weight"] * lm)
                ce, center, md = ce + w[d] * c, center + w[d] * lc, md + w[d] * lm
            total = tf.cast(multi_dataset_loss(per_dataset, w), tf.float32)   # Eq. 10
        return {"loss": total, "ce": ce, "center": center, "md": md}

    @property
    def current_stage(self) -> int:
        """The stage the train/test steps are traced for (see :func:`set_stage`)."""
        return self._stage

    def compute_batch_loss(self, batch, outputs, training):
        terms = self.stage_loss(batch, outputs, self._stage, training)
        terms["accuracy"] = masked_softmax_cross_entropy(
            batch["emotion"], outputs["logits"], batch["emotion_mask"])["accuracy"]
        if training:
            self.net.get_layer("label_set").update(batch["emotion_mask"])
        return terms

    def load_weights(self, *args, **kwargs):
        """``keras.Model.load_weights`` that also switches to the saved stage."""
        out = super().load_weights(*args, **kwargs)
        set_stage(self, int(np.asarray(self.stage)), lr=False)
        return out


# --------------------------------------------------------------------------
# stages
# --------------------------------------------------------------------------
def phase_stage(n_components: int, phase: int) -> int:
    """The stage trained in phase ``phase`` of the fit: ``phase`` itself, or 0
    (pretrain on every dataset) with one component."""
    return int(phase) if int(n_components) > 1 else 0


def set_stage(model: MultiDatasetModel, stage, cfg: Optional[Dict[str, Any]] = None,
              lr: bool = True, phase: Optional[int] = None) -> None:
    """Switch ``model`` to ``stage`` (0/1/2 or its name): sets the ``stage``
    variable (saved with the weights), makes Keras retrace the train/test steps
    for that stage's loss and, with ``lr``, sets the optimizer's learning rate to
    ``learning_rate * stage_lr_factors[phase]`` (``phase`` defaults to the stage).
    With one component only stage 0 exists."""
    s = STAGES.index(stage) if isinstance(stage, str) else int(stage)
    cfg = cfg or model.cfg
    if not 0 <= s < (len(STAGES) if int(cfg["n_components"]) > 1 else 1):
        raise ValueError(f"stage must be one of {STAGES} or 0..2 (with n_components 1: "
                         f"pretrain), got {stage!r}")
    model.stage.assign(s)
    if model._stage != s:
        model._stage = s
        # the steps are traced for one stage: drop the traced functions (a running
        # fit picks up the new train function at its next step)
        if model.train_function is not None:
            model.make_train_function(force=True)
        if model.test_function is not None:
            model.make_test_function(force=True)
    if lr and getattr(model, "optimizer", None) is not None:
        factor = cfg["stage_lr_factors"][s if phase is None else int(phase)]
        model.optimizer.learning_rate.assign(cfg["learning_rate"] * factor)


def stage_epochs(total_epochs: int, fractions: Sequence[float]) -> List[int]:
    """Epochs per stage for a ``fit`` of ``total_epochs`` (each stage >= 1 epoch
    when there are at least 3; the last stage takes the remainder)."""
    total = int(total_epochs)
    if total < len(fractions):
        return ([1] * total + [0] * len(fractions))[:len(fractions)]
    frac = np.asarray(fractions, np.float64) / float(np.sum(fractions))
    counts = [max(1, int(math.floor(f * total + 0.5))) for f in frac[:-1]]
    while sum(counts) > total - 1:
        counts[int(np.argmax(counts))] -= 1
    return counts + [total - sum(counts)]


class StageSchedule(keras.callbacks.Callback):
    """Walks one ``fit`` through pretrain -> finetune -> integrate: the epochs of
    the fit are split into phases by ``cfg["stage_fractions"]`` (:func:`stage_epochs`)
    and each phase sets its stage (:func:`phase_stage`: pretrain throughout with one
    component) and lr (:func:`set_stage`)."""

    def __init__(self, cfg: Dict[str, Any]):
        super().__init__()
        self.cfg = cfg
        self.bounds = None

    def phase_of(self, epoch: int) -> int:
        return min(int(np.searchsorted(self.bounds, epoch, side="right")), len(STAGES) - 1)

    def stage_of(self, epoch: int) -> int:
        return phase_stage(self.cfg["n_components"], self.phase_of(epoch))

    def on_train_begin(self, logs=None):
        counts = stage_epochs(self.params.get("epochs") or 1, self.cfg["stage_fractions"])
        self.bounds = np.cumsum(counts)
        self._phase = None

    def on_epoch_begin(self, epoch, logs=None):
        phase = self.phase_of(epoch)     # epochs are absolute, so resuming works
        stage = self.stage_of(epoch)
        if self._phase != phase or self.model.current_stage != stage:
            set_stage(self.model, stage, self.cfg, phase=phase)
            self._phase = phase


def train_stages(model: MultiDatasetModel, train_data, epochs: Sequence[int] = (2, 1, 2),
                 cfg: Optional[Dict[str, Any]] = None, validation_data=None,
                 verbose: int = 0, **fit_kwargs) -> Dict[str, Any]:
    """Run the three phases one ``fit`` each (``epochs`` per phase, 0 skips one;
    phase ``p`` trains :func:`phase_stage` at its lr); returns ``{name: History}``,
    the name the stage's, ``pretrain_<p>`` for phase ``p`` > 0 with one component."""
    histories = {}
    cfg = cfg or model.cfg
    for p, n_epochs in enumerate(epochs):
        if not n_epochs:
            continue
        s = phase_stage(cfg["n_components"], p)
        set_stage(model, s, cfg, phase=p)
        name = STAGES[s] if s == p else f"{STAGES[s]}_{p}"
        histories[name] = model.fit(train_data, epochs=int(n_epochs),
                                    validation_data=validation_data, verbose=verbose,
                                    **fit_kwargs)
    return histories


# --------------------------------------------------------------------------
# method
# --------------------------------------------------------------------------
class MultiDatasetNet(Method):
    """Two component CNNs integrated by a weighted sum (module docstring);
    presets ``small`` (CPU) and ``paper``; ``n_components: 1`` is the
    single-component ablation."""

    name = "multidataset"
    presets = {
        "small": {
            "image_size": 48,
            "standardize": True,
            "n_components": 2,
            "conv_filters": [8, 12, 16, 16, 24],
            "conv_kernels": [5, 3, 3, 3, 3],
            "pool_after": [1, 2, 4, 5],
            # filters_1x1, 3x3_reduce, 3x3, 5x5_reduce, 5x5, pool_proj
            "inception": [8, 8, 8, 4, 4, 4],
            "fc_units": 64,
            "conv_initializer": "he_normal",
            "fc_activation": "prelu",
            "dropout": 0.0,
            "learn_lambda": True,
            "lambdas": None,
            "center_weight": 0.01,
            "center_alpha": 0.5,
            "md_weight": 0.01,
            "md_variant": "log_ratio",     # Eqs 6/9 | margin_hinge (fer-mtl's earlier loss)
            "md_nearest": 2,               # P of Eq 9 (None: every other centre, Eq 6)
            "md_hinge": True,              # log_ratio clipped at 0, as the Magnet loss it follows
            "md_lambda": "mean",           # Eq 7 mean | sum (as printed)
            "md_margin_scale": 1.0,        # margin_hinge only
            "dataset_weights": [0.5, 0.5],
            "stage_fractions": [0.6, 0.2, 0.2],
            "stage_lr_factors": [1.0, 0.1, 0.1],
            "optimizer": "adam",
            "learning_rate": 2e-3,
            "momentum": 0.9,
            "batch_size": 16,
        },
    }
    # The paper's architecture and optimiser; every other setting as in `small`.
    presets["paper"] = {
        **presets["small"],
        "conv_filters": [32, 64, 96, 128, 128],
        "inception": [64, 96, 128, 16, 32, 32],
        "fc_units": 2048,
        "dropout": 0.65,
        "optimizer": "sgd",
        "learning_rate": 0.01,
        "batch_size": 128,
    }

    def config(self, preset: str = "small", **overrides) -> Dict[str, Any]:
        cfg = super().config(preset, **overrides)
        n = int(cfg["n_components"])
        if n < 1:
            raise ValueError(f"multidataset: n_components must be >= 1, got {n}")
        # one component keeps the Eq. 10 dataset groups (module docstring)
        if n > 1 and len(cfg["dataset_weights"]) != n:
            cfg["dataset_weights"] = [1.0 / n] * n
        return cfg

    def build(self, cfg: Dict[str, Any]) -> keras.Model:
        model = MultiDatasetModel(build_network(cfg), cfg, name="multidataset")
        model.compile(optimizer=optimizer_from_cfg(cfg), jit_compile=False)
        # create the optimizer slots now, eagerly: created inside the first traced
        # train step they make TF trace it twice
        model.optimizer.build(model.trainable_variables)
        return model

    def inference_model(self, model: keras.Model, cfg: Dict[str, Any]) -> keras.Model:
        """``image -> {"probabilities", "embedding"}``; the embedding is the
        lambda-weighted sum of the components' features. A plain functional
        model that round-trips as ``.keras`` (``CReLU``, ``InceptionModule``,
        ``WeightedSum``, ``backbones.PerImageStandardization`` and
        ``LabelSetMask`` are registered Keras objects)."""
        net = model.net
        feats = [net.output[f"features_{j}"] for j in range(int(cfg["n_components"]))]
        emb = net.get_layer("integration")(feats)     # same lambda as the scores
        return keras.Model(net.inputs, {"probabilities": net.output["probabilities"],
                                        "embedding": emb}, name="multidataset_inference")

    def callbacks(self, cfg: Dict[str, Any], steps_per_epoch: int):
        return [StageSchedule(cfg)]
