"""Centre loss (Eqs 1-5), MD loss (Eqs 6-9) and the Eq 10 dataset-weighted total.

Yang, Li, Cao, "Facial Expression Recognition Based on Multi-dataset Neural
Network", Sec. 3.2.2, with the centre loss of Wen, Zhang, Li, Qiao, "A
Discriminative Feature Learning Approach for Deep Face Recognition" (ECCV
2016).

* Eq 1 (its gradient Eq 3): :func:`center_loss`; :class:`CenterLoss` (Eqs 1-5
  with the centres as a layer's weights).
* Eqs 4-5 and Algorithm 1, line 7, the centre update: :func:`center_update`.
* Eqs 6 / 9, the MD loss: :func:`md_loss`; Eq 7 :func:`md_lambda`; Eq 8
  :func:`md_phi`; Eq 9's ``P`` nearest centres :func:`nearest_other_centers`.
* Eq 10: :func:`multi_dataset_loss`.

Deviations and reading choices: docs/methods.md, section Multi-dataset network.
"""

from __future__ import annotations

from typing import Mapping

import keras
import tensorflow as tf

__all__ = ["center_loss", "center_update", "CenterLoss", "md_phi", "md_lambda",
           "nearest_other_centers", "md_loss", "multi_dataset_loss"]

MD_VARIANTS = ("log_ratio", "margin_hinge")


def _labels(labels):
    """``(labels with -1 -> 0, valid)`` of ``[B]`` / ``[B, 1]`` int labels."""
    y = tf.reshape(tf.cast(labels, tf.int32), [-1])
    valid = y >= 0
    return tf.where(valid, y, tf.zeros_like(y)), valid


def center_loss(features, labels, centers):
    """Eq 1 per sample: ``1/2 ||x_i - c_{y_i}||^2`` (``[B]``; 0 where label < 0).
    The gradient reaches the features only (Eq 3), not the centres."""
    x = tf.convert_to_tensor(features)
    y, valid = _labels(labels)
    c = tf.stop_gradient(tf.gather(tf.cast(centers, x.dtype), y))
    per = 0.5 * tf.reduce_sum(tf.square(x - c), axis=-1)
    return tf.where(valid, per, tf.zeros_like(per))


def center_update(features, labels, centers, alpha: float):
    """Eq 4 with Wen et al.'s sign: the new centres ``c_j - alpha Delta c_j`` with
    ``Delta c_j = sum_i d(y_i, j) (c_j - x_i) / (1 + sum_i d(y_i, j))``
    (labels < 0 are ignored)."""
    c = tf.convert_to_tensor(centers)
    y, valid = _labels(labels)
    x = tf.stop_gradient(tf.cast(features, c.dtype))
    w = tf.cast(valid, c.dtype)
    num = c.shape[0]
    sums = tf.math.unsorted_segment_sum(x * w[:, None], y, num)
    counts = tf.math.unsorted_segment_sum(w, y, num)[:, None]
    delta = (counts * c - sums) / (1.0 + counts)
    return c - alpha * delta


