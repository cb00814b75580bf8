"""Target expressions and same-face target images inside a training batch
(docs/methods.md, FERSNet, target selection)."""

from __future__ import annotations

import tensorflow as tf

from components import contract
from models.inputs import GROUP_KEYS

NUM_CLASSES = contract.NUM_EMOTIONS
_NEG = -1e9


def _uniform(shape, seed):
    if seed is None:
        return tf.random.uniform(shape)
    return tf.random.stateless_uniform(shape, seed=seed)


@tf.autograph.experimental.do_not_convert
def pair_targets(subject_id, emotion, emotion_mask, pair_prob: float = 1.0,
                 allowed=None, seed=None, sequence_id=None, within: str = "sequence"):
    """Target expressions and same-subject target images inside a batch.

    Returns ``(target [B] int64, partner [B] int64, pair_mask [B] float32)``:
    where ``pair_mask`` is 1, ``partner`` indexes another labelled sample
    (``emotion >= 0``) of the batch that shows the same face and
    ``target == emotion[partner]``; elsewhere ``partner`` is the sample itself
    (unused) and ``target`` is drawn from the sample's label set
    (``emotion_mask``; all emotions when empty), restricted to ``allowed``
    ([8] 0/1, e.g. the emotions seen in training) when that leaves any, and
    different from the sample's own emotion when possible.

    "The same face", ``within="sequence"``: a sample whose ``sequence_id`` is
    known (>= 0) pairs only with samples of that sequence (same pose, framing
    and light, so ``L_rec`` compares expressions, not pose: capture sequences
    that hold every expression, as the synthetic faces'); a sample of unknown
    sequence pairs with any sample of its ``subject_id`` (>= 0; unknown
    subjects never pair). ``within="subject"``: any sample of the same
    subject (data whose sequences hold one expression each, as CK+'s).
    A partner with the sample's own expression is never used: ``G(z, I)``
    would be asked to copy a near-duplicate, and ``D`` would see the same
    face as real and as fake (docs/methods.md, FERSNet, target selection).
    A sample with a partner uses it with probability ``pair_prob``.  ``seed``
    (shape [2] int) makes the draw deterministic.
    """
    sid = tf.reshape(tf.cast(subject_id, tf.int64), [-1])
    emo = tf.reshape(tf.cast(emotion, tf.int64), [-1])
    mask = tf.cast(emotion_mask, tf.float32)
    n = tf.shape(sid)[0]
    s1 = s2 = s3 = None
    if seed is not None:
        seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
        s1, s2, s3 = seed, seed + [0, 1], seed + [0, 2]
    if within not in GROUP_KEYS:
        raise ValueError(f"fersnet: pair_within must be 'sequence' or 'subject', got {within!r}")
    same = (sid[:, None] == sid[None, :]) & (sid[:, None] >= 0)
    if sequence_id is not None and within == "sequence":
        seq = tf.reshape(tf.cast(sequence_id, tf.int64), [-1])
        same_seq = (seq[:, None] == seq[None, :]) & (seq[:, None] >= 0)
        same = tf.where(seq[:, None] >= 0, same_seq, same)
    other_expression = (emo[None, :] != emo[:, None]) | (emo[:, None] < 0)
    same = same & (emo[None, :] >= 0) & other_expression & ~tf.cast(tf.eye(n), tf.bool)
    score = tf.where(same, 1.0 + _uniform([n, n], s1), 0.0)
    partner = tf.argmax(score, axis=1, output_type=tf.int64)
    use_pair = tf.reduce_any(same, axis=1) & (_uniform([n], s2) < pair_prob)

    cand = tf.where(tf.reduce_sum(mask, 1, keepdims=True) > 0, mask, tf.ones_like(mask))
    if allowed is not None:
        allowed = tf.cast(tf.reshape(allowed, [1, -1]), tf.float32)
        narrowed = cand * allowed
        cand = tf.where(tf.reduce_sum(narrowed, 1, keepdims=True) > 0, narrowed, cand)
    own = tf.one_hot(tf.maximum(emo, 0), NUM_CLASSES) * tf.cast(emo[:, None] >= 0, tf.float32)
    other = cand * (1.0 - own)
    cand = tf.where(tf.reduce_sum(other, 1, keepdims=True) > 0, other, cand)
    # Gumbel-max draw over the candidate set.
    u = tf.clip_by_value(_uniform([n, NUM_CLASSES], s3), 1e-7, 1.0 - 1e-7)
    gumbel = -tf.math.log(-tf.math.log(u))
    rand_t = tf.argmax(tf.where(cand > 0, gumbel, _NEG), axis=1, output_type=tf.int64)

    target = tf.where(use_pair, tf.gather(emo, partner), rand_t)
    partner = tf.where(use_pair, partner, tf.range(tf.cast(n, tf.int64)))
    return target, partner, tf.cast(use_pair, tf.float32)
