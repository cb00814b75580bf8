"""FERSNet's adversarial and pixel losses (per sample; the package docstring
lists the terms of the objective)."""

from __future__ import annotations

import tensorflow as tf


def gan_loss(logits, real: bool, kind: str):
    """Per-sample adversarial loss averaged over patches."""
    if kind == "lsgan":
        target = 1.0 if real else 0.0
        per = tf.square(logits - target)
    elif kind == "bce":
        labels = tf.ones_like(logits) if real else tf.zeros_like(logits)
        per = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    else:
        raise ValueError(f"fersnet: gan_loss must be 'bce' or 'lsgan', got {kind!r}")
    return tf.reduce_mean(per, axis=[1, 2, 3])


def pixel_loss(a, b, kind: str = "l1"):
    """Per-sample pixel distance: mean ``|a - b|`` ("l1") or mean ``(a - b)^2``
    ("l2"; see ``recon_loss`` in the package docstring)."""
    if kind == "l1":
        return tf.reduce_mean(tf.abs(a - b), axis=[1, 2, 3])
    if kind == "l2":
        return tf.reduce_mean(tf.square(a - b), axis=[1, 2, 3])
    raise ValueError(f"fersnet: recon_loss must be 'l1' or 'l2', got {kind!r}")
