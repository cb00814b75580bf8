"""Math, config and serialization tests for models/layers (issue #3)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.layers import (
    ConvFLU,
    ConvFLUTransfer,
    CReLU,
    DANNLambdaSchedule,
    FusedBatchNorm,
    GradientReversal,
    InceptionModule,
    LocalResponseNormalization,
    dann_lambda,
)


# ---------------------------------------------------------------- NumPy refs
def np_conv(x, k):
    """'same' stride-1 cross-correlation, NHWC x HWIO (TensorFlow convention)."""
    kh, kw = k.shape[:2]
    b, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    out = np.zeros((b, h, w, k.shape[3]))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("bhwc,cd->bhwd", xp[:, i:i + h, j:j + w], k[i, j])
    return out


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def np_flu(fx, fy, w):
    """FERSNet Eqs 1-4 from the layer's weights."""
    xy = np.concatenate([fx, fy], -1)
    r = sigmoid(np_conv(xy, w["w_r"]) + w["b_r"])
    cand = np.tanh(np_conv(r * fy, w["w"]) + np_conv(fx, w["u"]) + w["b"])
    z = sigmoid(np_conv(xy, w["w_z"]) + w["b_z"])
    return (1 - z) * fx + z * cand, r, z


def flu_weights(layer):
    return {n: getattr(layer, n).numpy() for n in ("w_r", "b_r", "w", "u", "b", "w_z", "b_z")}


def randomize(layer, rng):
    for v in layer.weights:
        if v.trainable:
            v.assign(rng.normal(scale=0.5, size=v.shape).astype(v.dtype))


# ---------------------------------------------------------------- ConvFLU
@pytest.mark.parametrize("ksize", [1, 3])
def test_convflu_matches_numpy(ksize):
    rng = np.random.default_rng(ksize)
    fx = rng.normal(size=(2, 5, 6, 4)).astype("float32")
    fy = rng.normal(size=(2, 5, 6, 3)).astype("float32")
    layer = ConvFLU(kernel_size=ksize, return_gates=True)
    layer([fx, fy])
    randomize(layer, rng)
    out, r, z = (t.numpy() for t in layer([fx, fy]))
    ref, r_ref, z_ref = np_flu(fx, fy, flu_weights(layer))
    assert out.shape == fx.shape and r.shape == fy.shape and z.shape == fx.shape
    np.testing.assert_allclose(out, ref, atol=2e-5)
    np.testing.assert_allclose(r, r_ref, atol=2e-5)
    np.testing.assert_allclose(z, z_ref, atol=2e-5)
    plain = ConvFLU(kernel_size=ksize)
    plain([fx, fy])
    plain.set_weights(layer.get_weights())
    np.testing.assert_allclose(plain([fx, fy]).numpy(), ref, atol=2e-5)


def test_convflu_transfer_uses_prefusion_features():
    rng = np.random.default_rng(7)
    fx = rng.normal(size=(2, 4, 4, 3)).astype("float32")
    fy = rng.normal(size=(2, 4, 4, 5)).astype("float32")
    layer = ConvFLUTransfer(kernel_size=3, return_gates=True)
    layer([fx, fy])
    randomize(layer, rng)
    nx, ny, rx, zx, ry, zy = (t.numpy() for t in layer([fx, fy]))
    ref_x, ref_rx, ref_zx = np_flu(fx, fy, flu_weights(layer.flu_x))
    ref_y, ref_ry, ref_zy = np_flu(fy, fx, flu_weights(layer.flu_y))  # from pre-fusion fx
    for got, want in [(nx, ref_x), (ny, ref_y), (rx, ref_rx), (zx, ref_zx), (ry, ref_ry),
                      (zy, ref_zy)]:
        np.testing.assert_allclose(got, want, atol=2e-5)
    two = ConvFLUTransfer(kernel_size=3)
    outs = two([fx, fy])
    assert len(outs) == 2 and outs[0].shape == fx.shape and outs[1].shape == fy.shape


# ---------------------------------------------------------------- GRL
def test_gradient_reversal_forward_and_gradient():
    layer = GradientReversal(lambda_=0.7, dtype="float64")
    x = tf.constant(np.random.default_rng(0).normal(size=(3, 4)))
    np.testing.assert_array_equal(layer(x).numpy(), x.numpy())
    theo, num = tf.test.compute_gradient(lambda t: layer(t), [x])
    np.testing.assert_allclose(theo[0], -0.7 * np.eye(12), atol=1e-6)  # custom backward
    np.testing.assert_allclose(num[0], np.eye(12), atol=1e-4)  # forward is identity

    @tf.function
    def grad_of(t):
        with tf.GradientTape() as tape:
            tape.watch(t)
            y = tf.reduce_sum(layer(t) * 3.0)
        return tape.gradient(y, t)

    np.testing.assert_allclose(grad_of(x).numpy(), -2.1 * np.ones((3, 4)), rtol=1e-6)
    layer.lambda_var.assign(0.25)  # takes effect in the already traced function
    np.testing.assert_allclose(grad_of(x).numpy(), -0.75 * np.ones((3, 4)), rtol=1e-6)


