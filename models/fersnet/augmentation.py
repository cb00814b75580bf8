"""FERSNet's training augmentation: mirror, rotation and shift, one transform
per subject of the batch (docs/methods.md, FERSNet, augmentation)."""

from __future__ import annotations

import math
from typing import Any, Dict

import tensorflow as tf


@tf.autograph.experimental.do_not_convert
def _group_leader(subject_id):
    """Index of the first sample of each sample's subject (itself if unknown)."""
    sid = tf.reshape(tf.cast(subject_id, tf.int64), [-1])
    n = tf.shape(sid)[0]
    same = (sid[:, None] == sid[None, :]) & (sid[:, None] >= 0)
    same = same | tf.cast(tf.eye(n), tf.bool)
    return tf.argmax(tf.cast(same, tf.int32), axis=1, output_type=tf.int32)


@tf.autograph.experimental.do_not_convert
def augment_batch(batch: Dict[str, tf.Tensor], cfg: Dict[str, Any]) -> Dict[str, tf.Tensor]:
    """Random mirror, rotation (multiples of ``rotation_step`` up to
    ``max_rotation`` degrees) and translation (the crop from ``crop_from``,
    see docs/methods.md, FERSNet) of ``batch["image"]``; one transform per subject
    of the batch (samples with unknown subject get their own)."""
    image = tf.convert_to_tensor(batch["image"], tf.float32)
    size = int(cfg["image_size"])
    n = tf.shape(image)[0]
    sid = batch.get("subject_id")
    if sid is None:
        sid = -tf.ones([n], tf.int64)
    leader = _group_leader(sid)

    flip = tf.cast(tf.random.uniform([n]) < 0.5, tf.float32) if cfg["mirror"] else tf.zeros([n])
    steps = int(cfg["max_rotation"] // cfg["rotation_step"]) if cfg["rotation_step"] else 0
    k = tf.random.uniform([n], -steps, steps + 1, dtype=tf.int32)
    angle = tf.cast(k, tf.float32) * (float(cfg["rotation_step"]) * math.pi / 180.0)
    shift = max(int(cfg["crop_from"]) - size, 0) // 2
    t = tf.cast(tf.random.uniform([n, 2], -shift, shift + 1, dtype=tf.int32), tf.float32)
    flip, angle, t = (tf.gather(v, leader) for v in (flip, angle, t))

    # Output pixel -> input pixel: mirror, then rotate about the centre, then shift.
    c = (size - 1) / 2.0
    sx = 1.0 - 2.0 * flip                       # x -> sx * (x - c) + c
    cos, sin = tf.cos(angle), tf.sin(angle)
    a0, a1 = cos * sx, -sin
    b0, b1 = sin * sx, cos
    a2 = c - a0 * c - a1 * c + t[:, 0]
    b2 = c - b0 * c - b1 * c + t[:, 1]
    zeros = tf.zeros_like(a0)
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image, transforms=transforms, output_shape=tf.constant([size, size]),
        fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST")
    result = dict(batch)
    result["image"] = tf.clip_by_value(tf.reshape(out, tf.shape(image)), 0.0, 1.0)
    return result