@keras.saving.register_keras_serializable(package="fermtl")
class CenterLoss(keras.layers.Layer):
    """Center loss with the alpha centre update (Wen et al. 2016; Yang et al. Eqs 1-5).

    ``call(features, labels, training=None)`` returns ``L_C`` for the batch
    (:func:`center_loss` summed, ``reduction="sum"``: Eq 1; ``"mean"``: divided
    by the number of labelled samples), computed with the centres *before* the
    update; when ``training`` is true it then applies :func:`center_update`.
    ``labels``: ``[B]`` (or ``[B, 1]``) int class ids; labels < 0 are ignored
    (no loss, no update), which allows mixed batches of datasets.
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

    def update_centers(self, features, labels):
        """Eq 4 (Wen et al.'s sign), :func:`center_update`."""
        self.centers.assign(center_update(features, labels, self.centers, self.alpha))

    def call(self, features, labels, training=None):
        x = tf.convert_to_tensor(features)
        _, valid = _labels(labels)
        loss = tf.reduce_sum(center_loss(x, labels, tf.convert_to_tensor(self.centers)))
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


def md_phi(features, labels, centers):
    """Eq 8 as a variance: ``1/2 mean_i ||x_i - c_{y_i}||^2`` over the labelled
    samples (0 when there is none); gradient stopped."""
    per = center_loss(features, labels, centers)
    _, valid = _labels(labels)
    n = tf.reduce_sum(tf.cast(valid, per.dtype))
    return tf.stop_gradient(tf.math.divide_no_nan(tf.reduce_sum(per), n))


def md_lambda(centers, reduction: str = "mean"):
    """Eq 7: cosine similarity ``c_i . c_j / (||c_i|| ||c_j||)`` summed over the
    ordered pairs ``i != j`` (``"sum"``, as printed) or averaged over them
    (``"mean"``). A zero centre has cosine 0 with every other. No gradient."""
    c = tf.stop_gradient(tf.convert_to_tensor(centers))
    num = int(c.shape[0])
    cn = tf.math.l2_normalize(c, axis=-1)
    cos = tf.matmul(cn, cn, transpose_b=True)
    total = tf.reduce_sum(tf.where(tf.eye(num, dtype=tf.bool), tf.zeros_like(cos), cos))
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / float(max(num * (num - 1), 1))
    raise ValueError(f"md_lambda: reduction must be 'mean' or 'sum', got {reduction!r}")


def nearest_other_centers(centers, p):
    """``[C, P]`` indices of the ``P`` centres nearest (Euclidean) to each centre,
    itself excluded; ``p`` None or > C - 1 gives all C - 1 others (Eq 6)."""
    c = tf.stop_gradient(tf.convert_to_tensor(centers))
    num = int(c.shape[0])
    if num < 2:
        raise ValueError(f"MD loss needs at least 2 centres, got {num}")
    p = num - 1 if p is None else max(1, min(int(p), num - 1))
    cc2 = tf.reduce_sum(tf.square(c[:, None, :] - c[None, :, :]), axis=-1)
    cc2 = tf.where(tf.eye(num, dtype=tf.bool), tf.cast(1e30, c.dtype), cc2)
    return tf.math.top_k(-cc2, k=p)[1]


def md_loss(features, labels, centers, p=None, variant: str = "log_ratio", phi=None,
            hinge: bool = False, lambda_reduction: str = "mean", margin_scale: float = 1.0,
            reduction: str = "none"):
    """MD loss of Yang et al. Eqs 6/9 (``p`` None: Eq 6; else Eq 9), per sample.

    ``variant="log_ratio"`` (Eqs 6/9), per labelled sample::

        L_i = -log [ exp(-d_{i,y_i} / phi - lambda) / sum_{j in N_P(y_i)} exp(-d_{ij} / phi) ]
            = d_{i,y_i} / phi + lambda + log sum_{j in N_P(y_i)} exp(-d_{ij} / phi)

    with ``d_{ij} = ||x_i - c_j||^2``, ``N_P(y)`` the ``P`` centres nearest to
    ``c_y`` (:func:`nearest_other_centers`), ``phi`` Eq 8 (:func:`md_phi`) and
    ``lambda`` Eq 7 (:func:`md_lambda`). ``variant="margin_hinge"``::

        L_i = 1/P sum_{k in N_P(y_i)} max(0, d_{i,y_i} - d_{ik} + lambda_{y_i,k}),
        lambda_{j,k} = margin_scale * phi * (1 + cos(c_j, c_k)) / 2

    with ``phi`` there the mean of ``d_{i,y_i}`` over the labelled samples.

    Args:
      features: ``[B, D]``; labels: ``[B]`` int (< 0: no loss); centers: ``[C, D]``
        (e.g. ``CenterLoss.centers``; no gradient flows to them).
      p: ``P``, the number of nearest other centres (clipped to ``C - 1``).
      variant: ``"log_ratio"`` (the paper) or ``"margin_hinge"`` (fer-mtl's
        earlier loss).
      phi: fixed ``phi``; default Eq 8 on the batch (:func:`md_phi`; for
        ``margin_hinge`` the mean squared distance, as before).
      hinge: ``log_ratio`` only: ``max(0, L_i)``.
      lambda_reduction: Eq 7 ``"mean"`` or ``"sum"`` (:func:`md_lambda`).
      margin_scale: ``margin_hinge`` only.
      reduction: ``"none"`` (``[B]``, 0 where label < 0) or ``"mean"`` over the
        labelled samples.
    """
    if variant not in MD_VARIANTS:
        raise ValueError(f"md_loss: variant must be one of {MD_VARIANTS}, got {variant!r}")
    x = tf.convert_to_tensor(features)
    y, valid = _labels(labels)
    c = tf.stop_gradient(tf.cast(centers, x.dtype))
    nb = tf.gather(nearest_other_centers(c, p), y)                          # [B, P]
    d2_all = tf.reduce_sum(tf.square(x[:, None, :] - c[None, :, :]), axis=-1)  # [B, C]
    d2_own = tf.gather(d2_all, y, batch_dims=1)                               # [B]
    d2_nb = tf.gather(d2_all, nb, batch_dims=1)                               # [B, P]
    w = tf.cast(valid, x.dtype)
    if variant == "log_ratio":
        phi_v = md_phi(x, labels, c) if phi is None else tf.cast(phi, x.dtype)
        phi_v = tf.maximum(phi_v, tf.cast(1e-12, x.dtype))
        lam = tf.cast(md_lambda(c, lambda_reduction), x.dtype)
        per = d2_own / phi_v + lam + tf.reduce_logsumexp(-d2_nb / phi_v, axis=1)
        if hinge:
            per = tf.nn.relu(per)
    else:
        n = tf.reduce_sum(w)
        phi_v = (tf.stop_gradient(tf.math.divide_no_nan(tf.reduce_sum(w * d2_own), n))
                 if phi is None else tf.cast(phi, x.dtype))
        cn = tf.math.l2_normalize(c, axis=-1)
        lam = margin_scale * phi_v * (1.0 + tf.matmul(cn, cn, transpose_b=True)) / 2.0
        lam_nb = tf.gather(tf.gather(lam, y), nb, batch_dims=1)              # [B, P]
        per = tf.reduce_mean(tf.nn.relu(d2_own[:, None] - d2_nb + lam_nb), axis=1)
    per = tf.where(valid, per, tf.zeros_like(per))
    if reduction == "none":
        return per
    if reduction == "mean":
        return tf.math.divide_no_nan(tf.reduce_sum(per), tf.reduce_sum(w))
    raise ValueError(f"md_loss: reduction must be 'none' or 'mean', got {reduction!r}")


def multi_dataset_loss(losses_per_dataset, weights=None):
    """Yang et al. Eq 10, ``L = 1/N sum_{i=1..N} lambda_i L_MDi``, as
    ``L = sum_d w_d L_d`` over the datasets: ``w_d = lambda_d / N`` (the
    multi-dataset presets' ``dataset_weights`` of ``1/N`` each are ``lambda_i = 1``).

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
