"""Math, gradient and serialization tests for models/losses (issue #3)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.losses import (
    CenterLoss,
    ContrastiveLoss,
    FeatureMemoryBank,
    SelectiveSigmoidCrossEntropy,
    contrastive_loss,
    masked_softmax_cross_entropy,
    md_loss,
    multi_dataset_loss,
    reachability_weights,
    selective_sigmoid_cross_entropy,
)


# ---------------------------------------------------------------- masked softmax CE
def test_masked_softmax_ignores_labels_outside_the_label_set():
    """``z'_c = z_c`` where ``emotion_mask_c = 1`` else -1e9, ``L = mean over
    samples with emotion >= 0 of -log softmax(z')_y`` (models/losses/classification.py)."""
    logits = tf.Variable(tf.random.stateless_normal([3, 8], seed=[1, 2]))
    emotion = tf.constant([3, 0, -1], tf.int64)
    mask = np.zeros((3, 8), np.float32)
    mask[0, :7] = 1  # a 7-class dataset
    mask[1, [0, 3, 5]] = 1  # a 3-class dataset
    with tf.GradientTape() as tape:
        out = masked_softmax_cross_entropy(emotion, logits, mask)
    grad = tape.gradient(out["loss"], logits).numpy()
    # Logits outside a sample's label set, and the unlabelled sample, get no gradient.
    assert (grad[mask == 0] == 0).all()
    assert (grad[2] == 0).all()
    # The loss is the mean CE of the two labelled samples over their label sets.
    z = logits.numpy()
    ref = [-np.log(np.exp(z[0, 3]) / np.exp(z[0, :7]).sum()),
           -np.log(np.exp(z[1, 0]) / np.exp(z[1, [0, 3, 5]]).sum())]
    np.testing.assert_allclose(out["loss"].numpy(), np.mean(ref), rtol=1e-5)
    np.testing.assert_allclose(out["per_sample"].numpy(), ref + [0.0], rtol=1e-5)
    correct = [z[0, :7].argmax() == 3, z[1, [0, 3, 5]].argmax() == 0]
    np.testing.assert_allclose(out["accuracy"].numpy(), np.mean(correct))
    # by hand: logits (0, ln 3) on a 2-class set, label 0: -log(1 / (1 + 3)) = ln 4
    hand = masked_softmax_cross_entropy(tf.constant([0]), tf.constant([[0.0, np.log(3.0), 5.0]]),
                                        tf.constant([[1.0, 1.0, 0.0]]))
    assert float(hand["loss"]) == pytest.approx(np.log(4.0), rel=1e-6)
    assert float(hand["accuracy"]) == 0.0


# ---------------------------------------------------------------- selective sigmoid
def np_selective(labels, logits, mask):
    per = []
    for y, x, m in zip(labels, logits, mask):
        idx = m > 0.5
        if not idx.any():
            continue
        p = 1.0 / (1.0 + np.exp(-x[idx]))
        per.append(-np.mean(y[idx] * np.log(p) + (1 - y[idx]) * np.log(1 - p)))
    return np.mean(per) if per else 0.0


def _mixed_batch(rng):
    """Union label space of 7: dataset A annotates 0-3, B annotates 2-6, C only 5; one unlabeled."""
    sets = [[0, 1, 2, 3], [2, 3, 4, 5, 6], [5], []]
    mask = np.zeros((8, 7))
    for i in range(8):
        mask[i, sets[i % 4]] = 1.0
    labels = np.where(mask > 0, rng.integers(0, 2, size=(8, 7)), -1.0)  # -1 = garbage
    logits = rng.normal(scale=3.0, size=(8, 7))
    return labels, logits, mask


def test_selective_sigmoid_matches_numpy_on_mixed_batch():
    labels, logits, mask = _mixed_batch(np.random.default_rng(0))
    got = selective_sigmoid_cross_entropy(labels, logits, mask).numpy()
    np.testing.assert_allclose(got, np_selective(labels, logits, mask), rtol=1e-10)
    per = selective_sigmoid_cross_entropy(labels, logits, mask, reduction="none").numpy()
    assert per.shape == (8,) and per[3] == 0.0 and per[7] == 0.0
    y_true = np.concatenate([labels, mask], -1).astype("float32")
    keras_val = SelectiveSigmoidCrossEntropy()(y_true, logits.astype("float32")).numpy()
    np.testing.assert_allclose(keras_val, got, rtol=1e-5)
    assert float(selective_sigmoid_cross_entropy(labels, logits, np.zeros_like(mask))) == 0.0


def test_selective_sigmoid_masked_outputs_get_exactly_zero_gradient():
    labels, logits, mask = _mixed_batch(np.random.default_rng(1))
    logits[0, 6] = 1e4  # a huge masked logit must not leak either
    x = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = selective_sigmoid_cross_entropy(labels, x, mask)
    grad = tape.gradient(loss, x).numpy()
    assert np.all(grad[mask == 0] == 0.0)
    assert np.all(grad[mask == 1] != 0.0)
    # analytic gradient of the normalised mean: (sigmoid(x) - y) / (n_c * n_valid)
    n_valid = (mask.sum(1) > 0).sum()
    want = (1 / (1 + np.exp(-logits)) - labels) / np.maximum(mask.sum(1, keepdims=True), 1)
    np.testing.assert_allclose(grad[mask == 1], (want / n_valid)[mask == 1], rtol=1e-8)


def test_selective_sigmoid_is_numerically_stable():
    logits = np.array([[200.0, -200.0, 50.0]], "float32")
    labels = np.array([[0.0, 1.0, 1.0]], "float32")
    mask = np.ones_like(labels)
    val = selective_sigmoid_cross_entropy(labels, logits, mask).numpy()
    np.testing.assert_allclose(val, (200.0 + 200.0 + np.log1p(np.exp(-50.0))) / 3, rtol=1e-6)


def test_selective_sigmoid_keras_loss_in_compile_and_config():
    rng = np.random.default_rng(2)
    labels, _, mask = _mixed_batch(rng)
    x = rng.normal(size=(8, 4)).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(7)])
    model.compile(optimizer="sgd", loss=SelectiveSigmoidCrossEntropy())
    y_true = np.concatenate([labels, mask], -1).astype("float32")
    got = model.evaluate(x, y_true, batch_size=8, verbose=0)
    want = np_selective(labels, model.predict(x, verbose=0).astype("float64"), mask)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    loss = SelectiveSigmoidCrossEntropy()
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(again, SelectiveSigmoidCrossEntropy)
    assert again.get_config() == loss.get_config()


