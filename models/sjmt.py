"""SJMT: selective joint multi-task learning of emotions and action units.

Pons & Masip, "Multi-task, multi-label and multi-domain learning with residual
convolutional networks for emotion recognition" (arXiv:1802.06664, 2018).

One CIFAR-style ResNet (He et al. 2016, Sec. 4.2; ResNet-32 / ResNet-110 in
the paper, :func:`models.backbones.cifar_resnet`) with ONE fully connected
layer of sigmoid outputs over the *union* label space of all datasets::

    outputs 0..7     the 8 emotions of contract.EMOTIONS
    outputs 8..24    the 17 AUs of contract.AUS
    outputs 25..     optional compound emotions (``compound=True``)

trained with the selective sigmoid cross-entropy (the paper's Eq. 1,
:func:`models.losses.selective_sigmoid_cross_entropy`): each sample is only
supervised on the labels its dataset annotates. Per sample:

* emotion targets: the one-hot of ``emotion`` (a multi-hot
  ``emotion_multihot`` when the batch carries one); emotion mask =
  ``emotion_mask`` (the dataset's label set: the other emotions of the set are
  trained as negatives, emotions outside it are not trained; ``emotion = -1``
  has an all-zero mask);
* AU targets: ``aus`` (intensities in [0, 1] used as soft targets; set
  ``au_threshold`` to binarise to occurrence as in the paper); AU mask =
  ``aus_mask``;
* compound targets, see below.

So batches mixing an emotion-only dataset and an AU-only dataset train one
shared representation, and the network predicts AUs for emotion-only images
and emotions for AU-only images.

Inference outputs:

* ``probabilities`` ``[B, 8]``: the 8 emotion sigmoid scores, restricted to the
  emotions some training dataset labels (:class:`models.loss_model.LabelSetMask`)
  and renormalised to sum to 1 (``s_c / sum_k s_k``) so they compare with the
  softmax of the other methods; argmax is unchanged by the renormalisation.
  The raw sigmoid scores are independent per emotion.
* ``aus`` ``[B, 17]``: the AU sigmoid scores (occurrence probabilities).
* ``compound`` ``[B, P]`` with ``compound=True``: compound sigmoid scores, in
  the order of ``cfg["compound_pairs"]``.
* ``embedding``: the pooled ResNet features.

Compound emotions (the paper's compound-expression application; Du, Tao &
Martinez, "Compound facial expressions of emotion", PNAS 2014). With
``compound=True`` one extra sigmoid output per pair of basic emotions in
``cfg["compound_pairs"]``; the default is the 15 pairs C(6, 2) of the six
basic emotions (anger, disgust, fear, happiness, sadness, surprise), named
Du-et-al.-style "<adverb of the first>_<adjective of the second>" in
``contract.EMOTIONS`` order, e.g. ``happily_surprised`` =
happiness + surprise (:func:`compound_label_names`). Any list of emotion-name
pairs may be given instead (e.g. all 21 pairs of ``contract.BASIC7``). The
contract has no compound field: a compound label is a *multi-hot emotion
target* — a sample labelled "happily surprised" has emotions happiness and
surprise both on. The target of pair (a, b) is ``t_a * t_b`` and its mask is
``m_a * m_b * c`` where ``t`` is the multi-hot target, ``m`` the
``emotion_mask`` and ``c`` says the sample's dataset labels compounds: a batch
key ``compound_mask`` ([B] or [B, 1]) when present, else 1 for samples of a
dataset named in ``cfg["compound_datasets"]`` (resolved through
``cfg["datasets"]``, the run's ``dataset_id`` order) or whose target has at
least two emotions on. ``emotion_multihot`` ([B, 8]) is an optional batch key
for such data (absent: the one-hot of ``emotion``). :func:`compound_output_index`
maps a pair to its output column.

Training: SGD (momentum 0.9, Nesterov) with lr 0.05 and exponential decay
``lr_t = 0.05 * lr_decay_rate ** (t / lr_decay_steps)`` (``lr_schedule``
``exponential``: Keras ``ExponentialDecay``, :mod:`models.optimizers`;
continuous, driven by the optimizer's step count so a resumed run continues
it; the decay constants are our choice), L2 weight decay 1e-4 (He et al.
2016), padding + random-crop augmentation (4 px at 32 x 32,
``crop_padding``) and horizontal flips. Input:
32 x 32 gray faces (``image_size``), standardised per image inside the model
(``standardize``, part of the exported graph).

Presets: ``paper`` = ResNet-110, ``resnet32`` = ResNet-32, both as above.
``small`` is a CPU preset for tests and benchmarks: ResNet-8 (n = 1, width 16)
on 48 px faces with a stride-2 stem and the last feature map average-pooled
to a 3 x 3 grid instead of globally (:func:`models.backbones.cifar_resnet`),
batch 16, no random crops. On the synthetic faces the paper's 32 px / global
pooling / crops did not learn within a CPU minute (32 px hides the
expressions' detail, global pooling of a shallow net discards where on the
face a feature is); the loss and label space are unchanged.
"""

