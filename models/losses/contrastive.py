"""DDMTL contrastive loss (Eqs 5-7) and adaptive reweighting module W_k (Eqs 3-4).

Zheng, Wang, Ji, Zong, Wong, Lai, Lv, "Discriminative deep multi-task
learning for facial expression recognition" (Elsevier, 2020), Sec. 3.2-3.3.

* Eq 6, ``D = ||f^k(x_i) - f^k(x_j)||_2``: :func:`pair_distance`.
* Eqs 5 and 7, ``CL``: :func:`contrastive_loss`; :class:`ContrastiveLoss`
  (Keras loss).
* Eq 3, ``pCON`` of one iteration: :func:`reachability_distance`, neighbours
  in the batch or also in a :class:`FeatureMemoryBank` of past embeddings.
* Eq 4, ``W_k = G(sum_t pCON_t)``: :class:`PConStore` (the per-sample sum over
  iterations, slots from :func:`image_keys`) and :func:`gaussian_scaling`
  (``G``); :func:`reachability_weights` is Eq 4 with ``T = 1``.

Deviations and reading choices: docs/methods.md, section DDMTL.
"""

from __future__ import annotations

import keras
import tensorflow as tf

__all__ = ["pair_distance", "contrastive_loss", "ContrastiveLoss", "reachability_distance",
           "gaussian_scaling", "reachability_weights", "image_keys", "PConStore",
           "FeatureMemoryBank"]

_BIG = 1e30


def pair_distance(emb_i, emb_j):
    """Eq 6: ``D = ||emb_i - emb_j||_2`` per row (``[P, D] -> [P]``), with a finite
    gradient at ``D = 0`` (the square root is taken of ``max(D^2, 1e-12)``)."""
    emb_i = tf.convert_to_tensor(emb_i)
    emb_j = tf.cast(emb_j, emb_i.dtype)
    d2 = tf.reduce_sum(tf.square(emb_i - emb_j), axis=-1)
    return tf.sqrt(tf.maximum(d2, tf.cast(1e-12, d2.dtype)))


def contrastive_loss(d, dissimilar, margin: float = 1.0):
    """Eq 7 per pair: ``0.5 (1 - Y) D^2 + 0.5 Y max(0, m - D)``.

    ``d``: ``[P]`` distances (Eq 6, :func:`pair_distance`); ``dissimilar``: ``[P]``
    ``Y`` of Eq 5 (1 = different classes, 0 = same class); ``margin``: ``m > 0``.
    """
    d = tf.convert_to_tensor(d)
    if not d.dtype.is_floating:
        d = tf.cast(d, tf.float32)
    if float(margin) <= 0:
        raise ValueError(f"contrastive_loss: margin must be > 0 (Eq 7), got {margin}")
    y = tf.reshape(tf.cast(dissimilar, d.dtype), tf.shape(d))
    return 0.5 * (1.0 - y) * tf.square(d) + 0.5 * y * tf.nn.relu(margin - d)


