"""Selective sigmoid cross-entropy for multi-dataset, multi-label training.

Seed: Pons & Masip, "Multi-task, multi-label and multi-domain learning with
residual convolutional networks for emotion recognition" (SJMT), Eq 1.  The
network outputs one logit per label of the *union* label space of all
datasets; a sample from dataset ``d`` is only supervised on the labels that
``d`` annotates (binary mask ``m_i``)::

    L_i = - (1 / sum_c m_ic) * sum_c m_ic * [ y_ic log s(x_ic) + (1 - y_ic) log(1 - s(x_ic)) ]
    L   = mean over the samples with sum_c m_ic >= 1 of L_i

Choices (the equation leaves the normaliser implicit): each sample is
normalised by *its own* number of contributing labels, so datasets with many
labels do not dominate; samples with no contributing label are excluded from
the batch mean (a batch with none gives 0).  The per-element term is
``tf.nn.sigmoid_cross_entropy_with_logits`` (numerically stable) and masked
elements are removed with ``tf.where`` so they get exactly zero gradient even
if their labels are garbage (e.g. -1 placeholders).
"""

from __future__ import annotations

import keras
import tensorflow as tf

__all__ = ["selective_sigmoid_cross_entropy", "SelectiveSigmoidCrossEntropy"]


def _per_sample(labels, logits, mask):
    logits = tf.convert_to_tensor(logits)
    dtype = logits.dtype if logits.dtype.is_floating else tf.float32
    logits = tf.cast(logits, dtype)
    keep = tf.cast(mask, tf.float32) > 0.5
    labels = tf.where(keep, tf.cast(labels, dtype), tf.zeros_like(logits))
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    ce = tf.where(keep, ce, tf.zeros_like(ce))
    count = tf.reduce_sum(tf.cast(keep, dtype), axis=-1)
    per_sample = tf.math.divide_no_nan(tf.reduce_sum(ce, axis=-1), count)
    return per_sample, count > 0


def selective_sigmoid_cross_entropy(labels, logits, mask, reduction: str = "mean"):
    """SJMT Eq 1.  ``labels``, ``logits``, ``mask``: ``[B, C]`` (mask 1 = label is annotated).

    ``reduction="mean"``: scalar mean over samples with >= 1 contributing label;
    ``"none"``: ``[B]`` per-sample losses (0 for samples without labels).
    """
    per_sample, valid = _per_sample(labels, logits, mask)
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
    returns, per sample, ``L_i / n_valid`` for samples with a contributing
    label (0 otherwise), and the default reduction is ``"sum"``, so the
    reduced value equals :func:`selective_sigmoid_cross_entropy` (mean over
    samples with labels).  ``sample_weight`` multiplies those terms.
    """

    def __init__(self, name: str = "selective_sigmoid_cross_entropy", reduction="sum",
                 **kwargs):
        super().__init__(name=name, reduction=reduction, **kwargs)

    def call(self, y_true, y_pred):
        y_pred = tf.convert_to_tensor(y_pred)
        num = y_pred.shape[-1]
        if num is None:
            num = tf.shape(y_pred)[-1]
        labels, mask = y_true[..., :num], y_true[..., num:]
        per_sample, valid = _per_sample(labels, y_pred, mask)
        n_valid = tf.reduce_sum(tf.cast(valid, per_sample.dtype))
        return tf.math.divide_no_nan(per_sample, n_valid)