# ---------------------------------------------------------------- contrastive
def np_contrastive(a, b, same, margin, w=None):
    d = np.linalg.norm(a - b, axis=-1)
    per = same * d ** 2 + (1 - same) * np.maximum(margin - d, 0) ** 2
    return per.mean() if w is None else (w * per).sum() / w.sum()


def test_contrastive_loss_matches_numpy():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(2, 10, 4)) * 0.4
    same = rng.integers(0, 2, size=10).astype("float64")
    w = rng.uniform(0.2, 2.0, size=10)
    for margin in (0.5, 1.5):
        np.testing.assert_allclose(contrastive_loss(a, b, same, margin).numpy(),
                                   np_contrastive(a, b, same, margin), rtol=1e-10)
        np.testing.assert_allclose(contrastive_loss(a, b, same, margin, weights=w).numpy(),
                                   np_contrastive(a, b, same, margin, w), rtol=1e-10)
    loss = ContrastiveLoss(margin=1.5)
    keras_val = loss(same.astype("float32"), np.concatenate([a, b], -1).astype("float32"))
    np.testing.assert_allclose(keras_val.numpy(), np_contrastive(a, b, same, 1.5), rtol=1e-5)
    assert ContrastiveLoss.from_config(loss.get_config()).margin == 1.5
    # gradient at identical embeddings of a negative pair is finite
    e = tf.ones((1, 3))
    with tf.GradientTape() as tape:
        tape.watch(e)
        val = contrastive_loss(e, tf.ones((1, 3)), [0.0])
    assert np.all(np.isfinite(tape.gradient(val, e).numpy()))


def np_reach(x, y, k, bx=None, by=None, sigma=None):
    xs = x if bx is None else np.concatenate([x, bx])
    ys = y if by is None else np.concatenate([y, by])
    big_b, m = len(x), len(xs)
    dist = np.linalg.norm(xs[:, None] - xs[None], axis=-1)
    nbrs = []
    for p in range(m):
        cand = [q for q in range(m) if q != p and ys[p] >= 0 and ys[q] == ys[p]]
        nbrs.append(sorted(cand, key=lambda q: dist[p, q])[:k])
    kdist = [dist[p, nbrs[p][-1]] if nbrs[p] else 0.0 for p in range(m)]
    rd = np.array([np.mean([max(kdist[j], dist[i, j]) for j in nbrs[i]]) if nbrs[i] else np.nan
                   for i in range(big_b)])
    has = ~np.isnan(rd)
    sig = np.median(rd[has]) if sigma is None else sigma
    w = np.exp(-rd ** 2 / (2 * sig ** 2))
    w[~has] = w[has].mean()
    return w / w.mean()