from __future__ import annotations

import itertools
from typing import Any, Dict, List, Sequence, Tuple

import keras
import tensorflow as tf

from components import contract
from models import backbones
from models.base import Method
from models.losses import masked_mean, selective_sigmoid_cross_entropy
from models.optimizers import optimizer_from_cfg
from models.augment import random_pad_crop
from models.loss_model import LabelSetMask, LossModel

NUM_BASE_OUTPUTS = contract.NUM_EMOTIONS + contract.NUM_AUS  # 25
BASIC6: tuple = contract.EMOTIONS[:6]
DEFAULT_COMPOUND_PAIRS: tuple = tuple(itertools.combinations(BASIC6, 2))  # 15 pairs

_ADVERB = {"anger": "angrily", "disgust": "disgustedly", "fear": "fearfully",
           "happiness": "happily", "sadness": "sadly", "surprise": "surprisedly",
           "neutral": "neutrally", "contempt": "contemptuously"}
_ADJECTIVE = {"anger": "angry", "disgust": "disgusted", "fear": "fearful",
              "happiness": "happy", "sadness": "sad", "surprise": "surprised",
              "neutral": "neutral", "contempt": "contemptuous"}


# --------------------------------------------------------------------------- #
# Label space
# --------------------------------------------------------------------------- #
def resolve_pairs(pairs) -> Tuple[Tuple[int, int], ...]:
    """Emotion-index pairs (a < b) from name or index pairs (None -> the default 15)."""
    out = []
    for a, b in (DEFAULT_COMPOUND_PAIRS if pairs is None else pairs):
        ia = a if isinstance(a, int) else contract.canonical_emotion(a)
        ib = b if isinstance(b, int) else contract.canonical_emotion(b)
        if ia == ib:
            raise ValueError(f"compound pair of one emotion: {(a, b)}")
        out.append((min(ia, ib), max(ia, ib)))
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate compound pairs in {pairs}")
    return tuple(out)


def compound_label_names(pairs=None) -> List[str]:
    """Names of the compound outputs, e.g. ``happily_surprised``."""
    return [f"{_ADVERB[contract.EMOTIONS[a]]}_{_ADJECTIVE[contract.EMOTIONS[b]]}"
            for a, b in resolve_pairs(pairs)]


def label_names(cfg: Dict[str, Any]) -> List[str]:
    """Names of all sigmoid outputs in order (emotions, AUs, compounds)."""
    names = list(contract.EMOTIONS) + list(contract.AU_NAMES)
    if cfg.get("compound"):
        names += compound_label_names(cfg["compound_pairs"])
    return names


def compound_output_index(pair, cfg: Dict[str, Any]) -> int:
    """Column of the logits/sigmoid output for the compound ``pair`` (names or
    indices, either order)."""
    if not cfg.get("compound"):
        raise ValueError("compound outputs are off (compound=False)")
    key = resolve_pairs([pair])[0]
    return NUM_BASE_OUTPUTS + resolve_pairs(cfg["compound_pairs"]).index(key)


def compound_targets(multihot: tf.Tensor, emotion_mask: tf.Tensor, has_compound: tf.Tensor,
                     pairs: Sequence[Tuple[int, int]]) -> Tuple[tf.Tensor, tf.Tensor]:
    """``(targets, mask)`` ``[B, P]`` of the compound outputs (module docstring):
    target ``t_a t_b``, mask ``m_a m_b c``."""
    a = [p[0] for p in pairs]
    b = [p[1] for p in pairs]
    multihot = tf.cast(multihot, tf.float32)
    emotion_mask = tf.cast(emotion_mask, tf.float32)
    targets = tf.gather(multihot, a, axis=1) * tf.gather(multihot, b, axis=1)
    mask = (tf.gather(emotion_mask, a, axis=1) * tf.gather(emotion_mask, b, axis=1)
            * tf.reshape(tf.cast(has_compound, tf.float32), [-1, 1]))
    return targets, mask


