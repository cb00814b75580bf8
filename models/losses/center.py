"""Center loss, MD (multi-dataset) loss and the Eq 10 dataset-weighted total.

Seed: Yang et al., multi-dataset facial expression network (Eqs 1-10), with
the center loss of Wen et al., "A Discriminative Feature Learning Approach for
Deep Face Recognition" (ECCV 2016).

Center loss (Eqs 1-5)::

    L_C = 1/2 sum_i ||x_i - c_{y_i}||^2                                   (Eq 1)
    dL_C/dx_i = x_i - c_{y_i}                                             (Eq 2)
    Delta c_j = sum_i d(y_i = j) (c_j - x_i) / (1 + sum_i d(y_i = j))     (Eq 3)
    c_j <- c_j - alpha Delta c_j                                          (Eq 4-5)

The centers are a non-trainable variable updated by the rule above (not by the
optimizer); the loss gradient reaches only the features.

MD loss (Eqs 6-9).  The text gives: an intra-class spread ``phi`` (feature
variance about the centers), a margin ``lambda`` derived from the pairwise
cosine similarity of centers, and a hinge against only the ``P`` nearest
other centers.  Interpretation implemented in :func:`md_loss`::

    phi           = mean_i ||x_i - c_{y_i}||^2                 (batch, gradient stopped)
    lambda_{j,k}  = margin_scale * phi * (1 + cos(c_j, c_k)) / 2
    N_P(j)        = the P centers k != j closest to c_j (Euclidean)
    L_MD = 1/(n P) sum_i sum_{k in N_P(y_i)}
               max(0, ||x_i - c_{y_i}||^2 - ||x_i - c_k||^2 + lambda_{y_i,k})

i.e. every sample must be closer to its own center than to each of the P
nearest competing centers by a margin that grows with how similar (in angle)
the two centers are, in units of the current intra-class variance.  ``n`` is
the number of labelled samples (labels < 0 are ignored).  Centers get no
gradient (they come from :class:`CenterLoss`).
"""

from __future__ import annotations

from typing import Mapping

import keras
import tensorflow as tf

__all__ = ["CenterLoss", "md_loss", "multi_dataset_loss"]


@keras.saving.register_keras_serializable(package="fermtl")
class CenterLoss(keras.layers.Layer):
    """Center loss with the alpha center update (Wen et al. 2016; Yang et al. Eqs 1-5).

    ``call(features, labels, training=None)`` returns ``L_C`` for the batch
    (``reduction="sum"``: ``1/2 sum_i ||x_i - c_{y_i}||^2`` as in Eq 1;
    ``"mean"``: divided by the number of labelled samples), computed with the
    centers *before* the update; when ``training`` is true it then applies
    ``c_j <- c_j - alpha * Delta c_j``.  ``labels``: ``[B]`` (or ``[B, 1]``) int
    class ids; labels < 0 are ignored (no loss, no update), which allows mixed
    batches of datasets.
    """

    def __init__(self, num_classes: int, feat_dim: int, alpha: float = 0.5,
                 reduction: str = "sum", **kwargs):
        super().__init__(**kwargs)
        if reduction not in ("sum", "mean"):
            raise ValueError("reduction must be 'sum' or 'mean'")
        self.num_classes = int(num_classes)
        self.feat_dim = int(feat_dim)
        self.alpha = float(alpha)
        self.reduction = reduction
        self.centers = self.add_weight(name="centers", shape=(self.num_classes, self.feat_dim),
                                       initializer="zeros", trainable=False)
        self.built = True

    @staticmethod
    def _labels(labels):
        y = tf.reshape(tf.cast(labels, tf.int32), [-1])
        valid = y >= 0
        return tf.where(valid, y, tf.zeros_like(y)), valid

    def update_centers(self, features, labels):
        """Eqs 3-5: ``c_j <- c_j - alpha * sum_i d(y_i=j)(c_j - x_i) / (1 + n_j)``."""
        y, valid = self._labels(labels)
        x = tf.stop_gradient(tf.cast(features, self.centers.dtype))
        w = tf.cast(valid, x.dtype)
        sums = tf.math.unsorted_segment_sum(x * w[:, None], y, self.num_classes)
        counts = tf.math.unsorted_segment_sum(w, y, self.num_classes)[:, None]
        c = tf.convert_to_tensor(self.centers)
        delta = (counts * c - sums) / (1.0 + counts)
        self.centers.assign(c - self.alpha * delta)

    def call(self, features, labels, training=None):
        x = tf.convert_to_tensor(features)
        y, valid = self._labels(labels)
        c = tf.stop_gradient(tf.cast(tf.gather(tf.convert_to_tensor(self.centers), y), x.dtype))
        per = 0.5 * tf.reduce_sum(tf.square(x - c), axis=-1)
        per = tf.where(valid, per, tf.zeros_like(per))
        loss = tf.reduce_sum(per)
        if self.reduction == "mean":
            loss = tf.math.divide_no_nan(loss, tf.reduce_sum(tf.cast(valid, loss.dtype)))
        if training:
            with tf.control_dependencies([loss]):
                self.update_centers(x, labels)
        return loss

    def compute_output_shape(self, *args, **kwargs):
        return ()

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, feat_dim=self.feat_dim, alpha=self.alpha,
                      reduction=self.reduction)
        return config