@pytest.mark.parametrize("k", [1, 3, 5])
def test_reachability_weights_match_numpy(k):
    rng = np.random.default_rng(k)
    x = rng.normal(size=(16, 5))
    x[0] += 6.0  # an outlier of its class
    y = rng.integers(0, 3, size=16)
    y[15] = 7  # a class with a single sample: no neighbour
    y[14] = -1  # unlabelled
    w = reachability_weights(x, y, k=k).numpy()
    np.testing.assert_allclose(w, np_reach(x, y, k), rtol=1e-8)
    assert w[0] < np.median(w)  # the outlier is down-weighted
    np.testing.assert_allclose(w.mean(), 1.0)
    np.testing.assert_allclose(reachability_weights(x, y, k=k, sigma=0.7).numpy(),
                               np_reach(x, y, k, sigma=0.7), rtol=1e-8)
    # with a memory bank (last 4 slots empty = label -1)
    bx = rng.normal(size=(12, 5))
    by = np.concatenate([rng.integers(0, 3, size=8), -np.ones(4, int)])
    np.testing.assert_allclose(
        reachability_weights(x, y, k=k, bank_features=bx, bank_labels=by).numpy(),
        np_reach(x, y, k, bx, by), rtol=1e-8)


def test_reachability_weights_stop_gradient():
    x = tf.constant(np.random.default_rng(0).normal(size=(6, 3)))
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(reachability_weights(x, [0, 0, 0, 1, 1, 1], k=2) * x[:, 0])
    grad = tape.gradient(total, x).numpy()
    want = np.zeros((6, 3))
    want[:, 0] = reachability_weights(x, [0, 0, 0, 1, 1, 1], k=2).numpy()
    np.testing.assert_allclose(grad, want)


def test_feature_memory_bank_ring_buffer(tmp_path):
    bank = FeatureMemoryBank(size=5, dim=2)
    np.testing.assert_array_equal(bank.labels.numpy(), -np.ones(5))
    ref_x, ref_y = np.zeros((5, 2)), -np.ones(5)
    ptr = 0
    rng = np.random.default_rng(0)
    for n in (3, 4, 7, 2):
        fx = rng.normal(size=(n, 2)).astype("float32")
        fy = rng.integers(0, 9, size=n)
        before_x, before_y = bank(fx, fy, training=True)
        np.testing.assert_allclose(before_x.numpy(), ref_x, rtol=1e-6)
        np.testing.assert_array_equal(before_y.numpy(), ref_y)
        for row in range(max(0, n - 5), n):
            ref_x[ptr], ref_y[ptr] = fx[row], fy[row]
            ptr = (ptr + 1) % 5
    np.testing.assert_allclose(bank.features.numpy(), ref_x, rtol=1e-6)
    np.testing.assert_array_equal(bank.labels.numpy(), ref_y)
    assert int(bank.pointer.numpy()) == ptr
    bank(np.ones((2, 2), "float32"), np.array([1, 1]), training=False)  # inference does not write
    np.testing.assert_array_equal(bank.labels.numpy(), ref_y)
    assert FeatureMemoryBank.from_config(bank.get_config()).size == 5


# ---------------------------------------------------------------- center / MD
def test_center_loss_value_gradient_and_update():
    rng = np.random.default_rng(4)
    layer = CenterLoss(num_classes=4, feat_dim=3, alpha=0.3)
    centers = rng.normal(size=(4, 3)).astype("float32")
    layer.centers.assign(centers)
    x = rng.normal(size=(7, 3)).astype("float32")
    y = np.array([0, 1, 1, 3, 3, 3, -1])
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = layer(xt, y, training=True)
    valid = y >= 0
    diff = x[valid] - centers[y[valid]]
    np.testing.assert_allclose(loss.numpy(), 0.5 * np.sum(diff ** 2), rtol=1e-5)  # Eq 1
    want_grad = np.zeros_like(x)
    want_grad[valid] = diff  # Eq 2, unlabeled rows get none
    np.testing.assert_allclose(tape.gradient(loss, xt).numpy(), want_grad, rtol=1e-5)
    new = centers.copy()
    for j in range(4):  # Eqs 3-5
        sel = y == j
        delta = (centers[j] - x[sel]).sum(0) / (1 + sel.sum())
        new[j] = centers[j] - 0.3 * delta
    np.testing.assert_allclose(layer.centers.numpy(), new, rtol=1e-5, atol=1e-6)
    assert layer.trainable_weights == []  # centers are not optimised by gradients
    layer(x, y, training=False)
    np.testing.assert_allclose(layer.centers.numpy(), new, rtol=1e-5, atol=1e-6)
    mean_layer = CenterLoss(4, 3, reduction="mean")
    mean_layer.centers.assign(centers)
    np.testing.assert_allclose(mean_layer(x, y).numpy(), 0.5 * np.sum(diff ** 2) / 6, rtol=1e-5)
    clone = CenterLoss.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


