"""DDMTL contrastive loss with adaptive (reachability-based) re-weighting.

Seed: Hu et al., "Deep Multi-Task Learning to Recognise Subtle Facial
Expressions of Mental States" (DDMTL, ECCV 2018).

Contrastive loss (Eqs 5-7; Hadsell et al. 2006).  For pairs ``(x_i, x_j)``
with embeddings ``e_i, e_j``, ``d = ||e_i - e_j||_2`` and ``y = 1`` when the
pair has the same class::

    CL = mean_pairs  w_p * [ y d^2 + (1 - y) max(m - d, 0)^2 ]

(``w_p = 1`` unless pair weights are given, in which case the weighted sum is
divided by ``sum w_p``).

Adaptive re-weighting ``W_k`` (Eqs 3-4).  The paper uses the k-distance and
reachability distance of the local outlier factor (Breunig et al. 2000) and a
Gaussian scaling but leaves the exact formula ambiguous.  Interpretation
implemented here (all quantities in the embedding / feature space):

* Reference set ``R`` = the batch (plus the memory bank when given); a query
  is every batch sample ``x_i``.  Neighbours are restricted to the *same
  class* and exclude the point itself (bank entries with label < 0 are empty).
* ``N_k(p)`` = the ``k_p = min(k, n_p)`` nearest same-class points of ``p``
  in ``R`` (``n_p`` = number available); ``k-dist(p)`` = distance to the
  ``k_p``-th of them.
* ``reach-dist_k(x_i, x_j) = max(k-dist(x_j), d(x_i, x_j))``.
* ``rd_i = mean_{j in N_k(x_i)} reach-dist_k(x_i, x_j)`` (the inverse of the
  local reachability density).
* Gaussian scaling: ``w_i = exp(-rd_i^2 / (2 sigma^2))`` with ``sigma`` the
  median of ``rd`` over the batch samples that have neighbours (or a fixed
  ``sigma``).  Dense-region samples get weights near 1, outliers near 0.
* Samples without any same-class neighbour get the mean weight of the others
  (neutral), then weights are normalised to mean 1 over the batch.
* Gradients are stopped through the weights (they are importance weights).
"""

from __future__ import annotations

import keras
import tensorflow as tf

__all__ = ["contrastive_loss", "ContrastiveLoss", "reachability_weights", "FeatureMemoryBank"]

_BIG = 1e30


def contrastive_loss(emb_i, emb_j, same, margin: float = 1.0, weights=None):
    """DDMTL Eqs 5-7: ``mean(y d^2 + (1 - y) max(margin - d, 0)^2)``.

    ``emb_i``, ``emb_j``: ``[P, D]`` pair embeddings; ``same``: ``[P]`` (1 =
    same class); ``weights``: optional ``[P]`` pair weights (weighted mean).
    """
    emb_i = tf.convert_to_tensor(emb_i)
    emb_j = tf.cast(emb_j, emb_i.dtype)
    y = tf.reshape(tf.cast(same, emb_i.dtype), [-1])
    d2 = tf.reduce_sum(tf.square(emb_i - emb_j), axis=-1)
    d = tf.sqrt(tf.maximum(d2, 1e-12))  # safe gradient at d = 0 (only used by the hinge)
    per_pair = y * d2 + (1.0 - y) * tf.square(tf.nn.relu(margin - d))
    if weights is None:
        return tf.reduce_mean(per_pair)
    w = tf.reshape(tf.cast(weights, emb_i.dtype), [-1])
    return tf.math.divide_no_nan(tf.reduce_sum(w * per_pair), tf.reduce_sum(w))