def md_loss(features, labels, centers, num_nearest: int = 2, margin_scale: float = 1.0,
            phi=None):
    """MD loss (Yang et al. Eqs 6-9; exact interpretation in the module docstring).

    Args:
      features: ``[B, D]``; labels: ``[B]`` int (< 0 ignored); centers: ``[C, D]``
        (e.g. ``CenterLoss.centers``; no gradient flows to them).
      num_nearest: ``P``, number of nearest other centers (clipped to ``C - 1``).
      margin_scale: multiplies ``lambda``.
      phi: fixed intra-class variance; default the batch value (gradient stopped).
    """
    x = tf.convert_to_tensor(features)
    y = tf.reshape(tf.cast(labels, tf.int32), [-1])
    valid = y >= 0
    y = tf.where(valid, y, tf.zeros_like(y))
    c = tf.stop_gradient(tf.cast(centers, x.dtype))
    num_classes = c.shape[0]
    p = max(1, min(int(num_nearest), int(num_classes) - 1))
    w = tf.cast(valid, x.dtype)
    n = tf.reduce_sum(w)

    d2_all = tf.reduce_sum(tf.square(x[:, None, :] - c[None, :, :]), axis=-1)  # [B, C]
    d2_own = tf.gather(d2_all, y, batch_dims=1)  # [B]
    if phi is None:
        phi_v = tf.stop_gradient(tf.math.divide_no_nan(tf.reduce_sum(w * d2_own), n))
    else:
        phi_v = tf.cast(phi, x.dtype)

    cn = tf.math.l2_normalize(c, axis=-1)
    cos = tf.matmul(cn, cn, transpose_b=True)  # [C, C]
    lam = margin_scale * phi_v * (1.0 + cos) / 2.0
    cc2 = tf.reduce_sum(tf.square(c[:, None, :] - c[None, :, :]), axis=-1)
    cc2 = tf.where(tf.eye(num_classes, dtype=tf.bool), tf.cast(1e30, x.dtype), cc2)
    _, nearest = tf.math.top_k(-cc2, k=p)  # [C, P] nearest other centers

    nb = tf.gather(nearest, y)  # [B, P]
    d2_nb = tf.gather(d2_all, nb, batch_dims=1)  # [B, P]
    lam_nb = tf.gather(tf.gather(lam, y), nb, batch_dims=1)  # [B, P]
    hinge = tf.nn.relu(d2_own[:, None] - d2_nb + lam_nb) * w[:, None]
    return tf.math.divide_no_nan(tf.reduce_sum(hinge), n * p)


def multi_dataset_loss(losses_per_dataset, weights=None):
    """Yang et al. Eq 10: ``L = sum_d w_d L_d`` over datasets.

    ``losses_per_dataset``: sequence or mapping of scalar losses; ``weights``:
    same structure (default all 1).
    """
    if isinstance(losses_per_dataset, Mapping):
        keys = list(losses_per_dataset)
        losses = [losses_per_dataset[k] for k in keys]
        if weights is None:
            ws = [1.0] * len(keys)
        elif isinstance(weights, Mapping):
            ws = [weights[k] for k in keys]
        else:
            raise TypeError("weights must be a mapping when losses are a mapping")
    else:
        losses = list(losses_per_dataset)
        ws = [1.0] * len(losses) if weights is None else list(weights)
        if len(ws) != len(losses):
            raise ValueError(f"{len(losses)} losses but {len(ws)} weights")
    if not losses:
        return tf.constant(0.0)
    losses = [tf.convert_to_tensor(v) for v in losses]
    dtype = losses[0].dtype
    return tf.add_n([tf.cast(wd, dtype) * tf.cast(ld, dtype) for wd, ld in zip(ws, losses)])
