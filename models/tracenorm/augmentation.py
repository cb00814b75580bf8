"""Training augmentation of Hu et al. (ECCV 2018), Sec. 4.1: horizontal flips for the
emotion rows; flip, rotation, scale, shift and Gaussian noise for the landmark rows,
with the landmark targets moved by the same transform as the pixels (and, on a
flip, renumbered left <-> right in the 68-point iBUG order).

Coordinates: landmarks are ``(x, y)`` in [0, 1] of the image, continuous (a pixel
``i`` covers ``[i, i + 1)`` of ``S`` pixels, ``components/ingestion/align.py``).
The forward map of one face is ``p = A (q - c) + c + t`` with ``c = (0.5, 0.5)``,
``A = s R(theta) D``, ``D = diag(-1, 1)`` on a flip, ``R`` the rotation by
``theta`` in image axes (y down) and ``t`` the shift in image fractions.
"""

from __future__ import annotations

import math
from typing import Any, Dict

import numpy as np
import tensorflow as tf

from components import contract


def ibug_flip_permutation() -> np.ndarray:
    """``perm[i]``: the point a horizontal mirror turns into point ``i`` (0-based
    iBUG 68: jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67)."""
    pairs = ([(i, 16 - i) for i in range(8)]                     # jaw
             + [(17 + i, 26 - i) for i in range(5)]              # brows
             + [(31, 35), (32, 34)]                              # nostrils
             + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]   # eyes
             + [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]             # outer lips
             + [(60, 64), (61, 63), (65, 67)])                                # inner lips
    perm = np.arange(contract.NUM_LANDMARKS)
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


FLIP_PERMUTATION = ibug_flip_permutation()


def face_transform(flip, angle, scale):
    """``A = s R(theta) D`` per face, ``[B, 2, 2]`` (module docstring); ``flip`` 0/1,
    ``angle`` in radians."""
    d = 1.0 - 2.0 * tf.cast(flip, tf.float32)
    cos, sin = tf.cos(angle), tf.sin(angle)
    s = tf.cast(scale, tf.float32)
    return tf.stack([tf.stack([s * cos * d, -s * sin], -1),
                     tf.stack([s * sin * d, s * cos], -1)], -2)


def transform_landmarks(landmarks, flip, angle, scale, shift):
    """``p = A (q - c) + c + t`` for ``[B, 136]`` landmarks, then the iBUG
    renumbering on flipped rows."""
    q = tf.reshape(tf.cast(landmarks, tf.float32), [-1, contract.NUM_LANDMARKS, 2])
    a = face_transform(flip, angle, scale)
    p = tf.einsum("bij,bnj->bni", a, q - 0.5) + 0.5 + tf.cast(shift, tf.float32)[:, None, :]
    p = tf.where(tf.cast(flip, tf.bool)[:, None, None], tf.gather(p, FLIP_PERMUTATION, axis=1), p)
    return tf.reshape(p, [-1, 2 * contract.NUM_LANDMARKS])


def transform_images(images, flip, angle, scale, shift):
    """The same map on ``[B, S, S, C]`` images (bilinear, edge pixels repeated).

    ``ImageProjectiveTransformV3`` maps each output pixel centre to an input
    point, in pixel-centre coordinates ``u = S x - 1/2`` (centre ``(S-1)/2``):
    ``u_in = A^-1 (u_out - c - S t) + c``.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    size = tf.cast(tf.shape(images)[1], tf.float32)
    inv = tf.linalg.inv(face_transform(flip, angle, scale))
    c = (size - 1.0) / 2.0
    off = c + size * tf.cast(shift, tf.float32)             # [B, 2]
    row0 = tf.stack([inv[:, 0, 0], inv[:, 0, 1],
                     c - inv[:, 0, 0] * off[:, 0] - inv[:, 0, 1] * off[:, 1]], -1)
    row1 = tf.stack([inv[:, 1, 0], inv[:, 1, 1],
                     c - inv[:, 1, 0] * off[:, 0] - inv[:, 1, 1] * off[:, 1]], -1)
    transforms = tf.concat([row0, row1, tf.zeros_like(row0[:, :2])], axis=-1)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST")
    return tf.reshape(out, tf.shape(images))


@tf.autograph.experimental.do_not_convert
def augment_batch(batch: Dict[str, Any], cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Random Sec. 4.1 augmentation of a model-input batch.

    Landmark rows (``landmarks_mask > 0``): flip with probability 1/2
    (``landmark_flip``), rotation ``U(-r, r)`` degrees (``landmark_rotation``),
    scale ``U(lo, hi)`` (``landmark_scale``), shift ``U(-m, m)`` of the image per
    axis (``landmark_shift``), additive pixel noise ``N(0, sigma^2)`` clipped to
    [0, 1] (``landmark_noise``). Other rows with an emotion label: flip with
    probability 1/2 (``emotion_flip``). Unlabelled rows are left as they are.
    """
    image = tf.convert_to_tensor(batch["image"], tf.float32)
    n = tf.shape(image)[0]
    lmk = tf.reshape(tf.cast(batch["landmarks_mask"], tf.float32), [-1]) > 0
    emo = tf.logical_and(tf.reshape(batch["emotion"], [-1]) >= 0, tf.logical_not(lmk))
    flippable = tf.logical_or(tf.logical_and(lmk, bool(cfg["landmark_flip"])),
                              tf.logical_and(emo, bool(cfg["emotion_flip"])))
    flip = tf.logical_and(flippable, tf.random.uniform([n]) < 0.5)
    r = float(cfg["landmark_rotation"]) * math.pi / 180.0
    lo, hi = (float(v) for v in cfg["landmark_scale"])
    m = float(cfg["landmark_shift"])
    zero = tf.zeros([n])
    angle = tf.where(lmk, tf.random.uniform([n], -r, r), zero)
    scale = tf.where(lmk, tf.random.uniform([n], lo, hi), zero + 1.0)
    shift = tf.where(lmk[:, None], tf.random.uniform([n, 2], -m, m), 0.0)
    flip = tf.cast(flip, tf.float32)

    out = transform_images(image, flip, angle, scale, shift)
    sigma = float(cfg["landmark_noise"])
    if sigma:
        noise = tf.random.normal(tf.shape(out), stddev=sigma)
        out = tf.where(lmk[:, None, None, None], tf.clip_by_value(out + noise, 0.0, 1.0), out)
    result = dict(batch)
    result["image"] = out
    moved = transform_landmarks(batch["landmarks"], flip, angle, scale, shift)
    result["landmarks"] = tf.where(lmk[:, None], moved, tf.cast(batch["landmarks"], tf.float32))
    return result