@keras.saving.register_keras_serializable(package="fermtl")
class ContrastiveLoss(keras.losses.Loss):
    """Keras loss for DDMTL Eqs 5-7.

    ``y_pred = concat([emb_i, emb_j], axis=-1)`` (``[P, 2D]``) and ``y_true`` the
    ``[P]`` or ``[P, 1]`` same-class indicator.  ``call`` returns the per-pair
    loss; with the default ``"sum_over_batch_size"`` reduction the value
    equals :func:`contrastive_loss`.
    """

    def __init__(self, margin: float = 1.0, name: str = "contrastive_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.margin = float(margin)

    def call(self, y_true, y_pred):
        y_pred = tf.convert_to_tensor(y_pred)
        dim = y_pred.shape[-1] // 2
        e_i, e_j = y_pred[..., :dim], y_pred[..., dim:]
        y = tf.reshape(tf.cast(y_true, y_pred.dtype), [-1])
        d2 = tf.reduce_sum(tf.square(e_i - e_j), axis=-1)
        d = tf.sqrt(tf.maximum(d2, 1e-12))
        return y * d2 + (1.0 - y) * tf.square(tf.nn.relu(self.margin - d))

    def get_config(self):
        config = super().get_config()
        config.update(margin=self.margin)
        return config


def _pairwise_dist(a, b):
    a2 = tf.reduce_sum(tf.square(a), axis=-1, keepdims=True)
    b2 = tf.reduce_sum(tf.square(b), axis=-1, keepdims=True)
    d2 = a2 - 2.0 * tf.matmul(a, b, transpose_b=True) + tf.transpose(b2)
    return tf.sqrt(tf.maximum(d2, 0.0))


def _knn(dist, valid, k):
    """Per row: sorted distances of the k nearest valid columns and their count."""
    masked = tf.where(valid, dist, tf.cast(_BIG, dist.dtype))
    cols = dist.shape[-1]
    k_eff = min(int(k), int(cols)) if cols is not None else tf.minimum(int(k), tf.shape(dist)[-1])
    neg, idx = tf.math.top_k(-masked, k=k_eff)
    count = tf.minimum(tf.reduce_sum(tf.cast(valid, tf.int32), axis=-1), k_eff)
    return -neg, idx, count


def reachability_weights(features, labels, k: int = 5, bank_features=None, bank_labels=None,
                         sigma: float | None = None, normalize: bool = True):
    """DDMTL adaptive weights ``W_k`` (Eqs 3-4, interpretation in the module docstring).

    Args:
      features: ``[B, D]`` batch features; labels: ``[B]`` int class ids
        (< 0 = no class: such samples get the neutral weight and are never
        neighbours).
      k: number of neighbours.
      bank_features / bank_labels: optional ``[M, D]`` / ``[M]`` extra reference
        points (e.g. ``FeatureMemoryBank.features/labels``; label < 0 = empty).
      sigma: Gaussian width; default the median of ``rd`` over the batch.
      normalize: scale to mean 1 over the batch.
    Returns: ``[B]`` weights (gradient stopped).
    """
    x = tf.stop_gradient(tf.convert_to_tensor(features))
    if not x.dtype.is_floating:
        x = tf.cast(x, tf.float32)
    y = tf.reshape(tf.cast(labels, tf.int32), [-1])
    b = tf.shape(x)[0]
    if bank_features is not None:
        ref_x = tf.concat([x, tf.stop_gradient(tf.cast(bank_features, x.dtype))], axis=0)
        ref_y = tf.concat([y, tf.reshape(tf.cast(bank_labels, tf.int32), [-1])], axis=0)
    else:
        ref_x, ref_y = x, y
    m = tf.shape(ref_x)[0]

    # reference-vs-reference: k-dist of every reference point
    dist_rr = _pairwise_dist(ref_x, ref_x)
    same_rr = tf.logical_and(tf.equal(ref_y[:, None], ref_y[None, :]), ref_y[:, None] >= 0)
    same_rr = tf.logical_and(same_rr, tf.logical_not(tf.eye(m, dtype=tf.bool)))
    knn_d, knn_idx, knn_count = _knn(dist_rr, same_rr, k)
    last = tf.maximum(knn_count - 1, 0)
    kdist = tf.where(knn_count > 0, tf.gather(knn_d, last, batch_dims=1),
                     tf.zeros_like(knn_d[:, 0]))

    # queries = the first B reference points
    q_d, q_idx, q_count = knn_d[:b], knn_idx[:b], knn_count[:b]
    reach = tf.maximum(tf.gather(kdist, q_idx), q_d)  # [B, k]
    slot = tf.range(tf.shape(q_d)[1])[None, :] < q_count[:, None]
    reach = tf.where(slot, reach, tf.zeros_like(reach))
    has = q_count > 0
    rd = tf.math.divide_no_nan(tf.reduce_sum(reach, axis=1), tf.cast(q_count, x.dtype))

    if sigma is None:
        rd_valid = tf.boolean_mask(rd, has)
        n = tf.size(rd_valid)
        srt = tf.concat([tf.sort(rd_valid), tf.ones([1], x.dtype)], axis=0)  # pad: n may be 0
        lo = tf.gather(srt, tf.maximum((n - 1) // 2, 0))
        hi = tf.gather(srt, tf.maximum(n // 2, 0))
        sig = tf.where(n > 0, 0.5 * (lo + hi), tf.ones([], x.dtype))
    else:
        sig = tf.constant(float(sigma), x.dtype)
    sig = tf.maximum(sig, tf.cast(1e-12, x.dtype))
    w = tf.exp(-tf.square(rd) / (2.0 * tf.square(sig)))
    n_has = tf.reduce_sum(tf.cast(has, x.dtype))
    mean_has = tf.math.divide_no_nan(tf.reduce_sum(tf.where(has, w, tf.zeros_like(w))), n_has)
    neutral = tf.where(n_has > 0, mean_has, tf.ones([], x.dtype))
    w = tf.where(has, w, neutral * tf.ones_like(w))
    if normalize:
        w = w / tf.maximum(tf.reduce_mean(w), tf.cast(1e-12, x.dtype))
    return tf.stop_gradient(w)


@keras.saving.register_keras_serializable(package="fermtl")
class FeatureMemoryBank(keras.layers.Layer):
    """Ring buffer of the ``size`` most recent features and labels (non-trainable variables).

    ``features`` ``[size, dim]``, ``labels`` ``[size]`` int32 (-1 = empty slot),
    ``pointer`` (next write slot).  ``update(features, labels)`` writes a batch
    (gradient stopped; if the batch is larger than the bank only its last
    ``size`` rows are kept).  ``call(features, labels, training=None)``
    returns the bank contents *before* the write and writes when ``training``.
    """

    def __init__(self, size: int, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)
        self.dim = int(dim)
        self.features = self.add_weight(name="features", shape=(self.size, self.dim),
                                        initializer="zeros", trainable=False)
        self.labels = self.add_weight(name="labels", shape=(self.size,), dtype="int32",
                                      initializer=keras.initializers.Constant(-1),
                                      trainable=False)
        self.pointer = self.add_weight(name="pointer", shape=(), dtype="int32",
                                       initializer="zeros", trainable=False)
        self.built = True

    def update(self, features, labels):
        feats = tf.stop_gradient(tf.cast(features, self.features.dtype))
        labs = tf.reshape(tf.cast(labels, tf.int32), [-1])
        n = tf.shape(feats)[0]
        keep = tf.minimum(n, self.size)
        feats, labs = feats[n - keep:], labs[n - keep:]
        ptr = tf.convert_to_tensor(self.pointer)
        idx = tf.math.floormod(ptr + tf.range(keep), self.size)[:, None]
        self.features.assign(tf.tensor_scatter_nd_update(
            tf.convert_to_tensor(self.features), idx, feats))
        self.labels.assign(tf.tensor_scatter_nd_update(
            tf.convert_to_tensor(self.labels), idx, labs))
        self.pointer.assign(tf.math.floormod(ptr + keep, self.size))

    def read(self):
        return tf.convert_to_tensor(self.features), tf.convert_to_tensor(self.labels)

    def call(self, features, labels, training=None):
        bank_x, bank_y = self.read()
        if training:
            with tf.control_dependencies([bank_x, bank_y]):
                self.update(features, labels)
        return bank_x, bank_y

    def get_config(self):
        config = super().get_config()
        config.update(size=self.size, dim=self.dim)
        return config
