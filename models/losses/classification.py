"""Masked softmax cross-entropy over the emotions of a sample's label set.

Shared by the methods that train a softmax over :data:`components.contract.EMOTIONS`
(baseline, DDMTL, the multi-dataset net, FERSNet)::

    z'_c = z_c            if emotion_mask_c = 1
         = -1e9           otherwise                    (masked logits)
    L    = mean over samples with emotion >= 0 of  -log softmax(z')_y

so a 7-class dataset never pushes down the score of the 8th class (the
masked logits get exactly zero gradient) and samples without an emotion
(``emotion == -1``) contribute nothing.
"""

from __future__ import annotations

from typing import Dict

import tensorflow as tf

MASKED_LOGIT = -1e9


def masked_mean(values: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """``sum(values * weights) / max(sum(weights), 1)`` (0 when nothing is labelled)."""
    weights = tf.cast(weights, values.dtype)
    return tf.reduce_sum(values * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)


def masked_softmax_cross_entropy(emotion: tf.Tensor, logits: tf.Tensor,
                                 emotion_mask: tf.Tensor) -> Dict[str, tf.Tensor]:
    """The masked softmax CE of the module docstring. Returns ``"loss"`` and
    ``"accuracy"`` (argmax of the masked logits), both averaged over samples
    with ``emotion >= 0``, ``"per_sample"`` ``[B]`` (0 where ``emotion == -1``)
    and ``"masked_logits"``."""
    emotion = tf.cast(tf.reshape(emotion, [-1]), tf.int64)
    logits = tf.cast(logits, tf.float32)
    masked = tf.where(tf.cast(emotion_mask, tf.float32) > 0, logits,
                      tf.fill(tf.shape(logits), MASKED_LOGIT))
    labelled = emotion >= 0
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.maximum(emotion, 0),
                                                        logits=masked)
    correct = tf.cast(tf.equal(tf.argmax(masked, axis=-1), emotion), tf.float32)
    return {"loss": masked_mean(ce, labelled), "accuracy": masked_mean(correct, labelled),
            "per_sample": tf.where(labelled, ce, tf.zeros_like(ce)), "masked_logits": masked}