@keras.saving.register_keras_serializable(package="fermtl")
class ContrastiveLoss(keras.losses.Loss):
    """Keras loss for DDMTL Eq 7 (calls :func:`contrastive_loss`).

    ``y_pred = concat([emb_i, emb_j], axis=-1)`` (``[P, 2D]``), ``y_true`` the
    ``[P]`` or ``[P, 1]`` dissimilarity ``Y`` of Eq 5 (1 = different classes).
    ``call`` returns the per-pair loss; the default ``"sum_over_batch_size"``
    reduction averages it over the pairs.
    """

    def __init__(self, margin: float = 1.0, name: str = "contrastive_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.margin = float(margin)

    def call(self, y_true, y_pred):
        y_pred = tf.convert_to_tensor(y_pred)
        dim = y_pred.shape[-1] // 2
        d = pair_distance(y_pred[..., :dim], y_pred[..., dim:])
        return contrastive_loss(d, tf.reshape(y_true, tf.shape(d)), self.margin)

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


def reachability_distance(features, labels, k: int = 5, bank_features=None, bank_labels=None):
    """``pCON_t`` of one iteration (Eq 3 read as LOF's mean reachability
    distance, Breunig et al. 2000)::

        pCON_t(x_i) = 1/|N_k(x_i)| sum_{x_j in N_k(x_i)} max(k-dist(x_j), d(x_i, x_j))

    ``N_k(x)``: the ``min(k, n)`` nearest points of ``x``'s class among the
    reference points (the batch, plus the bank when given), never ``x`` itself;
    ``k-dist(x)``: the distance to the farthest of them; ``d`` Euclidean.

    Args:
      features: ``[B, D]`` batch features; labels: ``[B]`` int class ids (< 0 =
        no class: never a neighbour, no value).
      k: neighbourhood size.
      bank_features / bank_labels: optional ``[M, D]`` / ``[M]`` extra reference
        points (``FeatureMemoryBank.read()``; label < 0 = empty slot).
    Returns: ``(pcon [B], has [B] bool)``; ``has`` is false (and ``pcon`` 0) for
    samples without a same-class neighbour. Gradient stopped.
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
    return tf.stop_gradient(rd), has


def gaussian_scaling(values, has, sigma: float | None = None, normalize: bool = True):
    """``G`` of Eq 4: ``w = exp(-a^2 / (2 sigma^2))`` of ``values`` ``a`` ``[B]``.

    ``sigma`` defaults to the median of ``a`` over the entries where ``has``;
    entries without ``has`` get the mean weight of the others (1 when there is
    none); ``normalize`` divides by the batch mean. Gradient stopped.
    """
    a = tf.stop_gradient(tf.convert_to_tensor(values))
    if not a.dtype.is_floating:
        a = tf.cast(a, tf.float32)
    has = tf.reshape(tf.cast(has, tf.bool), tf.shape(a))
    if sigma is None:
        a_valid = tf.boolean_mask(a, has)
        n = tf.size(a_valid)
        srt = tf.concat([tf.sort(a_valid), tf.ones([1], a.dtype)], axis=0)  # pad: n may be 0
        lo = tf.gather(srt, tf.maximum((n - 1) // 2, 0))
        hi = tf.gather(srt, tf.maximum(n // 2, 0))
        sig = tf.where(n > 0, 0.5 * (lo + hi), tf.ones([], a.dtype))
    else:
        sig = tf.constant(float(sigma), a.dtype)
    sig = tf.maximum(sig, tf.cast(1e-12, a.dtype))
    w = tf.exp(-tf.square(a) / (2.0 * tf.square(sig)))
    n_has = tf.reduce_sum(tf.cast(has, a.dtype))
    mean_has = tf.math.divide_no_nan(tf.reduce_sum(tf.where(has, w, tf.zeros_like(w))), n_has)
    neutral = tf.where(n_has > 0, mean_has, tf.ones([], a.dtype))
    w = tf.where(has, w, neutral * tf.ones_like(w))
    if normalize:
        w = w / tf.maximum(tf.reduce_mean(w), tf.cast(1e-12, a.dtype))
    return tf.stop_gradient(w)


def reachability_weights(features, labels, k: int = 5, bank_features=None, bank_labels=None,
                         sigma: float | None = None, normalize: bool = True):
    """``W_k`` of one iteration only (Eq 4 with ``T = 1``):
    ``gaussian_scaling(reachability_distance(...))``. Returns ``[B]`` weights."""
    pcon, has = reachability_distance(features, labels, k, bank_features, bank_labels)
    return gaussian_scaling(pcon, has, sigma, normalize)


def image_keys(images, size: int):
    """Slot of each image in a :class:`PConStore` of ``size`` slots: an exact hash
    of the image's float32 bits (the same image gives the same slot on every
    device; two images share a slot with probability ~``1 / size``).

    ``images``: ``[B, ...]`` float. Returns ``[B]`` int64 in ``[0, size)``.
    """
    x = tf.convert_to_tensor(images)
    flat = tf.reshape(tf.cast(x, tf.float32), [tf.shape(x)[0], -1])
    # drop the 8 lowest mantissa bits so that sum(bits * mult) stays far below 2**63
    bits = tf.bitwise.right_shift(tf.bitcast(flat, tf.int32), 8)
    # one pseudo-random multiplier in [1, 2**20) per pixel position (Knuth's hash),
    # computed in the graph so that the image size may be dynamic
    idx = tf.range(tf.shape(flat, out_type=tf.int64)[1], dtype=tf.int64)
    mult = (idx * 2654435761 + 12345) % (2 ** 20 - 1) + 1
    h = tf.reduce_sum(tf.cast(bits, tf.int64) * mult[None, :], axis=1)
    return tf.math.floormod(h, int(size))


@keras.saving.register_keras_serializable(package="fermtl")
class PConStore(keras.layers.Layer):
    """Per-sample running sum of ``pCON_t`` over iterations (DDMTL Eq 4)::

        W_k(x_i) = G( sum_{t=1..T_i} pCON_t(x_i) / T_i )

    ``T_i`` = the number of training steps whose batch held ``x_i`` and gave it
    a value (one per pass over the training set); ``G``: :func:`gaussian_scaling`.

    ``sums`` ``[size]`` and ``counts`` ``[size]`` (non-trainable variables): slot
    ``s`` holds ``sum_t pCON_t`` and ``T`` of the sample whose image hashes to
    ``s`` (:func:`image_keys`). ``accumulate(slots, pcon, has, write)`` returns
    ``(mean, known)`` of each batch sample *including* the current value:
    ``mean = (sums[s] + pcon) / (counts[s] + 1)`` where ``has``, else the stored
    mean; ``known`` = the sample has a value. With ``write`` the current values
    are added to the store (only entries with ``has``). Saved with the training
    model's weights; two samples in one slot share their sum.
    """

    def __init__(self, size: int, **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)
        if self.size < 1:
            raise ValueError(f"PConStore: size must be >= 1, got {size}")
        self.sums = self.add_weight(name="sums", shape=(self.size,), initializer="zeros",
                                    trainable=False)
        self.counts = self.add_weight(name="counts", shape=(self.size,), initializer="zeros",
                                      trainable=False)
        self.built = True

    def accumulate(self, slots, pcon, has, write: bool = False):
        slots = tf.reshape(tf.cast(slots, tf.int64), [-1])
        pcon = tf.reshape(tf.cast(tf.stop_gradient(pcon), self.sums.dtype), [-1])
        has = tf.reshape(tf.cast(has, tf.bool), [-1])
        add = tf.where(has, pcon, tf.zeros_like(pcon))
        one = tf.cast(has, pcon.dtype)
        s = tf.gather(tf.convert_to_tensor(self.sums), slots) + add
        t = tf.gather(tf.convert_to_tensor(self.counts), slots) + one
        mean = tf.math.divide_no_nan(s, t)
        if write:
            with tf.control_dependencies([mean]):
                self.sums.assign_add(tf.math.unsorted_segment_sum(add, slots, self.size))
                self.counts.assign_add(tf.math.unsorted_segment_sum(one, slots, self.size))
        return mean, t > 0

    def call(self, slots, pcon, has, training=None):
        return self.accumulate(slots, pcon, has, write=bool(training))

    def get_config(self):
        config = super().get_config()
        config.update(size=self.size)
        return config


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
