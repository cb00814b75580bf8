"""Tensor trace norm regularisation for deep multi-task learning.

Seed paper: Hu et al., "Deep Multi-Task Learning to Recognise Subtle Facial
Expressions of Mental States" (ECCV 2018), Sec. 2.2 (tensor trace norms,
Eqs 1-3, and the ``U V^T`` sub-gradient),
following Yang & Hospedales, "Trace Norm Regularised Deep Multi-Task Learning"
(ICLR-W 2017).  For one layer, the kernels of the T task networks (identical
shape ``d_1 x ... x d_{N-1}``) are stacked on a new LAST axis into the N-way
tensor ``W`` (``d_N = T``) and one of three tensor trace norms is penalised:

* Eq 1, Last Axis Flattening (LAF):  ``||W||_* = gamma ||W_(N)||_*``
* Eq 2, Tucker:  ``||W||_* = sum_{i=1}^{N} gamma_i ||W_(i)||_*``
* Eq 3, Tensor Train (TT):  ``||W||_* = sum_{i=1}^{N-1} gamma_i ||W_[i]||_*``

where ``W_(i)`` is the mode-i flattening (``d_i x prod_{j!=i} d_j``, see
:func:`unfold`) and ``W_[i]`` the TT flattening (``prod_{j<=i} d_j x
prod_{j>i} d_j``, see :func:`tt_unfold`).  ``||.||_*`` is the matrix trace
(nuclear) norm, the sum of singular values.

Gradient.  The sub-gradient of ``||M||_*`` used here is ``U V^T`` of the reduced
SVD ``M = U S V^T`` (Watson 1992), implemented with ``tf.custom_gradient`` so
that TensorFlow never differentiates through the SVD (whose gradient is
unstable for repeated singular values).  ``"exact"``/``"randomized"`` take it
from the SVD factors; ``"gram"`` forms it as ``G^{-1/2} M`` with the inverse
square root of the small Gram matrix ``G`` taken from its eigen-decomposition
(pseudo-inverse on the numerically-zero singular values).

SVD back-ends (argument ``svd``):

* ``"exact"``: reduced SVD.  For very rectangular matrices (one side at least
  twice the other) a QR of the long side is taken first and the SVD of the
  small triangular factor is computed (the standard LAPACK strategy; exact).
* ``"randomized"``: Halko, Martinsson & Tropp (2011), Alg. 4.4 + 5.1: Gaussian
  test matrix with ``rank + oversample`` columns, ``power_iters`` QR-stabilised
  power iterations, QR, SVD of the small projected matrix, truncation to
  ``rank``.  When ``rank + oversample >= min(m, n)`` the sketch would span the
  full range of ``M`` (``Q = I``), so no random projection is drawn and the
  remaining "small" SVD of ``B = M`` is taken through the Gram matrix of its
  short side (method ``"gram"`` below) -- this is always the case for LAF with
  few tasks, whose unfolding is ``T x D``; the result is then exact up to the
  Gram method's rounding.
* ``"gram"``: exact nuclear norm from the eigen-decomposition of the small
  Gram matrix ``G = M M^T`` (or ``M^T M``; size ``min(m,n)^2``):
  ``sigma_i = sqrt(lambda_i)`` and ``U V^T = Q diag(1/sigma) Q^T M`` (this is
  exactly the reduced-SVD ``U V^T``, restricted to non-zero singular values).
  Cheap when one side is small (LAF: a ``T x T`` eigenproblem and ``T x D``
  dot products / axpys instead of a Householder QR of a ``D x T`` matrix; on
  the 36 conv groups of two ResNet-34s, value + gradient take ~75 ms vs
  ~2.4 s for ``"exact"`` on a loaded 2-core CPU).  The Gram matrix is formed in the input dtype (eigen-decomposed in
  float64), so it squares the condition number: singular values carry an
  absolute error of about ``sqrt(eps) * sigma_max`` (float32: ~3e-4) and those
  below ``10 sqrt(eps) sigma_max`` contribute their value but get a zero
  gradient (a valid sub-gradient).  :func:`laf_trace_norm` applies the same
  method to a list of task kernels without stacking them.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf

__all__ = [
    "matrix_trace_norm",
    "laf_trace_norm",
    "unfold",
    "tt_unfold",
    "tensor_trace_norm",
    "TraceNormRegularizer",
]

SVD_METHODS = ("exact", "randomized", "gram")
KINDS = ("laf", "tucker", "tt")


# --------------------------------------------------------------------------
# matrix level
# --------------------------------------------------------------------------
def _static_shape(m: tf.Tensor) -> tuple[int, int] | None:
    shape = m.shape
    if shape.rank != 2 or shape[0] is None or shape[1] is None:
        return None
    return int(shape[0]), int(shape[1])


def _exact_svd(m: tf.Tensor):
    """Reduced SVD ``m = u diag(s) v^T``; QR first when ``m`` is very rectangular."""
    shape = _static_shape(m)
    if shape is not None:
        a, b = shape
        if a >= 2 * b:  # tall: m = q r, r is b x b
            q, r = tf.linalg.qr(m)
            s, ur, v = tf.linalg.svd(r)
            return s, tf.matmul(q, ur), v
        if b >= 2 * a:  # wide: m^T = q r  ->  m = r^T q^T
            q, r = tf.linalg.qr(tf.transpose(m))
            s, ur, vr = tf.linalg.svd(tf.transpose(r))
            return s, ur, tf.matmul(q, vr)
    return tf.linalg.svd(m, full_matrices=False)


def _randomized_svd(m, rank, oversample, power_iters, seed):
    a, b = _static_shape(m) or (None, None)
    if a is None:
        raise ValueError("randomized SVD needs a matrix with a static shape")
    small = min(a, b)
    k = small if rank is None else min(int(rank), small)
    sketch = min(k + int(oversample), small)
    if sketch >= small:
        return None  # full range: caller uses the exact small-side (Gram) factorisation
    omega = tf.random.stateless_normal((b, sketch), seed=[int(seed), 0x5EED], dtype=m.dtype)
    q, _ = tf.linalg.qr(tf.matmul(m, omega))  # a x l range basis (Halko Alg 4.1)
    for _ in range(int(power_iters)):  # Halko Alg 4.4 (subspace iteration)
        z, _ = tf.linalg.qr(tf.matmul(m, q, transpose_a=True))
        q, _ = tf.linalg.qr(tf.matmul(m, z))
    bmat = tf.matmul(q, m, transpose_a=True)  # l x b  (Halko Alg 5.1)
    s, ub, v = _exact_svd(bmat)
    u = tf.matmul(q, ub)
    return s[:k], u[:, :k], v[:, :k]


def _gram_eig(g, dtype, rank):
    """From a Gram matrix ``G = M M^T``: singular values of ``M`` and ``A = Q diag(1/sigma) Q^T``.

    ``U V^T = A M`` (rows of ``M`` indexed like ``G``).  Singular values below
    ``10 sqrt(eps) sigma_max`` (``eps`` of ``dtype``: the Gram matrix squares the
    condition number) are kept in the value but get no gradient.
    """
    e, q = tf.linalg.eigh(tf.cast(g, tf.float64))  # ascending
    e = tf.reverse(e, [0])
    q = tf.reverse(q, [1])
    s = tf.sqrt(tf.maximum(e, 0.0))
    if rank is not None:
        s, q = s[: int(rank)], q[:, : int(rank)]
    eps = float(np.finfo(tf.as_dtype(dtype).as_numpy_dtype).eps)
    tol = tf.reduce_max(s) * math.sqrt(eps) * 10.0
    inv = tf.where(s > tol, 1.0 / tf.where(s > tol, s, 1.0), 0.0)
    a = tf.matmul(q * inv, q, transpose_b=True)
    return tf.cast(s, dtype), tf.cast(a, dtype)


def _gram_factor(m, rank):
    """Return (singular values, U V^T) via the Gram matrix of the short side of ``m``."""
    shape = _static_shape(m)
    wide = shape is None or shape[0] <= shape[1]
    if wide:  # G = M M^T, U V^T = A M
        s, a = _gram_eig(tf.matmul(m, m, transpose_b=True), m.dtype, rank)
        return s, tf.matmul(a, m)
    # G = M^T M (= V S^2 V^T), U V^T = M A
    s, a = _gram_eig(tf.matmul(m, m, transpose_a=True), m.dtype, rank)
    return s, tf.matmul(m, a)


def matrix_trace_norm(m, svd: str = "exact", rank: int | None = None, oversample: int = 10,
                      power_iters: int = 2, seed: int = 0) -> tf.Tensor:
    """Matrix trace (nuclear) norm ``||M||_* = sum_i sigma_i(M)``.

    The building block of Hu et al. Eqs 1-3.  Gradient (``tf.custom_gradient``):
    ``d||M||_*/dM = U V^T`` of the reduced SVD (top-``rank`` factors when
    ``rank`` is given, in which case the value is the sum of the ``rank``
    largest singular values, i.e. the Ky Fan norm).

    Args:
      m: 2-D float tensor (static shape required for ``"randomized"``).
      svd: ``"exact"``, ``"randomized"`` (Halko et al. 2011) or ``"gram"``
        (exact, eigen-decomposition of the ``min(m,n)``-sized Gram matrix).
      rank: number of singular values kept (default: all).
      oversample: extra sketch columns for ``"randomized"``.
      power_iters: power (subspace) iterations for ``"randomized"``.
      seed: seed of the (stateless, hence deterministic) Gaussian test matrix.
    """
    if svd not in SVD_METHODS:
        raise ValueError(f"svd must be one of {SVD_METHODS}, got {svd!r}")
    m = tf.convert_to_tensor(m)
    if m.shape.rank != 2:
        raise ValueError(f"matrix_trace_norm expects a 2-D tensor, got shape {m.shape}")

    @tf.custom_gradient
    def _nuclear(x):
        if svd == "gram":
            s, uvt = _gram_factor(x, rank)
        else:
            if svd == "exact":
                s, u, v = _exact_svd(x)
                if rank is not None:
                    s, u, v = s[: int(rank)], u[:, : int(rank)], v[:, : int(rank)]
                uvt = tf.matmul(u, v, transpose_b=True)
            else:
                out = _randomized_svd(x, rank, oversample, power_iters, seed)
                if out is None:
                    s, uvt = _gram_factor(x, rank)
                else:
                    s, u, v = out
                    uvt = tf.matmul(u, v, transpose_b=True)
        value = tf.reduce_sum(s)

        def grad(dy):
            return tf.cast(dy, x.dtype) * uvt

        return value, grad

    return _nuclear(m)


# --------------------------------------------------------------------------
# tensor level
# --------------------------------------------------------------------------
def unfold(tensor, axis: int) -> tf.Tensor:
    """Mode-``axis`` flattening ``W_(i)``: shape ``(d_i, prod_{j != i} d_j)``.

    Rows are indexed by mode ``i``; columns by the remaining modes in their
    original (C) order.  (Kolda & Bader order the columns differently; the
    column order does not change singular values.)
    """
    t = tf.convert_to_tensor(tensor)
    n = t.shape.rank
    axis = axis % n
    if axis != 0:
        perm = [axis] + [j for j in range(n) if j != axis]
        t = tf.transpose(t, perm)
    return tf.reshape(t, [t.shape[0] if t.shape[0] is not None else tf.shape(t)[0], -1])


def tt_unfold(tensor, i: int) -> tf.Tensor:
    """Tensor-Train flattening ``W_[i]``: ``(prod_{j<=i} d_j, prod_{j>i} d_j)``, 1 <= i <= N-1."""
    t = tf.convert_to_tensor(tensor)
    n = t.shape.rank
    if not 1 <= i <= n - 1:
        raise ValueError(f"tt_unfold index must be in [1, {n - 1}], got {i}")
    rows = int(np.prod(t.shape[:i]))
    return tf.reshape(t, [rows, -1])


def _resolve_gammas(gammas, count):
    if gammas is None:
        return [1.0 / count] * count
    gammas = [float(g) for g in gammas]
    if len(gammas) != count:
        raise ValueError(f"expected {count} gammas, got {len(gammas)}")
    return gammas


def tensor_trace_norm(stacked, kind: str = "laf", gammas: Sequence[float] | None = None,
                      svd: str = "exact", rank: int | None = None, oversample: int = 10,
                      power_iters: int = 2, seed: int = 0) -> tf.Tensor:
    """Tensor trace norm of the task-stacked kernels ``W`` (tasks on the LAST axis).

    * ``kind="laf"`` (Hu et al. Eq 1): ``gamma * ||W_(N)||_*``, ``gamma`` defaults
      to 1.  Computed on ``reshape(W, [-1, T])`` = ``W_(N)^T`` up to a column
      permutation, which has the same singular values and needs no transpose.
    * ``kind="tucker"`` (Eq 2): ``sum_{i=1}^{N} gamma_i ||W_(i)||_*``,
      default ``gamma_i = 1/N``.
    * ``kind="tt"`` (Eq 3): ``sum_{i=1}^{N-1} gamma_i ||W_[i]||_*``,
      default ``gamma_i = 1/(N-1)``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    w = tf.convert_to_tensor(stacked)
    n = w.shape.rank
    if n is None or n < 2:
        raise ValueError("stacked tensor must have rank >= 2 (tasks on the last axis)")
    kw = dict(svd=svd, rank=rank, oversample=oversample, power_iters=power_iters, seed=seed)
    if kind == "laf":
        (g,) = _resolve_gammas(gammas, 1) if gammas is not None else [1.0]
        t = w.shape[-1]
        return g * matrix_trace_norm(tf.reshape(w, [-1, t]), **kw)
    if kind == "tucker":
        gs = _resolve_gammas(gammas, n)
        return tf.add_n([g * matrix_trace_norm(unfold(w, i), **kw) for i, g in enumerate(gs)])
    gs = _resolve_gammas(gammas, n - 1)
    return tf.add_n([g * matrix_trace_norm(tt_unfold(w, i + 1), **kw) for i, g in enumerate(gs)])


