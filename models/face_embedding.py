"""A face-identity embedding for FERSNet's identity-preserving loss (Eq 9).

FERSNet (Zhao, Liu, Xiao, Lun, Lam, "Deep Multi-task Learning for Facial
Expression Recognition and Synthesis Based on Selective Feature Sharing",
ICPR 2020) computes ``L_idt = ||f(G(z^t, I)) - f(I^t)||_2^2`` on the features
of the pre-trained model-B of the Light CNN (Wu, He, Sun, ref. [20]).  Those
weights cannot be downloaded here, so this module's network stands in for
it (docs/methods.md, FERSNet):

* :func:`build_face_embedding` -- a fully-convolutional CNN (conv3x3-BN-ReLU
  blocks + max-pool, global average pooling, a linear projection and L2
  normalisation) mapping a grey face ``[B, H, W, 1]`` in [0, 1] (any size)
  to a unit vector ``[B, dim]``;
* :class:`CosineSoftmax` -- the NormFace identity classifier on top of it
  (``scale * cos(embedding, class centre)``), used while training;
* :func:`identity_bucket` -- a subject's class index from the hashed
  ``subject_id`` of the model inputs;
* :func:`train_face_embedding` -- trains it, frozen afterwards, on contract
  samples that carry a ``subject`` (every expression of a subject is one
  class, so the embedding learns to ignore expression); FERSNet loads such
  weights from ``face_embedding_weights`` (the paper's way: a pre-trained,
  frozen identity network).  Without weights FERSNet trains the same
  network *during its own fit* on the training batches' subject ids
  (``models/fersnet/model.py``);
* :func:`save_face_embedding` / :func:`load_face_embedding` -- Keras weights
  (``*.weights.h5``) plus a JSON side-car with the architecture.

Usage::

    emb, info = train_face_embedding(samples, image_size=48, epochs=15)
    save_face_embedding(emb, "runs/face_emb.weights.h5")
    cfg = get_method("fersnet").config("small",
                                       face_embedding_weights="runs/face_emb.weights.h5")
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from components import contract

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ARCH",
    "build_face_embedding",
    "train_face_embedding",
    "save_face_embedding",
    "load_face_embedding",
    "read_arch",
    "CosineSoftmax",
    "identity_bucket",
    "embed",
    "verification_auc",
]

#: Architecture of the default embedding network (also stored in the side-car).
DEFAULT_ARCH: Dict[str, Any] = {"image_size": 48, "filters": [16, 32, 64], "dim": 64}

_SUFFIX = ".weights.h5"


def _sidecar(path: str) -> str:
    path = str(path)
    base = path[:-len(_SUFFIX)] if path.endswith(_SUFFIX) else path
    return base + ".json"


def build_face_embedding(image_size: Optional[int] = None, filters: Sequence[int] = (16, 32, 64),
                         dim: int = 64, name: str = "face_embedding",
                         bn_momentum: float = 0.99) -> keras.Model:
    """Identity embedding network: image ``[B, H, W, 1]`` in [0, 1] -> unit ``[B, dim]``.

    ``image_size`` is the size it is trained at (recorded in the side-car and
    used by callers to resize); the network itself accepts any size.
    """
    del image_size  # size-agnostic; kept in the arch dict for callers
    inp = keras.Input((None, None, 1), name="image")
    x = inp
    for i, f in enumerate(filters):
        for j in range(2):
            x = keras.layers.Conv2D(f, 3, padding="same", use_bias=False,
                                    name=f"b{i + 1}_conv{j + 1}")(x)
            x = keras.layers.BatchNormalization(momentum=bn_momentum,
                                                name=f"b{i + 1}_bn{j + 1}")(x)
            x = keras.layers.ReLU(name=f"b{i + 1}_relu{j + 1}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"b{i + 1}_pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(dim, name="proj")(x)
    out = keras.layers.UnitNormalization(name="l2norm")(x)
    return keras.Model(inp, out, name=name)


@keras.saving.register_keras_serializable(package="fermtl")
class CosineSoftmax(keras.layers.Layer):
    """NormFace head (Wang et al. 2017): logits ``scale * cos(embedding, class centre)``."""

    def __init__(self, n_classes: int, scale: float = 16.0, **kw):
        super().__init__(**kw)
        self.n_classes = int(n_classes)
        self.scale = float(scale)

    def build(self, input_shape):
        self.w = self.add_weight(shape=(int(input_shape[-1]), self.n_classes),
                                 initializer="glorot_uniform", name="centres")

    def call(self, x):
        w = tf.math.l2_normalize(self.w, axis=0)
        return self.scale * tf.matmul(tf.math.l2_normalize(x, axis=-1), w)

    def get_config(self):
        return {**super().get_config(), "n_classes": self.n_classes, "scale": self.scale}


def identity_bucket(subject_id: tf.Tensor, buckets: int) -> tf.Tensor:
    """Class index ``subject_id mod buckets`` of hashed subject ids (the model
    inputs' ``subject_id``, a 62-bit hash; -1 unknown stays -1).  Two subjects
    share a class with probability ``1 / buckets`` per pair."""
    sid = tf.cast(subject_id, tf.int64)
    return tf.where(sid >= 0, tf.math.floormod(sid, int(buckets)), -tf.ones_like(sid))


def _decode(samples: Sequence[contract.FaceSample], size: int) -> np.ndarray:
    out = np.zeros((len(samples), size, size, 1), np.float32)
    for i, s in enumerate(samples):
        px = s.pixels().astype(np.float32)[..., None] / 255.0
        if px.shape[:2] != (size, size):
            px = tf.image.resize(px, [size, size], antialias=True).numpy()
        out[i] = np.clip(px, 0.0, 1.0)
    return out


def train_face_embedding(samples: Iterable[contract.FaceSample], image_size: int = 48,
                         filters: Sequence[int] = (16, 32, 64), dim: int = 64,
                         epochs: int = 15, batch_size: int = 32, learning_rate: float = 3e-3,
                         mirror: bool = True, seed: int = 0, out_path: Optional[str] = None,
                         verbose: int = 0) -> Tuple[keras.Model, Dict[str, Any]]:
    """Train the identity embedding to classify ``subject`` on ``samples``.

    Samples without a subject are ignored; subjects with a single sample are
    kept (they still act as negatives).  Returns ``(embedding_model, info)``
    where the model is frozen and ``info`` holds the architecture, the number
    of subjects/samples and the final training loss/accuracy.  With
    ``out_path`` (``*.weights.h5``) the weights and side-car are saved too.
    """
    samples = [s for s in samples if s.subject]
    if not samples:
        raise ValueError("train_face_embedding: no samples with a subject")
    subjects = sorted({s.subject for s in samples})
    index = {s: i for i, s in enumerate(subjects)}
    x = _decode(samples, image_size)
    y = np.asarray([index[s.subject] for s in samples], np.int64)

    keras.utils.set_random_seed(seed)
    emb = build_face_embedding(image_size, filters, dim)
    inp = keras.Input((image_size, image_size, 1))
    logits = CosineSoftmax(len(subjects), name="id_head")(emb(inp))
    trainer = keras.Model(inp, logits)
    trainer.compile(optimizer=keras.optimizers.Adam(learning_rate),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["accuracy"])

    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed)
    if mirror:
        ds = ds.map(lambda a, b: (tf.image.random_flip_left_right(a), b))
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    hist = trainer.fit(ds, epochs=epochs, verbose=verbose)

    emb.trainable = False
    arch = {"image_size": int(image_size), "filters": [int(f) for f in filters], "dim": int(dim)}
    info = {"arch": arch, "n_subjects": len(subjects), "n_samples": len(samples),
            "loss": float(hist.history["loss"][-1]),
            "accuracy": float(hist.history["accuracy"][-1])}
    if out_path:
        save_face_embedding(emb, out_path, arch, info)
    return emb, info


def save_face_embedding(model: keras.Model, path: str, arch: Optional[Dict[str, Any]] = None,
                        info: Optional[Dict[str, Any]] = None) -> str:
    """Write ``path`` (must end in ``.weights.h5``) and its JSON side-car."""
    path = str(path)
    if not path.endswith(_SUFFIX):
        raise ValueError(f"face embedding weights must end in {_SUFFIX!r}: {path}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if arch is None:
        arch = dict(DEFAULT_ARCH)
        arch["dim"] = int(model.output_shape[-1])
    model.save_weights(path)
    with open(_sidecar(path), "w") as f:
        json.dump({"arch": arch, "info": info or {}}, f, indent=1)
    return path


def read_arch(path: str) -> Dict[str, Any]:
    """Architecture dict stored next to embedding weights ``path``."""
    side = _sidecar(path)
    if not os.path.exists(side):
        return dict(DEFAULT_ARCH)
    with open(side) as f:
        return dict(json.load(f)["arch"])


def load_face_embedding(path: str, arch: Optional[Dict[str, Any]] = None) -> keras.Model:
    """Frozen embedding model from weights written by :func:`save_face_embedding`."""
    arch = arch or read_arch(path)
    model = build_face_embedding(arch.get("image_size"), arch["filters"], arch["dim"])
    model.load_weights(str(path))
    model.trainable = False
    return model


def embed(model: keras.Model, images: tf.Tensor, image_size: Optional[int] = None,
          training: bool = False) -> tf.Tensor:
    """Embeddings of ``images`` ([B, S, S, 1] in [0, 1]), resized to ``image_size`` first."""
    images = tf.convert_to_tensor(images, tf.float32)
    if image_size and images.shape[1] != image_size:
        images = tf.image.resize(images, [image_size, image_size])
    return model(images, training=training)


def verification_auc(model: keras.Model, samples: Sequence[contract.FaceSample],
                     image_size: int = 48) -> float:
    """ROC AUC of cosine similarity for same- vs different-subject pairs of
    ``samples`` (a quick check that the embedding generalises to new subjects)."""
    samples = [s for s in samples if s.subject]
    e = np.asarray(embed(model, _decode(samples, image_size)))
    sim = e @ e.T
    subj = np.asarray([s.subject for s in samples])
    same = subj[:, None] == subj[None, :]
    iu = np.triu_indices(len(samples), 1)
    pos, neg = sim[iu][same[iu]], sim[iu][~same[iu]]
    if not len(pos) or not len(neg):
        return float("nan")
    ranks = np.argsort(np.argsort(np.concatenate([pos, neg]))) + 1
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))