def test_dann_lambda_schedule_in_fit():
    keras.utils.set_random_seed(0)
    grl = GradientReversal(lambda_=0.0)
    inp = keras.Input((3,))
    model = keras.Model(inp, keras.layers.Dense(1)(grl(inp)))
    model.compile(optimizer="sgd", loss="mse")
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(float(grl.lambda_var.numpy()))

    sched = DANNLambdaSchedule(grl, total_steps=4, gamma=10.0, max_lambda=0.5)
    x = np.ones((12, 3), "float32")
    model.fit(x, x[:, :1], batch_size=4, epochs=2, verbose=0, callbacks=[sched, Record()])
    want = [dann_lambda(min(i / 4, 1.0), 10.0, 0.5) for i in range(6)]
    np.testing.assert_allclose(seen, want, rtol=1e-6)
    assert sched.step == 6
    assert dann_lambda(0.0) == 0.0
    np.testing.assert_allclose(dann_lambda(0.3, 10.0, 2.0), 2 * (2 / (1 + np.exp(-3.0)) - 1))


# ---------------------------------------------------------------- CReLU / LRN
def test_crelu_matches_numpy():
    x = np.random.default_rng(1).normal(size=(2, 3, 4)).astype("float32")
    np.testing.assert_array_equal(
        CReLU()(x).numpy(), np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], -1))
    np.testing.assert_array_equal(
        CReLU(axis=1)(x).numpy(), np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], 1))


def np_lrn(a, n, k, alpha, beta):
    c = a.shape[-1]
    out = np.empty_like(a)
    for i in range(c):
        lo, hi = max(0, i - n), min(c - 1, i + n)
        s = np.sum(a[..., lo:hi + 1] ** 2, axis=-1)
        out[..., i] = a[..., i] / (k + alpha * s) ** beta
    return out


@pytest.mark.parametrize("params", [dict(), dict(depth_radius=1, bias=2.0, alpha=0.3, beta=0.6)])
def test_lrn_matches_numpy(params):
    a = np.random.default_rng(2).normal(scale=2.0, size=(2, 3, 3, 7)).astype("float32")
    layer = LocalResponseNormalization(**params)
    ref = np_lrn(a.astype("float64"), layer.depth_radius, layer.bias, layer.alpha, layer.beta)
    np.testing.assert_allclose(layer(a).numpy(), ref, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- Inception
def np_maxpool3(x):
    b, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    return np.max(np.stack([xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)]), 0)


def test_inception_matches_numpy():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 6, 6, 5)).astype("float32")
    layer = InceptionModule(4, 3, 6, 2, 3, 2)
    assert layer(x).shape == (2, 6, 6, 4 + 6 + 3 + 2)
    randomize(layer, rng)

    def cv(inp, sub):
        return np.maximum(np_conv(inp, sub.kernel.numpy()) + sub.bias.numpy(), 0)

    ref = np.concatenate([
        cv(x, layer.branch1),
        cv(cv(x, layer.branch3_reduce), layer.branch3),
        cv(cv(x, layer.branch5_reduce), layer.branch5),
        cv(np_maxpool3(x), layer.pool_proj)], -1)
    np.testing.assert_allclose(layer(x).numpy(), ref, rtol=1e-4, atol=1e-4)


def np_batch_norm(x, gamma, beta, mean, var, eps):
    """Ioffe & Szegedy 2015, Algorithm 1: ``gamma (x - mean) / sqrt(var + eps) + beta``."""
    return gamma * (x - mean) / np.sqrt(var + eps) + beta