def _uses_gram(svd, rank, oversample, tasks):
    if svd == "gram":
        return True
    if svd == "randomized":  # full-range sketch -> exact small-side (Gram) path
        k = tasks if rank is None else min(int(rank), tasks)
        return k + int(oversample) >= tasks
    return False


def laf_trace_norm(kernels, gamma: float = 1.0, svd: str = "gram", rank: int | None = None,
                   oversample: int = 10, power_iters: int = 2, seed: int = 0) -> tf.Tensor:
    """LAF norm (Hu et al. Eq 1) ``gamma ||W_(N)||_*`` of a list of T same-shape task kernels.

    Equal to ``tensor_trace_norm(tf.stack(kernels, -1), "laf", ...)``.  With
    ``svd="gram"`` (or ``"randomized"`` whose sketch covers all T rows) the
    kernels are never stacked: the T x T Gram matrix ``G_st = <W_s, W_t>`` is
    built from T(T+1)/2 dot products, ``sigma = sqrt(eig(G))`` and the
    gradient w.r.t. ``W_t`` is row t of ``U V^T = A W_(N)``, i.e.
    ``sum_s A_ts W_s`` with ``A = Q diag(1/sigma) Q^T`` (see ``"gram"`` in the
    module docstring for its accuracy).  Otherwise falls back to stacking.
    """
    ks = [tf.convert_to_tensor(k) for k in kernels]
    t = len(ks)
    if t == 0:
        raise ValueError("laf_trace_norm needs at least one kernel")
    if not _uses_gram(svd, rank, oversample, t):
        return tensor_trace_norm(tf.stack(ks, axis=-1), kind="laf", gammas=[gamma], svd=svd,
                                 rank=rank, oversample=oversample, power_iters=power_iters,
                                 seed=seed)
    shape = ks[0].shape
    for k in ks[1:]:
        if k.shape != shape:
            raise ValueError(f"task kernels must share a shape, got {shape} and {k.shape}")

    @tf.custom_gradient
    def _laf(*xs):
        flat = [tf.reshape(x, [1, -1]) for x in xs]
        entries = {}
        for i in range(t):
            for j in range(i, t):
                entries[i, j] = tf.reshape(tf.matmul(flat[i], flat[j], transpose_b=True), [])
        g = tf.stack([tf.stack([entries[min(i, j), max(i, j)] for j in range(t)])
                      for i in range(t)])
        s, a = _gram_eig(g, xs[0].dtype, rank)
        value = tf.reduce_sum(s)

        def grad(dy):
            c = tf.cast(dy, a.dtype) * a
            return [tf.add_n([c[i, j] * xs[j] for j in range(t)]) if t > 1 else c[0, 0] * xs[0]
                    for i in range(t)]

        return value, grad

    return gamma * _laf(*ks)


