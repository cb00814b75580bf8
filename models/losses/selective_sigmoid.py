"""Selective sigmoid cross-entropy for multi-dataset, multi-label training.

Pons & Masip, "Multi-task, multi-label and multi-domain learning with residual
convolutional networks for emotion recognition" (SJMT, arXiv:1802.06664,
2018), Eqs 1-2.

* Eq 1, ``E(y_hat, y, k)`` over the labels ``L^k`` of the sample's dataset,
  with Eq 2's ``y_hat_j = 1 / (1 + exp(-p_j))``:
  :func:`selective_sigmoid_cross_entropy`; :class:`SelectiveSigmoidCrossEntropy`
  (Keras loss).

Deviations and reading choices: docs/methods.md, section SJMT.
"""

from __future__ import annotations

import keras
import tensorflow as tf

__all__ = ["selective_sigmoid_cross_entropy", "SelectiveSigmoidCrossEntropy", "NORMALIZERS"]

NORMALIZERS = ("labels", "classes")


def _per_sample(labels, logits, mask, normalizer: str = "labels"):
    if normalizer not in NORMALIZERS:
        raise ValueError(f"normalizer must be one of {NORMALIZERS}, got {normalizer!r}")
    logits = tf.convert_to_tensor(logits)
    dtype = logits.dtype if logits.dtype.is_floating else tf.float32
    logits = tf.cast(logits, dtype)
    keep = tf.cast(mask, tf.float32) > 0.5
    labels = tf.where(keep, tf.cast(labels, dtype), tf.zeros_like(logits))
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    ce = tf.where(keep, ce, tf.zeros_like(ce))
    count = tf.reduce_sum(tf.cast(keep, dtype), axis=-1)
    if normalizer == "classes":
        num_classes = tf.cast(tf.shape(logits)[-1], dtype)
        per_sample = tf.reduce_sum(ce, axis=-1) / num_classes
    else:
        per_sample = tf.math.divide_no_nan(tf.reduce_sum(ce, axis=-1), count)
    return per_sample, count > 0


def selective_sigmoid_cross_entropy(labels, logits, mask, reduction: str = "mean",
                                    normalizer: str = "labels"):
    """SJMT Eq 1 per sample, with ``y_hat = sigmoid(logits)`` (Eq 2)::

        E(y_hat, y, k) = -1/N sum_{j in L^k} [ y_j log y_hat_j + (1 - y_j) log(1 - y_hat_j) ]

    (the printed second factor ``(1 - y_hat_j)`` read as ``(1 - y_j)``).
    ``labels``, ``logits``, ``mask``: ``[B, C]`` (mask 1 = the label is
    annotated by the sample's dataset, ``j in L^k``). The per-element term is
    ``tf.nn.sigmoid_cross_entropy_with_logits`` (numerically stable); masked
    elements are removed with ``tf.where``, so they get exactly zero gradient
    even if their labels are garbage (e.g. -1 placeholders).

    ``reduction="mean"``: scalar mean over samples with >= 1 annotated label (0
    when there is none);
    ``"none"``: ``[B]`` per-sample ``E`` (0 for samples without labels).
    ``normalizer``: ``"classes"`` (N = C, the width of the union label space,
    the same for every sample: Eq 1 as written) or ``"labels"`` (N = ``|L^k|``,
    the sample's number of annotated labels).
    """
    per_sample, valid = _per_sample(labels, logits, mask, normalizer)
    if reduction == "none":
        return per_sample
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    n_valid = tf.reduce_sum(tf.cast(valid, per_sample.dtype))
    return tf.math.divide_no_nan(tf.reduce_sum(per_sample), n_valid)


@keras.saving.register_keras_serializable(package="fermtl")
class SelectiveSigmoidCrossEntropy(keras.losses.Loss):
    """Keras loss for SJMT Eq 1 with ``y_true = concat([labels, mask], axis=-1)``.

    ``y_true`` is ``[B, 2C]`` and ``y_pred`` the ``[B, C]`` logits.  ``call``
    returns, per sample, ``E_i / n_valid`` for samples with an annotated
    label (0 otherwise), and the default reduction is ``"sum"``, so the
    reduced value equals :func:`selective_sigmoid_cross_entropy` (mean over
    samples with labels).  ``sample_weight`` multiplies those terms.
    """

    def __init__(self, name: str = "selective_sigmoid_cross_entropy", reduction="sum",
                 normalizer: str = "labels", **kwargs):
        super().__init__(name=name, reduction=reduction, **kwargs)
        if normalizer not in NORMALIZERS:
            raise ValueError(f"normalizer must be one of {NORMALIZERS}, got {normalizer!r}")
        self.normalizer = normalizer

    def call(self, y_true, y_pred):
        y_pred = tf.convert_to_tensor(y_pred)
        num = y_pred.shape[-1]
        if num is None:
            num = tf.shape(y_pred)[-1]
        labels, mask = y_true[..., :num], y_true[..., num:]
        per_sample, valid = _per_sample(labels, y_pred, mask, self.normalizer)
        n_valid = tf.reduce_sum(tf.cast(valid, per_sample.dtype))
        return tf.math.divide_no_nan(per_sample, n_valid)

    def get_config(self):
        return {**super().get_config(), "normalizer": self.normalizer}