def np_md(x, y, c, p, scale=1.0):
    valid = y >= 0
    x, y = x[valid], y[valid]
    d2 = ((x[:, None] - c[None]) ** 2).sum(-1)
    own = d2[np.arange(len(y)), y]
    phi = own.mean()
    cn = c / np.linalg.norm(c, axis=1, keepdims=True)
    cos = cn @ cn.T
    cc = ((c[:, None] - c[None]) ** 2).sum(-1)
    total = 0.0
    for i, j in enumerate(y):
        order = [k for k in np.argsort(cc[j]) if k != j][:p]
        for k in order:
            lam = scale * phi * (1 + cos[j, k]) / 2
            total += max(0.0, own[i] - d2[i, k] + lam)
    return total / (len(y) * p)


@pytest.mark.parametrize("p", [1, 2, 4])
def test_md_loss_matches_numpy(p):
    rng = np.random.default_rng(p)
    c = rng.normal(size=(5, 4))
    x = c[rng.integers(0, 5, size=12)] + 0.8 * rng.normal(size=(12, 4))
    y = np.argmin(((x[:, None] - c[None]) ** 2).sum(-1), 1)
    y[:3] = rng.integers(0, 5, size=3)  # some violating samples
    y[-1] = -1
    got = md_loss(x, y, c, num_nearest=p, margin_scale=1.5).numpy()
    want = np_md(x, y, c, p, 1.5)
    assert want > 0
    np.testing.assert_allclose(got, want, rtol=1e-10)
    xt, ct = tf.constant(x), tf.Variable(c)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        val = md_loss(xt, y, ct, num_nearest=p)
    gx, gc = tape.gradient(val, [xt, ct])
    assert gc is None and np.abs(gx.numpy()).sum() > 0


def test_multi_dataset_loss():
    np.testing.assert_allclose(multi_dataset_loss([1.0, 2.0, 4.0], [0.5, 1.0, 0.25]).numpy(),
                               3.5)
    np.testing.assert_allclose(
        multi_dataset_loss({"a": 1.0, "b": 3.0}, {"b": 2.0, "a": 0.1}).numpy(), 6.1, rtol=1e-6)
    np.testing.assert_allclose(multi_dataset_loss([tf.constant(1.5), 2.0]).numpy(), 3.5)
    with pytest.raises(ValueError):
        multi_dataset_loss([1.0, 2.0], [1.0])


# ---------------------------------------------------------------- saving
def test_loss_layers_survive_keras_save_and_savedmodel_export(tmp_path):
    keras.utils.set_random_seed(0)
    feats_in = keras.Input((3,), name="features")
    labels_in = keras.Input((), dtype="int32", name="labels")
    emb = keras.layers.Dense(2)(feats_in)
    center = CenterLoss(3, 2, alpha=0.2, name="center")(emb, labels_in)
    bank_x, _ = FeatureMemoryBank(4, 2, name="bank")(emb, labels_in)
    model = keras.Model([feats_in, labels_in], [center, bank_x])
    model.get_layer("center").centers.assign(np.arange(6, dtype="float32").reshape(3, 2))
    model.get_layer("bank").update(np.ones((2, 2), "float32"), [1, 2])
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    y = np.array([0, 1, 2, 1], "int32")
    want = [t.numpy() for t in model([x, y])]

    path = str(tmp_path / "loss_layers.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    got = [t.numpy() for t in loaded([x, y])]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6)
    np.testing.assert_array_equal(loaded.get_layer("bank").labels.numpy(), [1, 2, -1, -1])

    export_dir = str(tmp_path / "export")
    model.export(export_dir, verbose=False)
    restored = tf.saved_model.load(export_dir)
    out = restored.serve([tf.constant(x), tf.constant(y)])
    np.testing.assert_allclose(out[0].numpy(), want[0], rtol=1e-6)