def test_fused_batch_norm_matches_numpy_and_keras():
    """Batch normalization (Ioffe & Szegedy 2015, Algorithm 1) per channel of NHWC
    maps: training normalises with the batch mean and (biased) variance over N, H,
    W and updates ``moving = momentum * moving + (1 - momentum) * batch`` (the Keras
    convention); inference normalises with the moving statistics."""
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(4, 5, 5, 3)) * 2.0 + 1.0).astype(np.float32)
    eps, m = 1e-3, 0.9
    layer = FusedBatchNorm(momentum=m, epsilon=eps)
    y = np.asarray(layer(x, training=True))
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(y, np_batch_norm(x, 1.0, 0.0, mean, var, eps), atol=1e-4)
    np.testing.assert_allclose(layer.moving_mean, (1 - m) * mean, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance, m + (1 - m) * var, atol=1e-5)
    gamma, beta = np.array([2.0, 0.5, 1.0], np.float32), np.array([0.1, -1.0, 3.0], np.float32)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    np.testing.assert_allclose(
        layer(x, training=False),
        np_batch_norm(x, gamma, beta, np.asarray(layer.moving_mean),
                      np.asarray(layer.moving_variance), eps), atol=1e-4)
    # the same as keras.layers.BatchNormalization (without scale), both modes
    ref = keras.layers.BatchNormalization(momentum=m, scale=False)
    ours = FusedBatchNorm(momentum=m, scale=False)
    np.testing.assert_allclose(ref(x, training=True), ours(x, training=True), atol=1e-5)
    np.testing.assert_allclose(ref.moving_variance, ours.moving_variance, atol=1e-5)
    np.testing.assert_allclose(ref(x, training=False), ours(x, training=False), atol=1e-5)
    # by hand: one channel holding 0 and 2: mean 1, variance 1 -> -+1 / sqrt(1 + eps)
    two = FusedBatchNorm(momentum=m, epsilon=eps)
    out = np.asarray(two(np.array([0.0, 2.0], np.float32).reshape(2, 1, 1, 1), training=True))
    np.testing.assert_allclose(out.ravel(), [-1 / np.sqrt(1 + eps), 1 / np.sqrt(1 + eps)],
                               rtol=1e-5)
    np.testing.assert_allclose([float(two.moving_mean[0]), float(two.moving_variance[0])],
                               [0.1, 1.0], rtol=1e-6)


# ---------------------------------------------------------------- config + saving
LAYERS = [
    lambda: ConvFLU(kernel_size=3, return_gates=True, name="f"),
    lambda: ConvFLUTransfer(kernel_size=3, return_gates=True),
    lambda: GradientReversal(lambda_=0.3),
    lambda: CReLU(axis=2),
    lambda: LocalResponseNormalization(3, 2.0, 1e-3, 0.5),
    lambda: InceptionModule(1, 2, 3, 4, 5, 6, activation="tanh"),
    lambda: FusedBatchNorm(momentum=0.9, epsilon=1e-4, scale=False),
]


@pytest.mark.parametrize("make", LAYERS)
def test_get_config_round_trip(make):
    layer = make()
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(again) is type(layer) and again.get_config() == config


def _build_model():
    keras.utils.set_random_seed(1)
    inp = keras.Input((8, 8, 3))
    h = InceptionModule(2, 2, 3, 1, 2, 2)(inp)  # 9 channels
    h = LocalResponseNormalization()(h)
    h = CReLU()(h)  # 18 channels
    fx = keras.layers.Conv2D(4, 1)(h)
    fy = keras.layers.Conv2D(3, 1)(h)
    fx2 = ConvFLU(kernel_size=3)([fx, fy])
    ax, ay, *_gates = ConvFLUTransfer(kernel_size=1, return_gates=True)([fx2, fy])
    g = GradientReversal(lambda_=0.4, name="grl")(keras.layers.Concatenate()([ax, ay]))
    out = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(g))
    return keras.Model(inp, out)


def test_model_keras_save_load_and_savedmodel_export(tmp_path):
    model = _build_model()
    model.get_layer("grl").lambda_var.assign(0.9)
    x = np.random.default_rng(4).normal(size=(2, 8, 8, 3)).astype("float32")
    want = model(x, training=False).numpy()

    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded(x, training=False).numpy(), want, rtol=1e-5, atol=1e-5)
    assert float(loaded.get_layer("grl").lambda_var.numpy()) == pytest.approx(0.9)

    export_dir = str(tmp_path / "export")
    model.export(export_dir, verbose=False)
    restored = tf.saved_model.load(export_dir)
    np.testing.assert_allclose(restored.serve(tf.constant(x)).numpy(), want, rtol=1e-5,
                               atol=1e-5)

    # plain tf.saved_model.save of a tf.function using the custom-gradient layer
    grl = GradientReversal(lambda_=2.0)
    module = tf.Module()
    module.grl = grl
    module.f = tf.function(lambda t: grl(t) * 2.0,
                           input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    sm_dir = str(tmp_path / "sm")
    tf.saved_model.save(module, sm_dir)
    back = tf.saved_model.load(sm_dir)
    t = tf.ones((2, 3))
    np.testing.assert_allclose(back.f(t).numpy(), 2 * np.ones((2, 3)))
    with tf.GradientTape() as tape:
        tape.watch(t)
        y = tf.reduce_sum(back.f(t))
    np.testing.assert_allclose(tape.gradient(y, t).numpy(), -4.0 * np.ones((2, 3)))
