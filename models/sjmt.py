"""SJMT: selective joint multi-task learning of emotions and action units.

Pons & Masip, "Multi-task, multi-label and multi-domain learning with residual
convolutional networks for emotion recognition" (arXiv:1802.06664, 2018).

* Fig. 1(c) and Eq 2, one ResNet with ONE fully connected layer of sigmoid
  outputs over the union label space: :meth:`SJMT.build_net`
  (:func:`models.backbones.cifar_resnet`; outputs :func:`label_names`).
* Eq 1, the selective sigmoid cross-entropy:
  :func:`models.losses.selective_sigmoid_cross_entropy` on the targets and
  masks of :func:`sjmt_targets`, in :meth:`SJMTModel.compute_batch_loss`.
* Fig. 1(b) and (a), the baselines: ``variant`` ``"classical"`` (Table 2) and
  ``"single"`` (ablation "single task"); the samples a step uses:
  :func:`step_samples`.
* Eq 3, AU accuracy: ``models.metrics.au_metrics``.
* Sec. 4.3 and Table 4, compound emotions: :data:`PAPER_COMPOUNDS`,
  :func:`compound_targets`, :func:`compound_accuracy`
  (:meth:`SJMT.evaluate_compounds`).
* Sec. 4, presets ``resnet32`` (ResNet-32) and ``paper`` (ResNet-110);
  ``small`` is a CPU preset.

Deviations and reading choices: docs/methods.md, section SJMT.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from components import contract
from models import backbones
from models.base import Method
from models.losses import (masked_mean, masked_softmax_cross_entropy,
                           selective_sigmoid_cross_entropy)
from models.optimizers import optimizer_from_cfg
from models.augment import random_pad_crop
from models.loss_model import LabelSetMask, LossModel

VARIANTS = ("sjmt", "classical", "single")
NUM_BASE_OUTPUTS = contract.NUM_EMOTIONS + contract.NUM_AUS  # 25
#: The compound emotions of Sec. 4.3 / Table 4, in the paper's order, as
#: (modifier, base): "fearfully angry" = fear modifying anger.
PAPER_COMPOUNDS: tuple = (
    ("anger", "disgust"), ("anger", "surprise"), ("fear", "anger"), ("fear", "surprise"),
    ("happiness", "disgust"), ("happiness", "surprise"), ("sadness", "anger"),
    ("sadness", "disgust"))

_ADVERB = {"anger": "angrily", "disgust": "disgustedly", "fear": "fearfully",
           "happiness": "happily", "sadness": "sadly", "surprise": "surprisedly",
           "neutral": "neutrally", "contempt": "contemptuously"}
_ADJECTIVE = {"anger": "angry", "disgust": "disgusted", "fear": "fearful",
              "happiness": "happy", "sadness": "sad", "surprise": "surprised",
              "neutral": "neutral", "contempt": "contemptuous"}
_FROM_ADVERB = {v: k for k, v in _ADVERB.items()}
_FROM_ADJECTIVE = {v: k for k, v in _ADJECTIVE.items()}


# --------------------------------------------------------------------------- #
# Label space
# --------------------------------------------------------------------------- #
def parse_compound(name: str) -> Tuple[int, int]:
    """``(modifier, base)`` emotion indices of a compound name such as
    ``"fearfully angry"`` / ``"Fearfully_angry"``."""
    words = [w for w in re.split(r"[\s_\-]+", name.strip().lower()) if w]
    if len(words) != 2 or words[0] not in _FROM_ADVERB or words[1] not in _FROM_ADJECTIVE:
        raise ValueError(f"not a compound emotion name <adverb> <adjective>: {name!r} "
                         f"(adverbs {sorted(_FROM_ADVERB)}, adjectives {sorted(_FROM_ADJECTIVE)})")
    return (contract.EMOTIONS.index(_FROM_ADVERB[words[0]]),
            contract.EMOTIONS.index(_FROM_ADJECTIVE[words[1]]))


def _pair(item) -> Tuple[int, int]:
    if isinstance(item, str):
        return parse_compound(item)
    a, b = item
    return tuple(x if isinstance(x, (int, np.integer)) else contract.canonical_emotion(x)
                 for x in (a, b))


def resolve_pairs(pairs) -> Tuple[Tuple[int, int], ...]:
    """Ordered ``(modifier, base)`` emotion-index pairs from compound names or
    name/index pairs (``None`` -> :data:`PAPER_COMPOUNDS`). Two orders of one
    pair are one multi-hot target, hence an error."""
    out = [tuple(int(x) for x in _pair(p)) for p in (PAPER_COMPOUNDS if pairs is None else pairs)]
    for p in out:
        if p[0] == p[1]:
            raise ValueError(f"compound pair of one emotion: {contract.EMOTIONS[p[0]]}")
    if len({frozenset(p) for p in out}) != len(out):
        raise ValueError(f"duplicate compound pairs (in either order) in {pairs}")
    return tuple(out)


def compound_name(pair) -> str:
    """``(fear, anger)`` -> ``fearfully_angry``."""
    a, b = _pair(pair)
    return f"{_ADVERB[contract.EMOTIONS[a]]}_{_ADJECTIVE[contract.EMOTIONS[b]]}"


def compound_label_names(pairs=None) -> List[str]:
    """Names of the compound outputs in order, e.g. ``fearfully_angry``."""
    return [compound_name(p) for p in resolve_pairs(pairs)]


def label_names(cfg: Dict[str, Any]) -> List[str]:
    """Names of all sigmoid outputs of the ``sjmt`` variant in order: outputs
    0..7 the emotions of ``contract.EMOTIONS``, 8..24 the 17 AUs of
    ``contract.AUS``, then the compound emotions (``compound=True``)."""
    names = list(contract.EMOTIONS) + list(contract.AU_NAMES)
    if cfg.get("compound"):
        names += compound_label_names(cfg["compound_pairs"])
    return names


def compound_output_index(pair, cfg: Dict[str, Any]) -> int:
    """Column of the ``sjmt`` logits for the compound ``pair`` (a name, or
    names/indices in either order); the ``compound`` output's column is this
    minus :data:`NUM_BASE_OUTPUTS`."""
    if not cfg.get("compound"):
        raise ValueError("compound outputs are off (compound=False)")
    key = frozenset(_pair(pair))
    keys = [frozenset(p) for p in resolve_pairs(cfg["compound_pairs"])]
    if key not in keys:
        raise ValueError(f"{pair!r} is not among cfg['compound_pairs'] "
                         f"{compound_label_names(cfg['compound_pairs'])}")
    return NUM_BASE_OUTPUTS + keys.index(key)


def compound_targets(multihot: tf.Tensor, emotion_mask: tf.Tensor, has_compound: tf.Tensor,
                     pairs: Sequence[Tuple[int, int]]) -> Tuple[tf.Tensor, tf.Tensor]:
    """``(targets, mask)`` ``[B, P]`` of the compound outputs: for the pair
    ``(a, b)`` target ``t_a t_b`` (``multihot``) and mask ``m_a m_b c``
    (``emotion_mask``; ``c`` = ``has_compound``, the sample's dataset labels
    compounds). A compound is an *ordered* pair ``(modifier, base)`` named
    "<adverb of the modifier>_<adjective of the base>" (:func:`compound_name`)."""
    a = [p[0] for p in pairs]
    b = [p[1] for p in pairs]
    multihot = tf.cast(multihot, tf.float32)
    emotion_mask = tf.cast(emotion_mask, tf.float32)
    targets = tf.gather(multihot, a, axis=1) * tf.gather(multihot, b, axis=1)
    mask = (tf.gather(emotion_mask, a, axis=1) * tf.gather(emotion_mask, b, axis=1)
            * tf.reshape(tf.cast(has_compound, tf.float32), [-1, 1]))
    return targets, mask


def compound_classes(multihot, pairs=None) -> np.ndarray:
    """``[N]`` index into ``pairs`` of the compound each multi-hot emotion
    target is (exactly its two emotions on), ``-1`` for anything else."""
    multihot = np.asarray(multihot) > 0.5
    out = np.full(len(multihot), -1, np.int64)
    for c, (a, b) in enumerate(resolve_pairs(pairs)):
        out[(multihot.sum(1) == 2) & multihot[:, a] & multihot[:, b]] = c
    return out


def compound_accuracy(true_class, scores, names: Sequence[str]) -> Dict[str, Any]:
    """Table 4's compound metrics: the argmax of the compound scores against the
    true compound (``true_class`` ``[N]`` index into ``names``, ``-1`` left out).
    ``per_compound`` name -> share of that compound's images classified as it
    (None when it has none), ``num_images`` name -> count, ``mean_compounds``
    (mean over compounds with images) and ``all_images`` (share of all images
    correct)."""
    true_class = np.asarray(true_class, np.int64).reshape(-1)
    scores = np.asarray(scores)
    if scores.shape != (len(true_class), len(names)):
        raise ValueError(f"scores {scores.shape} vs {len(true_class)} images x "
                         f"{len(names)} compounds")
    keep = true_class >= 0
    if not keep.any():
        raise ValueError("compound_accuracy: no image with a compound label")
    correct = scores.argmax(-1) == true_class
    per, count = {}, {}
    for c, name in enumerate(names):
        of_c = true_class == c
        count[name] = int(of_c.sum())
        per[name] = float(correct[of_c].mean()) if of_c.any() else None
    return {"per_compound": per, "num_images": count,
            "mean_compounds": float(np.mean([v for v in per.values() if v is not None])),
            "all_images": float(correct[keep].mean())}


def sjmt_targets(batch: Dict[str, tf.Tensor], cfg: Dict[str, Any],
                 compound_dataset_ids: Sequence[int] = ()) -> Tuple[tf.Tensor, tf.Tensor]:
    """``(labels, mask)`` over the union label space for a model-input batch.

    Emotions: the one-hot of ``emotion`` (``emotion_multihot`` when the batch
    carries it), masked by ``emotion_mask`` (the dataset's label set). AUs:
    ``aus`` binarised at ``cfg["au_threshold"]`` (occurrence; ``None`` keeps
    intensities as soft targets), masked by ``aus_mask``. Compounds
    (:func:`compound_targets`): ``c`` is the batch's ``compound_mask`` when it
    has one, else the sample's dataset is in ``compound_dataset_ids`` or at
    least two of its emotions are on."""
    emotion = tf.reshape(tf.cast(batch["emotion"], tf.int64), [-1])
    if "emotion_multihot" in batch:
        emo_t = tf.cast(batch["emotion_multihot"], tf.float32)
    else:
        emo_t = tf.one_hot(emotion, contract.NUM_EMOTIONS, dtype=tf.float32)  # -1 -> zeros
    emo_m = tf.cast(batch["emotion_mask"], tf.float32)
    au_t = tf.cast(batch["aus"], tf.float32)
    if cfg.get("au_threshold") is not None:
        au_t = tf.cast(au_t >= float(cfg["au_threshold"]), tf.float32)
    au_m = tf.cast(batch["aus_mask"], tf.float32)
    labels, mask = [emo_t, au_t], [emo_m, au_m]
    if cfg.get("compound"):
        if "compound_mask" in batch:
            has = tf.reshape(tf.cast(batch["compound_mask"], tf.float32), [-1]) > 0
        else:
            has = tf.reduce_sum(emo_t, axis=1) >= 2
            if compound_dataset_ids:
                ds = tf.reshape(tf.cast(batch["dataset_id"], tf.int64), [-1, 1])
                ids = tf.constant(list(compound_dataset_ids), tf.int64)[None, :]
                has = tf.logical_or(has, tf.reduce_any(tf.equal(ds, ids), axis=1))
        c_t, c_m = compound_targets(emo_t, emo_m, has, resolve_pairs(cfg["compound_pairs"]))
        labels.append(c_t)
        mask.append(c_m)
    return tf.concat(labels, axis=1), tf.concat(mask, axis=1)


# --------------------------------------------------------------------------- #
# Layers
# --------------------------------------------------------------------------- #
@keras.saving.register_keras_serializable(package="fermtl")
class LabelSlice(keras.layers.Layer):
    """Columns ``[start, stop)`` of the union-label-space output."""

    def __init__(self, start: int, stop: int, **kwargs):
        super().__init__(**kwargs)
        self.start, self.stop = int(start), int(stop)

    def call(self, x):
        return x[:, self.start:self.stop]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.stop - self.start)

    def get_config(self):
        return {**super().get_config(), "start": self.start, "stop": self.stop}


@keras.saving.register_keras_serializable(package="fermtl")
class SumNormalize(keras.layers.Layer):
    """``x / sum(x)`` over the last axis (renormalised sigmoid scores)."""

    def __init__(self, epsilon: float = 1e-7, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def call(self, x):
        total = keras.ops.sum(x, axis=-1, keepdims=True)
        return x / keras.ops.maximum(total, self.epsilon)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


# --------------------------------------------------------------------------- #
# Model and method
# --------------------------------------------------------------------------- #
def step_samples(batch: Dict[str, tf.Tensor], variant: str, step: tf.Tensor) -> tf.Tensor:
    """``[B]`` bool: the samples a training step of ``variant`` uses. ``sjmt``:
    all; ``single``: those whose dataset labels emotions; ``classical``: those
    of the ``step mod K``-th of the K datasets in the batch (by ``dataset_id``)."""
    emotion_mask = tf.cast(batch["emotion_mask"], tf.float32)
    if variant == "sjmt":
        return tf.ones(tf.shape(emotion_mask)[:1], tf.bool)
    if variant == "single":
        return tf.reduce_sum(emotion_mask, axis=1) > 0
    ids = tf.reshape(tf.cast(batch["dataset_id"], tf.int64), [-1])
    present = tf.sort(tf.unique(ids).y)
    chosen = tf.gather(present, tf.math.floormod(tf.cast(step, tf.int64),
                                                 tf.size(present, out_type=tf.int64)))
    return tf.equal(ids, chosen)


def select_samples(batch: Dict[str, tf.Tensor], keep: tf.Tensor) -> Dict[str, tf.Tensor]:
    """The rows ``keep`` of every batch entry. When none is kept the whole batch
    stays with every label masked out (the step's task loss is 0): an empty
    batch would give batch norm NaN statistics."""
    none = tf.logical_not(tf.reduce_any(keep))
    rows = tf.logical_or(keep, none)
    out = {k: tf.boolean_mask(v, rows) for k, v in batch.items()}
    for key in ("emotion_mask", "aus_mask", "compound_mask"):
        if key in out:
            out[key] = tf.where(none, tf.zeros_like(out[key]), out[key])
    out["emotion"] = tf.where(none, -tf.ones_like(out["emotion"]), out["emotion"])
    return out


class SJMTModel(LossModel):
    """Training model of :class:`SJMT`, all variants (Fig. 1 of the paper):

    * ``"sjmt"`` (c): Eq 1 over the union label space; batches mix the datasets.
    * ``"classical"`` (b): one output layer and loss per task (emotion: softmax
      cross-entropy over the dataset's label set; AUs and compounds: sigmoid
      cross-entropy); each step keeps the samples of the ``step mod K``-th of
      the ``K`` datasets in the batch (:func:`step_samples`) and runs the
      forward pass (batch norm included) and the loss on them alone
      (:meth:`train_step`).
    * ``"single"`` (a): the softmax emotion head (and the compound head with
      ``compound=True``) on the samples whose dataset labels emotions; AU
      labels are never read.
    """

    loss_terms = ("loss", "emotion_loss", "au_loss", "emotion_accuracy")

    def __init__(self, net: keras.Model, cfg: Dict[str, Any], **kwargs):
        super().__init__(net, **kwargs)
        # Plain tuples/values only (no Keras tracking of the config).
        self.target_cfg = tuple(sorted(
            (k, (tuple(map(tuple, v)) if k == "compound_pairs" and v is not None else v))
            for k, v in cfg.items()
            if k in ("compound", "compound_pairs", "au_threshold", "loss_normalizer")))
        self.variant = str(cfg["variant"])
        names = list(cfg.get("datasets") or ())
        self.compound_dataset_ids = tuple(names.index(d) for d in cfg.get("compound_datasets", ())
                                          if d in names)

    def train_step(self, batch):
        if self.variant != "sjmt":
            batch = select_samples(batch, step_samples(batch, self.variant,
                                                       self.optimizer.iterations))
        return super().train_step(batch)

    def compute_batch_loss(self, batch, outputs, training):
        cfg = dict(self.target_cfg)
        if training:
            self.net.get_layer("label_set").update(batch["emotion_mask"])
        labels, mask = sjmt_targets(batch, cfg, self.compound_dataset_ids)
        e, a = contract.NUM_EMOTIONS, NUM_BASE_OUTPUTS

        def sigmoid_ce(lo, hi, logits):
            return selective_sigmoid_cross_entropy(labels[:, lo:hi], tf.cast(logits, tf.float32),
                                                   mask[:, lo:hi],
                                                   normalizer=cfg["loss_normalizer"])

        if self.variant == "sjmt":
            logits = tf.cast(outputs["logits"], tf.float32)
            emo_logits = tf.where(mask[:, :e] > 0, logits[:, :e], -1e9)
            emotion = tf.reshape(tf.cast(batch["emotion"], tf.int64), [-1])
            correct = tf.cast(tf.equal(tf.argmax(emo_logits, axis=-1), emotion), tf.float32)
            return {"loss": sigmoid_ce(0, labels.shape[1], logits),
                    "emotion_loss": sigmoid_ce(0, e, logits[:, :e]),
                    "au_loss": sigmoid_ce(e, a, logits[:, e:a]),
                    "emotion_accuracy": masked_mean(correct, emotion >= 0)}
        # classical / single: one head and loss per task, summed.
        emo = masked_softmax_cross_entropy(batch["emotion"], outputs["emotion_logits"],
                                           batch["emotion_mask"])
        terms = {"emotion_loss": emo["loss"], "emotion_accuracy": emo["accuracy"]}
        loss = emo["loss"]
        if "au_logits" in outputs:
            terms["au_loss"] = sigmoid_ce(e, a, outputs["au_logits"])
            loss = loss + terms["au_loss"]
        if "compound_logits" in outputs:
            loss = loss + sigmoid_ce(a, labels.shape[1], outputs["compound_logits"])
        terms["loss"] = loss
        return terms


# Sec. 4 of the paper (batch, lr and its decay, crops, 32 x 32 input); He et
# al. 2016 Sec. 4.2 (momentum, weight decay); docs/methods.md for the rest.
_COMMON = dict(variant="sjmt", image_size=32, standardize=True, crop_padding=4, flip=False,
               optimizer="sgd", momentum=0.9, nesterov=False, learning_rate=0.05,
               lr_schedule="exponential", lr_staircase=True, lr_decay_steps=10_000,
               lr_decay_rate=0.5, weight_decay=1e-4, batch_size=128, pool_grid=1,
               stem_stride=1, au_threshold=0.5, loss_normalizer="classes",
               compound=False, compound_pairs=None, compound_datasets=(), jit_compile=False)
#: Training steps of the paper's ResNets (Sec. 4); a Plan's epochs x steps.
PAPER_TRAIN_STEPS = 80_000


class SJMT(Method):
    """Pons & Masip 2018: ResNet + selective sigmoid CE over emotions ∪ AUs
    (``variant`` ``classical`` / ``single``: the paper's baselines)."""

    name = "sjmt"
    presets = {
        # CPU preset (trains in about a minute): ResNet-8 (n = 1) at width 16 on
        # 48 px faces with a stride-2 stem and a 3 x 3 pooled grid instead of
        # global pooling, no random crops, flips, Nesterov, batch 16 and a
        # continuous decay, Eq 1 with N = |L^k| (docs/methods.md: why).
        "small": dict(_COMMON, image_size=48, depth=8, width=16, stem_stride=2, pool_grid=3,
                      crop_padding=0, flip=True, nesterov=True, batch_size=16,
                      lr_staircase=False, lr_decay_steps=1000, loss_normalizer="labels"),
        # ResNet-32 (0.46M parameters), Tables 1-2.
        "resnet32": dict(_COMMON, depth=32, width=16),
        # ResNet-110 (1.7M parameters), the paper's best network (Tables 1, 2, 4).
        "paper": dict(_COMMON, depth=110, width=16),
    }

    def config(self, preset: str = "small", **overrides) -> Dict[str, Any]:
        cfg = super().config(preset, **overrides)
        if cfg["variant"] not in VARIANTS:
            raise ValueError(f"sjmt: variant must be one of {VARIANTS}, got {cfg['variant']!r}")
        if cfg["variant"] != "sjmt" and cfg["jit_compile"]:
            raise ValueError(f"sjmt: variant {cfg['variant']!r} trains on a per-step subset "
                             "of the batch (dynamic shape), which XLA cannot compile; "
                             "set jit_compile=False")
        if cfg["compound"]:
            cfg["compound_pairs"] = [[contract.EMOTIONS[a], contract.EMOTIONS[b]]
                                     for a, b in resolve_pairs(cfg["compound_pairs"])]
        return cfg

    def num_outputs(self, cfg: Dict[str, Any]) -> int:
        return len(label_names(cfg))

    def build_net(self, cfg: Dict[str, Any]) -> keras.Model:
        size = int(cfg["image_size"])
        image = keras.Input((size, size, 1), name="image")
        x = backbones.PerImageStandardization(name="standardize")(image) \
            if cfg["standardize"] else image
        feats = backbones.cifar_resnet(x, depth=cfg["depth"], width=cfg["width"],
                                       name="resnet", weight_decay=cfg["weight_decay"],
                                       pool_grid=cfg["pool_grid"],
                                       stem_stride=cfg["stem_stride"])
        embedding = keras.layers.Identity(name="embedding")(feats)
        reg = keras.regularizers.L2(cfg["weight_decay"]) if cfg["weight_decay"] else None
        e, a = contract.NUM_EMOTIONS, NUM_BASE_OUTPUTS
        outputs = {"embedding": embedding}
        if cfg["variant"] == "sjmt":
            logits = keras.layers.Dense(self.num_outputs(cfg), kernel_regularizer=reg,
                                        name="logits")(embedding)
            scores = keras.layers.Activation("sigmoid", name="scores")(logits)  # Eq 2
            emo = LabelSlice(0, e, name="emotion_scores")(scores)
            emo = LabelSetMask(e, fill=0.0, name="label_set")(emo)
            outputs.update(logits=logits, probabilities=SumNormalize(name="probabilities")(emo),
                           aus=LabelSlice(e, a, name="aus")(scores))
            if cfg["compound"]:
                outputs["compound"] = LabelSlice(a, self.num_outputs(cfg),
                                                 name="compound")(scores)
            return keras.Model(image, outputs, name="sjmt_net")
        # classical / single: one output layer per task.
        emo_logits = keras.layers.Dense(e, kernel_regularizer=reg,
                                        name="emotion_logits")(embedding)
        masked = LabelSetMask(e, fill=-1e9, name="label_set")(emo_logits)
        outputs.update(emotion_logits=emo_logits,
                       probabilities=keras.layers.Softmax(name="probabilities")(masked))
        if cfg["variant"] == "classical":
            au_logits = keras.layers.Dense(contract.NUM_AUS, kernel_regularizer=reg,
                                           name="au_logits")(embedding)
            outputs.update(au_logits=au_logits,
                           aus=keras.layers.Activation("sigmoid", name="aus")(au_logits))
        if cfg["compound"]:
            c_logits = keras.layers.Dense(self.num_outputs(cfg) - a, kernel_regularizer=reg,
                                          name="compound_logits")(embedding)
            outputs.update(compound_logits=c_logits, compound=keras.layers.Activation(
                "sigmoid", name="compound")(c_logits))
        return keras.Model(image, outputs, name=f"sjmt_{cfg['variant']}_net")

    def build(self, cfg: Dict[str, Any]) -> keras.Model:
        model = SJMTModel(self.build_net(cfg), cfg, name="sjmt")
        model.compile(optimizer=optimizer_from_cfg(cfg),
                      jit_compile=cfg.get("jit_compile", False))
        return model

    def inference_model(self, model: keras.Model, cfg: Dict[str, Any]) -> keras.Model:
        """``probabilities`` ``[B, 8]`` over ``contract.EMOTIONS`` restricted to the
        emotions some training dataset labels (``LabelSetMask``): for ``sjmt``
        the sigmoid scores renormalised to sum to 1 (argmax unchanged), else
        the softmax; ``aus`` ``[B, 17]`` AU occurrence probabilities (not for
        ``single``); ``compound`` ``[B, P]`` with ``compound=True``;
        ``embedding`` the pooled ResNet features."""
        net = model.net
        keep = [k for k in ("probabilities", "aus", "embedding", "compound")
                if k in net.output]
        return keras.Model(net.input, {k: net.get_layer(k).output for k in keep},
                           name="sjmt_inference")

    def evaluate_compounds(self, model: keras.Model, cfg: Dict[str, Any], images,
                           emotion_multihot, batch_size: int = 64) -> Dict[str, Any]:
        """:func:`compound_accuracy` (Table 4) of the ``compound`` output on
        ``images`` ``[N, S, S, 1]`` whose compound labels are the multi-hot
        emotion targets ``emotion_multihot`` ``[N, 8]``."""
        if not cfg["compound"]:
            raise ValueError("evaluate_compounds: the model has no compound outputs "
                             "(compound=False)")
        infer = self.inference_model(model, cfg)
        images = np.asarray(images, np.float32)
        scores = np.concatenate([np.asarray(infer(images[i:i + batch_size],
                                                  training=False)["compound"])
                                 for i in range(0, len(images), batch_size)])
        return compound_accuracy(compound_classes(emotion_multihot, cfg["compound_pairs"]),
                                 scores, compound_label_names(cfg["compound_pairs"]))

    def augment(self, batch, cfg):
        batch = dict(batch)
        batch["image"] = random_pad_crop(batch["image"], int(cfg["crop_padding"]),
                                         flip=bool(cfg["flip"]))
        return batch
