"""Tensor trace norms of Hu et al., "Deep Multi-Task Learning to Recognise Subtle Facial
Expressions of Mental States" (ECCV 2018), Sec. 2.2, written from the paper:

* Eq 1 (LAF): ``||W||_* = gamma ||W_(N)||_*``
* Eq 2 (Tucker): ``||W||_* = sum_{i=1}^{N} gamma_i ||W_(i)||_*``
* Eq 3 (TT): ``||W||_* = sum_{i=1}^{N-1} gamma_i ||W_[i]||_*``

with ``W_(i) := reshape(permute(W, [i, 1, ..., i-1, i+1, ..., N]), [D_i, prod_{j!=i} D_j])``
(mode-i flattening), ``W_[i] = reshape(W, [D_1 D_2 ... D_i, D_{i+1} ... D_N])`` and
``||X||_* = sum_i sigma_i`` (the tasks index the last axis, ``D_N = T``); the
sub-gradient of Sec. 2.2, "Optimisation": ``d||W||_*/dW = U_* V_*^T`` of the
truncated SVD ``W = U_* Sigma_* V_*^T``. Each is checked on random tensors
against NumPy and on a hand-computed case; then the randomized SVD and training.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.layers import (
    TraceNormRegularizer,
    laf_trace_norm,
    matrix_trace_norm,
    tensor_trace_norm,
    tt_unfold,
    unfold,
)


def nuc(m):
    return np.linalg.svd(m, compute_uv=False).sum()


def np_unfold(w, i):
    """``W_(i) = reshape(permute(W, [i, 1, .., i-1, i+1, .., N]), [D_i, prod_{j!=i} D_j])``."""
    return np.moveaxis(w, i, 0).reshape(w.shape[i], -1)


def np_tensor_norm(w, kind, gammas=None):
    """Eq 1 ``gamma ||W_(N)||_*``, Eq 2 ``sum_{i=1}^{N} gamma_i ||W_(i)||_*``, Eq 3
    ``sum_{i=1}^{N-1} gamma_i ||W_[i]||_*`` (gamma not given by the paper: 1, 1/N, 1/(N-1))."""
    n = w.ndim
    if kind == "laf":
        return (1.0 if gammas is None else gammas[0]) * nuc(np_unfold(w, n - 1))
    if kind == "tucker":
        g = gammas or [1.0 / n] * n
        return sum(g[i] * nuc(np_unfold(w, i)) for i in range(n))
    g = gammas or [1.0 / (n - 1)] * (n - 1)
    return sum(g[i - 1] * nuc(w.reshape(int(np.prod(w.shape[:i])), -1)) for i in range(1, n))


def test_unfoldings_match_numpy():
    w = np.random.default_rng(0).normal(size=(2, 3, 4, 5))
    for i in range(4):
        np.testing.assert_array_equal(unfold(w, i).numpy(), np_unfold(w, i))
    np.testing.assert_array_equal(unfold(w, -1).numpy(), np_unfold(w, 3))
    for i in range(1, 4):
        np.testing.assert_array_equal(tt_unfold(w, i).numpy(),
                                      w.reshape(int(np.prod(w.shape[:i])), -1))
    with pytest.raises(ValueError):
        tt_unfold(w, 4)


@pytest.mark.parametrize("svd", ["exact", "gram", "randomized"])
@pytest.mark.parametrize("shape", [(6, 9), (20, 3), (4, 30)])
def test_matrix_trace_norm_value_and_uvt_gradient(svd, shape):
    m = np.random.default_rng(sum(shape)).normal(size=shape)
    x = tf.constant(m)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = matrix_trace_norm(x, svd=svd)
    grad = tape.gradient(value, x).numpy()
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    np.testing.assert_allclose(value.numpy(), s.sum(), rtol=1e-10)
    np.testing.assert_allclose(grad, u @ vt, atol=1e-8)


def test_exact_gradient_matches_finite_differences():
    m = tf.constant(np.random.default_rng(1).normal(size=(4, 5)))
    theo, num = tf.test.compute_gradient(lambda t: matrix_trace_norm(t), [m])
    np.testing.assert_allclose(theo[0], num[0], atol=1e-6)


@pytest.mark.parametrize("kind", ["laf", "tucker", "tt"])
@pytest.mark.parametrize("tasks", [2, 3])
def test_tensor_trace_norms_match_numpy(kind, tasks):
    rng = np.random.default_rng(tasks)
    kernels = [rng.normal(size=(3, 3, 4, 5)) for _ in range(tasks)]
    w = np.stack(kernels, axis=-1)
    for svd in ("exact", "gram"):
        got = tensor_trace_norm(tf.constant(w), kind=kind, svd=svd).numpy()
        np.testing.assert_allclose(got, np_tensor_norm(w, kind), rtol=1e-9)
    count = {"laf": 1, "tucker": 5, "tt": 4}[kind]
    gammas = list(rng.uniform(0.1, 1.0, size=count))
    got = tensor_trace_norm(tf.constant(w), kind=kind, gammas=gammas).numpy()
    np.testing.assert_allclose(got, np_tensor_norm(w, kind, gammas), rtol=1e-9)

    # gradient w.r.t. each task kernel: sum_i gamma_i fold_i(U_i V_i^T)
    var = tf.constant(w)
    with tf.GradientTape() as tape:
        tape.watch(var)
        val = tensor_trace_norm(var, kind=kind)
    grad = tape.gradient(val, var).numpy()
    n = w.ndim
    want = np.zeros_like(w)
    if kind in ("laf", "tucker"):
        modes = [n - 1] if kind == "laf" else list(range(n))
        g = 1.0 if kind == "laf" else 1.0 / n
        for i in modes:
            u, _, vt = np.linalg.svd(np_unfold(w, i), full_matrices=False)
            moved = (u @ vt).reshape((w.shape[i],) + tuple(np.delete(w.shape, i)))
            want += g * np.moveaxis(moved, 0, i)
    else:
        for i in range(1, n):
            u, _, vt = np.linalg.svd(w.reshape(int(np.prod(w.shape[:i])), -1),
                                     full_matrices=False)
            want += (u @ vt).reshape(w.shape) / (n - 1)
    np.testing.assert_allclose(grad, want, atol=1e-8)


def test_trace_norm_and_subgradient_hand_computed():
    """``||X||_* = sum_i sigma_i`` and ``d||W||_*/dW = U_* V_*^T`` (Sec. 2.2):
    ``diag(2, -3)`` has singular values 2, 3 (norm 5) and ``U V^T = diag(1, -1)``;
    ``[[3, 4]]`` has the one singular value 5 and ``U V^T = [[0.6, 0.8]]``."""
    for svd in ("exact", "gram"):
        for m, norm, uvt in (([[2.0, 0.0], [0.0, -3.0]], 5.0, [[1.0, 0.0], [0.0, -1.0]]),
                             ([[3.0, 4.0]], 5.0, [[0.6, 0.8]])):
            x = tf.constant(m, tf.float64)
            with tf.GradientTape() as tape:
                tape.watch(x)
                value = matrix_trace_norm(x, svd=svd)
            assert float(value) == pytest.approx(norm, rel=1e-12)
            np.testing.assert_allclose(tape.gradient(value, x).numpy(), uvt, atol=1e-12)


def test_eq1_laf_hand_computed():
    """Eq 1, ``gamma ||W_(N)||_*``: two tasks' kernels ``(1, 0)`` and ``(0, 2)`` stack to
    ``W_(N) = [[1, 0], [0, 2]]``, norm 3; two equal kernels ``(1, 0)`` give the rank-1
    ``[[1, 0], [1, 0]]``, norm sqrt(2) (the shared case is cheaper)."""
    for svd in ("exact", "gram"):
        w = tf.constant([[1.0, 0.0], [0.0, 2.0]], tf.float64)       # [D_1, T], tasks last
        assert float(tensor_trace_norm(w, "laf", svd=svd)) == pytest.approx(3.0)
        assert float(tensor_trace_norm(w, "laf", gammas=[0.5], svd=svd)) == pytest.approx(1.5)
        same = tf.constant([[1.0, 1.0], [0.0, 0.0]], tf.float64)
        assert float(tensor_trace_norm(same, "laf", svd=svd)) == pytest.approx(np.sqrt(2.0))
        kernels = [tf.constant([1.0, 0.0], tf.float64), tf.constant([0.0, 2.0], tf.float64)]
        assert float(laf_trace_norm(kernels, svd=svd)) == pytest.approx(3.0)


def test_eq2_eq3_tucker_and_tt_hand_computed():
    """``W`` of size 2 x 2 x 2 with task 1's slice ``I_2`` and task 2's zero.
    Eq 2: ``W_(1)`` and ``W_(2)`` have singular values (1, 1), ``W_(3)`` the one value
    sqrt(2), so with ``gamma_i = 1/3`` the norm is ``(2 + 2 + sqrt 2) / 3``.
    Eq 3: ``W_[1]`` (2 x 4) has singular values (1, 1), ``W_[2]`` (4 x 2) the one value
    sqrt(2): with ``gamma_i = 1/2`` the norm is ``(2 + sqrt 2) / 2``."""
    w = np.zeros((2, 2, 2))
    w[:, :, 0] = np.eye(2)
    for svd in ("exact", "gram"):
        assert float(tensor_trace_norm(tf.constant(w), "tucker", svd=svd)) == \
            pytest.approx((4.0 + np.sqrt(2.0)) / 3.0)
        assert float(tensor_trace_norm(tf.constant(w), "tt", svd=svd)) == \
            pytest.approx((2.0 + np.sqrt(2.0)) / 2.0)
        assert float(tensor_trace_norm(tf.constant(w), "tucker", gammas=[1.0, 0.0, 0.0],
                                       svd=svd)) == pytest.approx(2.0)
        assert float(tensor_trace_norm(tf.constant(w), "tt", gammas=[0.0, 1.0],
                                       svd=svd)) == pytest.approx(np.sqrt(2.0))


@pytest.mark.parametrize("tasks", [2, 3])
@pytest.mark.parametrize("svd", ["gram", "randomized"])
def test_laf_trace_norm_of_kernel_list_matches_stacked_numpy(tasks, svd):
    rng = np.random.default_rng(10 + tasks)
    kernels = [tf.constant(rng.normal(size=(3, 3, 6, 4)).astype("float32")) for _ in range(tasks)]
    w = np.stack([k.numpy().astype("float64") for k in kernels], -1)
    with tf.GradientTape() as tape:
        tape.watch(kernels)
        value = laf_trace_norm(kernels, gamma=0.5, svd=svd)
    grads = tape.gradient(value, kernels)
    np.testing.assert_allclose(value.numpy(), 0.5 * nuc(np_unfold(w, 4)), rtol=1e-5)
    u, _, vt = np.linalg.svd(np_unfold(w, 4), full_matrices=False)
    uvt = (u @ vt).reshape((tasks,) + w.shape[:4])
    for t in range(tasks):
        np.testing.assert_allclose(grads[t].numpy(), 0.5 * uvt[t], atol=2e-4)


def test_randomized_svd_close_to_exact_on_low_rank_matrix():
    rng = np.random.default_rng(5)
    m = (rng.normal(size=(120, 6)) @ rng.normal(size=(6, 90)) + 1e-3 * rng.normal(size=(120, 90)))
    m = m.astype("float32")
    exact = nuc(m.astype("float64"))
    x = tf.constant(m)
    with tf.GradientTape() as tape:
        tape.watch(x)
        approx = matrix_trace_norm(x, svd="randomized", rank=6, oversample=6, power_iters=2)
    assert abs(approx.numpy() - exact) / exact < 1e-2
    u, _, vt = np.linalg.svd(m.astype("float64"))
    top = u[:, :6] @ vt[:6]
    np.testing.assert_allclose(tape.gradient(approx, x).numpy(), top, atol=1e-3)
    # the sketch (rank + oversample < min side) is a genuine random projection:
    # without power iterations and with a tiny sketch the estimate is worse
    crude = matrix_trace_norm(x, svd="randomized", rank=2, oversample=0, power_iters=0).numpy()
    assert crude < 0.9 * exact


def test_regularizer_value_config_and_layer_groups():
    keras.utils.set_random_seed(0)
    nets = [[keras.layers.Dense(4), keras.layers.Dense(3)] for _ in range(3)]
    for a, b in nets:
        b(a(tf.zeros((1, 5))))
    groups = [[net[0] for net in nets], [net[1].kernel for net in nets]]
    reg = TraceNormRegularizer(0.1, kind="tucker", svd="exact")
    arrays = [[net[0].kernel.numpy() for net in nets], [net[1].kernel.numpy() for net in nets]]
    want = 0.1 * sum(np_tensor_norm(np.stack(g, -1), "tucker") for g in arrays)
    np.testing.assert_allclose(reg(groups).numpy(), want, rtol=1e-5)
    np.testing.assert_allclose(reg.penalty(groups).numpy(), want, rtol=1e-5)
    clone = TraceNormRegularizer.from_config(reg.get_config())
    assert clone.get_config() == reg.get_config()
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(reg))
    assert again.get_config() == reg.get_config()


def _two_task_toy(strength, steps=40):
    """Two linear 2-layer nets on related regression tasks, trained with ``model.fit``.

    Returns the stacked LAF trace norm (summed over the two layer groups)
    after training divided by its value at initialisation.
    """
    keras.utils.set_random_seed(42)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 10)).astype("float32")
    a = 0.3 * rng.normal(size=(10, 1))
    y1 = (x @ a).astype("float32")
    y2 = (x @ (a + 0.03 * rng.normal(size=(10, 1)))).astype("float32")
    init = keras.initializers.RandomNormal(stddev=0.3)
    inp = keras.Input((10,))
    hidden = [keras.layers.Dense(8, use_bias=False, kernel_initializer=init) for _ in range(2)]
    heads = [keras.layers.Dense(1, use_bias=False, kernel_initializer=init) for _ in range(2)]
    model = keras.Model(inp, [heads[t](hidden[t](inp)) for t in range(2)])
    groups = [hidden, heads]
    probe = TraceNormRegularizer(1.0, kind="laf", svd="exact")
    if strength:
        TraceNormRegularizer(strength, kind="laf", svd="randomized").add_to_model(model, groups)
        assert len(model.losses) == 2  # one penalty per group, collected by fit
        with tf.GradientTape() as tape:
            total = tf.add_n(model.losses)
        np.testing.assert_allclose(float(total), strength * float(probe(groups)), rtol=1e-5)
        grads = tape.gradient(total, [hidden[1].kernel, heads[1].kernel])
        assert all(g is not None and np.abs(g.numpy()).sum() > 0 for g in grads)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=["mse", "mse"])
    start = float(probe(groups))
    reps = [np.tile(v, (steps, 1)) for v in (x, y1, y2)]  # `steps` full-batch steps, 1 epoch
    model.fit(reps[0], reps[1:], batch_size=128, epochs=1, shuffle=False, verbose=0)
    return float(probe(groups)) / start


def test_regularized_training_lowers_stacked_trace_norm():
    plain_ratio = _two_task_toy(0.0)
    reg_ratio = _two_task_toy(0.3)
    assert reg_ratio < plain_ratio - 0.1, (reg_ratio, plain_ratio)