def sjmt_targets(batch: Dict[str, tf.Tensor], cfg: Dict[str, Any],
                 compound_dataset_ids: Sequence[int] = ()) -> Tuple[tf.Tensor, tf.Tensor]:
    """``(labels, mask)`` over the union label space for a model-input batch."""
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
class SJMTModel(LossModel):
    """Training model of :class:`SJMT`: selective sigmoid CE over all outputs."""

    loss_terms = ("loss", "emotion_loss", "au_loss", "emotion_accuracy")

    def __init__(self, net: keras.Model, cfg: Dict[str, Any], **kwargs):
        super().__init__(net, **kwargs)
        # Plain tuples/values only (no Keras tracking of the config).
        self.target_cfg = tuple(sorted(
            (k, (tuple(map(tuple, v)) if k == "compound_pairs" and v is not None else v))
            for k, v in cfg.items() if k in ("compound", "compound_pairs", "au_threshold")))
        names = list(cfg.get("datasets") or ())
        self.compound_dataset_ids = tuple(names.index(d) for d in cfg.get("compound_datasets", ())
                                          if d in names)

    def compute_batch_loss(self, batch, outputs, training):
        cfg = dict(self.target_cfg)
        if training:
            self.net.get_layer("label_set").update(batch["emotion_mask"])
        labels, mask = sjmt_targets(batch, cfg, self.compound_dataset_ids)
        logits = tf.cast(outputs["logits"], tf.float32)
        loss = selective_sigmoid_cross_entropy(labels, logits, mask)
        e, a = contract.NUM_EMOTIONS, NUM_BASE_OUTPUTS
        emo_loss = selective_sigmoid_cross_entropy(labels[:, :e], logits[:, :e], mask[:, :e])
        au_loss = selective_sigmoid_cross_entropy(labels[:, e:a], logits[:, e:a], mask[:, e:a])
        emo_logits = tf.where(mask[:, :e] > 0, logits[:, :e], -1e9)
        emotion = tf.reshape(tf.cast(batch["emotion"], tf.int64), [-1])
        correct = tf.cast(tf.equal(tf.argmax(emo_logits, axis=-1), emotion), tf.float32)
        return {"loss": loss, "emotion_loss": emo_loss, "au_loss": au_loss,
                "emotion_accuracy": masked_mean(correct, emotion >= 0)}


# Paper settings shared by all presets (Pons & Masip 2018; He et al. 2016).
_COMMON = dict(image_size=32, standardize=True, crop_padding=4, flip=True, optimizer="sgd",
               momentum=0.9, nesterov=True, learning_rate=0.05, lr_schedule="exponential",
               pool_grid=1, stem_stride=1, au_threshold=None,
               compound=False, compound_pairs=None, compound_datasets=(), jit_compile=False)


class SJMT(Method):
    """Pons & Masip 2018: ResNet + selective sigmoid CE over emotions ∪ AUs."""

    name = "sjmt"
    presets = {
        # CPU preset (trains in about a minute): ResNet-8 (n = 1) at width 16 on
        # 48 px faces with a stride-2 stem and a 3 x 3 pooled grid instead of
        # global pooling (both cut the steps a briefly trained ResNet needs on
        # small faces, see backbones.cifar_resnet), no random crops.
        "small": dict(_COMMON, image_size=48, depth=8, width=16, stem_stride=2, pool_grid=3,
                      crop_padding=0, weight_decay=1e-4, batch_size=16,
                      lr_decay_rate=0.5, lr_decay_steps=1000),
        # ResNet-32 (0.46M parameters), the paper's smaller network.
        "resnet32": dict(_COMMON, depth=32, width=16, weight_decay=1e-4, batch_size=128,
                         lr_decay_rate=0.1, lr_decay_steps=30000),
        # ResNet-110 (1.7M parameters), the paper's main network.
        "paper": dict(_COMMON, depth=110, width=16, weight_decay=1e-4, batch_size=128,
                      lr_decay_rate=0.1, lr_decay_steps=30000),
    }

    def config(self, preset: str = "small", **overrides) -> Dict[str, Any]:
        cfg = super().config(preset, **overrides)
        if cfg["compound"]:
            pairs = resolve_pairs(cfg["compound_pairs"])
            cfg["compound_pairs"] = [[contract.EMOTIONS[a], contract.EMOTIONS[b]]
                                     for a, b in pairs]
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
        logits = keras.layers.Dense(
            self.num_outputs(cfg), kernel_regularizer=(keras.regularizers.L2(cfg["weight_decay"])
                                                       if cfg["weight_decay"] else None),
            name="logits")(embedding)
        scores = keras.layers.Activation("sigmoid", name="scores")(logits)
        e, a = contract.NUM_EMOTIONS, NUM_BASE_OUTPUTS
        emo = LabelSlice(0, e, name="emotion_scores")(scores)
        emo = LabelSetMask(e, fill=0.0, name="label_set")(emo)
        outputs = {
            "logits": logits,
            "probabilities": SumNormalize(name="probabilities")(emo),
            "aus": LabelSlice(e, a, name="aus")(scores),
            "embedding": embedding,
        }
        if cfg["compound"]:
            outputs["compound"] = LabelSlice(a, self.num_outputs(cfg), name="compound")(scores)
        return keras.Model(image, outputs, name="sjmt_net")

    def build(self, cfg: Dict[str, Any]) -> keras.Model:
        model = SJMTModel(self.build_net(cfg), cfg, name="sjmt")
        model.compile(optimizer=optimizer_from_cfg(cfg),
                      jit_compile=cfg.get("jit_compile", False))
        return model

    def inference_model(self, model: keras.Model, cfg: Dict[str, Any]) -> keras.Model:
        net = model.net
        keep = ["probabilities", "aus", "embedding"] + (["compound"] if cfg["compound"] else [])
        return keras.Model(net.input, {k: net.get_layer(k).output for k in keep},
                           name="sjmt_inference")

    def augment(self, batch, cfg):
        batch = dict(batch)
        batch["image"] = random_pad_crop(batch["image"], int(cfg["crop_padding"]),
                                         flip=bool(cfg["flip"]))
        return batch