def _kernel_of(item):
    if isinstance(item, keras.layers.Layer):
        if not hasattr(item, "kernel"):
            raise ValueError(f"layer {item.name!r} has no `kernel`")
        return item.kernel
    return item


@keras.saving.register_keras_serializable(package="fermtl")
class TraceNormRegularizer:
    """``strength * sum_groups tensor_trace_norm(stack(group, axis=-1))`` (Hu et al. Eqs 1-3).

    ``groups`` is a list of lists: each inner list holds the same layer of each
    of the T task networks (Keras layers with a ``kernel`` or kernels/variables
    of identical shape).

    Usage::

        reg = TraceNormRegularizer(1e-3, kind="laf", svd="randomized")
        loss = task_losses + reg(groups)        # custom train_step / GradientTape
        reg.add_to_model(model, groups)          # or: let model.fit() add it

    Keras 3 rejects ``model.add_loss(callable)`` outside ``call()``, so
    :meth:`add_to_model` attaches a ``keras.regularizers.Regularizer`` to the
    first kernel of every group (chained with any regularizer already there).
    Keras collects it in ``model.losses`` inside the training tape, so the
    penalty and its gradient w.r.t. *all* kernels of the group are included by
    ``model.fit`` (and, like any weight regularizer, in ``evaluate``'s total
    loss).  This attachment is not serialized: call ``add_to_model`` again
    after loading a model.

    With ``kind="laf"`` and ``svd="gram"``/``"randomized"`` (T <= rank +
    oversample, always true for a handful of tasks) the penalty uses
    :func:`laf_trace_norm` on the kernel list (no stacking; exact via the
    T x T Gram matrix) -- ~30x cheaper than the stacked QR/SVD on ResNet-34.
    """

    def __init__(self, strength: float, kind: str = "laf", svd: str = "exact",
                 gammas: Sequence[float] | None = None, rank: int | None = None,
                 oversample: int = 10, power_iters: int = 2, seed: int = 0):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if svd not in SVD_METHODS:
            raise ValueError(f"svd must be one of {SVD_METHODS}, got {svd!r}")
        self.strength = float(strength)
        self.kind = kind
        self.svd = svd
        self.gammas = None if gammas is None else [float(g) for g in gammas]
        self.rank = rank
        self.oversample = int(oversample)
        self.power_iters = int(power_iters)
        self.seed = int(seed)

    def _norm_kwargs(self):
        return dict(kind=self.kind, gammas=self.gammas, svd=self.svd, rank=self.rank,
                    oversample=self.oversample, power_iters=self.power_iters, seed=self.seed)

    def group_norm(self, kernels: Iterable) -> tf.Tensor:
        """Unscaled tensor trace norm of one group of T same-shape kernels."""
        ks = [tf.convert_to_tensor(_kernel_of(k)) for k in kernels]
        if self.kind == "laf":
            gamma = 1.0 if self.gammas is None else self.gammas[0]
            return laf_trace_norm(ks, gamma=gamma, svd=self.svd, rank=self.rank,
                                  oversample=self.oversample, power_iters=self.power_iters,
                                  seed=self.seed)
        return tensor_trace_norm(tf.stack(ks, axis=-1), **self._norm_kwargs())

    def __call__(self, groups) -> tf.Tensor:
        groups = list(groups)
        if not groups:
            return tf.constant(0.0)
        return self.strength * tf.add_n([self.group_norm(g) for g in groups])

    def penalty(self, groups) -> tf.Tensor:
        """Alias of ``__call__``: the scalar ``strength * sum_groups ||W_g||_*``."""
        return self(groups)

    def add_to_model(self, model: keras.Model, groups) -> None:
        """Make ``model.fit`` add ``self(groups)`` to the loss (see class docstring)."""
        for group in groups:
            kernels = [_kernel_of(k) for k in group]
            if len(kernels) < 2:
                raise ValueError("each group needs the kernels of at least two tasks")
            first = kernels[0]
            if not isinstance(first, keras.Variable):
                raise TypeError("add_to_model needs Keras layers or Keras variables")
            if not any(first is w for w in model.trainable_weights):
                raise ValueError(f"kernel {first.path} is not a trainable weight of the model")
            first.regularizer = _GroupTraceNormPenalty(self, kernels[1:], first.regularizer)

    def get_config(self) -> dict:
        return dict(strength=self.strength, kind=self.kind, svd=self.svd, gammas=self.gammas,
                    rank=self.rank, oversample=self.oversample, power_iters=self.power_iters,
                    seed=self.seed)

    @classmethod
    def from_config(cls, config: dict) -> "TraceNormRegularizer":
        return cls(**config)


class _GroupTraceNormPenalty(keras.regularizers.Regularizer):
    """Per-variable Keras regularizer that evaluates one group's trace-norm penalty.

    Attached to the group's first kernel; ``x`` is that kernel's current value
    and the others are read directly, so gradients reach all of them.
    """

    def __init__(self, owner: TraceNormRegularizer, others, previous=None):
        self.owner = owner
        self.others = list(others)
        self.previous = previous

    def __call__(self, x):
        value = self.owner.strength * self.owner.group_norm([x] + self.others)
        if self.previous is not None:
            value = value + self.previous(x)
        return value

    def get_config(self):  # pragma: no cover - never serialized (see add_to_model)
        return {"owner": self.owner.get_config()}
