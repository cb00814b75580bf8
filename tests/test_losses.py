"""Math, gradient and serialization tests for models/losses.

The DDMTL (Zheng et al.) and multi-dataset (Yang, Li, Cao) references are
written from the papers' formulas, quoted with their numbers in each docstring
(issue 16); where fer-mtl reads a printed formula differently, the test says so
and docs/methods.md says why."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.losses import (
    CenterLoss,
    ContrastiveLoss,
    FeatureMemoryBank,
    PConStore,
    SelectiveSigmoidCrossEntropy,
    center_loss,
    center_update,
    contrastive_loss,
    masked_softmax_cross_entropy,
    gaussian_scaling,
    image_keys,
    md_lambda,
    md_loss,
    md_phi,
    multi_dataset_loss,
    pair_distance,
    reachability_distance,
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


# ---------------------------------------------------------------- DDMTL contrastive (Zheng et al.)
def np_pair_distance(a, b):
    """Zheng et al. Eq 6: ``D_k(x_i, x_j) = ||f^k(x_i) - f^k(x_j)||_2``."""
    return np.sqrt(((np.asarray(a) - np.asarray(b)) ** 2).sum(-1))


def np_contrastive_eq7(d, y, m):
    """Zheng et al. Eq 7, pair by pair, ``Y_ij`` of Eq 5 (1 = dissimilar, 0 = similar):
    ``CL = 0.5 (1 - Y_ij) (D_k)^2 + 0.5 Y_ij {max(0, m - D_k)}``."""
    return np.array([0.5 * (1 - yy) * dd ** 2 + 0.5 * yy * max(0.0, m - dd)
                     for dd, yy in zip(d, y)])


def test_contrastive_loss_is_eq7():
    """Zheng et al. Eq 7 ``CL = 0.5(1 - Y) D^2 + 0.5 Y max(0, m - D)``, Eq 6
    ``D = ||f(x_i) - f(x_j)||_2``, Eq 5 ``Y = 1`` for a dissimilar pair."""
    # by hand, m = 1: similar D = 0.5 -> 0.5 * 0.25; dissimilar D = 0.3 -> 0.5 * 0.7;
    # dissimilar D = 2 (beyond the margin) -> 0; similar D = 2 -> 0.5 * 4
    got = contrastive_loss([0.5, 0.3, 2.0, 2.0], [0, 1, 1, 0], 1.0).numpy()
    np.testing.assert_allclose(got, [0.125, 0.35, 0.0, 2.0], rtol=1e-6)

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(2, 40, 4)) * 0.4
    y = rng.integers(0, 2, size=40).astype("float64")
    d = pair_distance(a, b).numpy()
    np.testing.assert_allclose(d, np_pair_distance(a, b), rtol=1e-10)
    for m in (0.5, 1.5):
        want = np_contrastive_eq7(d, y, m)
        assert (want[y == 1] > 0).any() and (want[y == 1] == 0).any()   # both hinge sides
        np.testing.assert_allclose(contrastive_loss(d, y, m).numpy(), want, rtol=1e-10)
    keras_val = ContrastiveLoss(margin=1.5)(y.astype("float32"),
                                            np.concatenate([a, b], -1).astype("float32"))
    np.testing.assert_allclose(keras_val.numpy(), np_contrastive_eq7(d, y, 1.5).mean(),
                               rtol=1e-5)
    assert ContrastiveLoss.from_config(ContrastiveLoss(margin=1.5).get_config()).margin == 1.5
    with pytest.raises(ValueError):
        contrastive_loss(d, y, 0.0)
    # d CL / d D: similar pairs D, dissimilar pairs -0.5 inside the margin
    dt = tf.constant([0.4, 0.4, 1.2])
    with tf.GradientTape() as tape:
        tape.watch(dt)
        val = tf.reduce_sum(contrastive_loss(dt, [0.0, 1.0, 1.0], 1.0))
    np.testing.assert_allclose(tape.gradient(val, dt).numpy(), [0.4, -0.5, 0.0], rtol=1e-6)
    # gradient at identical embeddings of a dissimilar pair is finite
    e = tf.ones((1, 3))
    with tf.GradientTape() as tape:
        tape.watch(e)
        val = contrastive_loss(pair_distance(e, tf.ones((1, 3))), [1.0], 1.0)
    assert np.all(np.isfinite(tape.gradient(val, e).numpy()))


def _same_class_knn(xs, ys, p, k):
    dist = np.linalg.norm(xs[:, None] - xs[None], axis=-1)
    cand = [q for q in range(len(xs)) if q != p and ys[p] >= 0 and ys[q] == ys[p]]
    return sorted(cand, key=lambda q: dist[p, q])[:k], dist


def test_printed_eq3_is_the_constant_k():
    """Zheng et al. Eq 3 as printed, ``pCON(x_i, x_j) = sum_{x_j in N_k(x_i)}
    max(k-dist(x_i), d(x_i, x_j)) / max(k-dist(x_i), d(x_i, x_i))``, is ``k`` for
    every sample (d(x_i, x_j) <= k-dist(x_i) inside N_k): why fer-mtl reads the
    reachability distance with the neighbour's k-distance (docs/methods.md)."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 3)) * rng.uniform(0.1, 5, size=(20, 1)), np.zeros(20, int)
    for k in (1, 3, 5):
        for i in range(20):
            nbrs, dist = _same_class_knn(x, y, i, k)
            kd = dist[i, nbrs[-1]]
            printed = sum(max(kd, dist[i, j]) / max(kd, dist[i, i]) for j in nbrs)
            assert printed == pytest.approx(k)


def np_pcon(x, y, k, bx=None, by=None):
    """``pCON_t`` as fer-mtl reads Zheng et al. Eq 3 (LOF reachability):
    ``1/|N_k| sum_{x_j in N_k(x_i)} max(k-dist(x_j), d(x_i, x_j))``, same-class
    neighbours; NaN without any."""
    xs = x if bx is None else np.concatenate([x, bx])
    ys = y if by is None else np.concatenate([y, by])
    dist = np.linalg.norm(xs[:, None] - xs[None], axis=-1)
    nbrs = [_same_class_knn(xs, ys, p, k)[0] for p in range(len(xs))]
    kdist = [dist[p, nb[-1]] if nb else 0.0 for p, nb in enumerate(nbrs)]
    return np.array([np.mean([max(kdist[j], dist[i, j]) for j in nbrs[i]]) if nbrs[i]
                     else np.nan for i in range(len(x))])


def np_gaussian(a, sigma=None):
    """``G`` of Zheng et al. Eq 4 as read: ``exp(-a^2 / (2 sigma^2))``, sigma = median,
    no value -> mean weight, then divided by the mean."""
    has = ~np.isnan(a)
    sig = np.median(a[has]) if sigma is None else sigma
    w = np.exp(-a ** 2 / (2 * sig ** 2))
    w[~has] = w[has].mean()
    return w / w.mean()


@pytest.mark.parametrize("k", [1, 3, 5])
def test_reachability_weights_match_numpy(k):
    """Zheng et al. Eqs 3-4 with T = 1: ``W_k = G(pCON(x_i))``."""
    rng = np.random.default_rng(k)
    x = rng.normal(size=(16, 5))
    x[0] += 6.0  # an outlier of its class
    y = rng.integers(0, 3, size=16)
    y[15] = 7  # a class with a single sample: no neighbour
    y[14] = -1  # unlabelled
    pcon, has = reachability_distance(x, y, k=k)
    want = np_pcon(x, y, k)
    np.testing.assert_array_equal(has.numpy(), ~np.isnan(want))
    np.testing.assert_allclose(pcon.numpy()[has.numpy()], want[~np.isnan(want)], rtol=1e-8)
    w = reachability_weights(x, y, k=k).numpy()
    np.testing.assert_allclose(w, np_gaussian(want), rtol=1e-8)
    assert w[0] < np.median(w)  # the outlier is down-weighted
    np.testing.assert_allclose(w.mean(), 1.0)
    np.testing.assert_allclose(reachability_weights(x, y, k=k, sigma=0.7).numpy(),
                               np_gaussian(want, 0.7), rtol=1e-8)
    # with a memory bank (last 4 slots empty = label -1)
    bx = rng.normal(size=(12, 5))
    by = np.concatenate([rng.integers(0, 3, size=8), -np.ones(4, int)])
    np.testing.assert_allclose(
        reachability_weights(x, y, k=k, bank_features=bx, bank_labels=by).numpy(),
        np_gaussian(np_pcon(x, y, k, bx, by)), rtol=1e-8)


def test_pcon_by_hand():
    """Eq 3 as read, k = 1, points 0, 1, 3 on a line (one class): k-dist = 1, 1, 2;
    pCON(0) = max(kd(1), 1) = 1, pCON(1) = max(kd(0), 1) = 1, pCON(3) = max(kd(1), 2) = 2.
    G: sigma = median = 1, w = exp(-a^2 / 2) / mean."""
    pcon, has = reachability_distance([[0.0], [1.0], [3.0]], [0, 0, 0], k=1)
    np.testing.assert_allclose(pcon.numpy(), [1.0, 1.0, 2.0], rtol=1e-6)
    w = np.exp(-np.array([1.0, 1.0, 4.0]) / 2)
    np.testing.assert_allclose(gaussian_scaling(pcon, has).numpy(), w / w.mean(), rtol=1e-6)


def test_pcon_store_accumulates_eq4_over_iterations():
    """Zheng et al. Eq 4 ``W_k = G(sum_{t=1..T} pCON(x_i, x_j))``, ``T`` the number of
    iterations: the weights after three iterations are G of each sample's sum over
    the iterations it took part in, divided by its T (G is scale-free)."""
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(10, 6, 6, 1)).astype("float32")
    labels = np.repeat([0, 1], 5)
    slots = image_keys(images, 997).numpy()
    assert len(set(slots)) == 10                         # distinct images, distinct slots
    np.testing.assert_array_equal(image_keys(images.copy(), 997).numpy(), slots)
    store = PConStore(997)
    sums, counts = np.zeros(10), np.zeros(10)
    for t, rows in enumerate([np.arange(10), np.arange(10), np.array([0, 1, 2, 5, 6, 7])]):
        feats = rng.normal(size=(len(rows), 3)) * (1 + t)
        pcon, has = reachability_distance(feats, labels[rows], k=2)
        mean, known = store.accumulate(slots[rows], pcon, has, write=True)
        sums[rows] += np_pcon(feats, labels[rows], 2)
        counts[rows] += 1
        np.testing.assert_allclose(mean.numpy(), sums[rows] / counts[rows], rtol=1e-5)
        np.testing.assert_allclose(gaussian_scaling(mean, known).numpy(),
                                   np_gaussian(sums[rows] / counts[rows]), rtol=1e-5)
    np.testing.assert_allclose(store.counts.numpy()[slots], [3, 3, 3, 2, 2, 3, 3, 3, 2, 2])
    # reading without writing includes the current value but leaves the store alone
    before = store.sums.numpy().copy()
    mean, _ = store.accumulate(slots[:2], [1.0, 1.0], [True, False], write=False)
    np.testing.assert_allclose(mean.numpy(), [(sums[0] + 1) / 4, sums[1] / 3], rtol=1e-5)
    np.testing.assert_array_equal(store.sums.numpy(), before)
    # when every sample has the same T, G of the sum equals G of the mean
    np.testing.assert_allclose(np_gaussian(sums[:3]), np_gaussian(sums[:3] / 3), rtol=1e-12)
    assert PConStore.from_config(store.get_config()).size == 997


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


# ---------------------------------------------------------------- center / MD (Yang et al.)
def test_center_loss_value_gradient_and_update():
    """Yang et al. Eq 1 ``L_C = 1/2 sum_i ||x_i - c_{y_i}||^2``, Eq 3
    ``dL_C/dx_i = x_i - c_{y_i}``; the update ``c_j <- c_j - alpha Delta c_j`` with
    Wen et al.'s ``Delta c_j = sum_i d(y_i, j)(c_j - x_i) / (1 + sum_i d(y_i, j))``."""
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
    np.testing.assert_allclose(center_loss(x, y, centers).numpy(),
                               np.r_[0.5 * (diff ** 2).sum(1), 0.0], rtol=1e-5)
    want_grad = np.zeros_like(x)
    want_grad[valid] = diff  # Eq 3, unlabeled rows get none
    np.testing.assert_allclose(tape.gradient(loss, xt).numpy(), want_grad, rtol=1e-5)
    new = centers.copy()
    for j in range(4):
        sel = y == j
        new[j] = centers[j] - 0.3 * (centers[j] - x[sel]).sum(0) / (1 + sel.sum())
    np.testing.assert_allclose(layer.centers.numpy(), new, rtol=1e-5, atol=1e-6)
    assert layer.trainable_weights == []  # centers are not optimised by gradients
    layer(x, y, training=False)
    np.testing.assert_allclose(layer.centers.numpy(), new, rtol=1e-5, atol=1e-6)
    mean_layer = CenterLoss(4, 3, reduction="mean")
    mean_layer.centers.assign(centers)
    np.testing.assert_allclose(mean_layer(x, y).numpy(), 0.5 * np.sum(diff ** 2) / 6, rtol=1e-5)
    clone = CenterLoss.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


def test_center_update_moves_towards_the_features_not_away_as_printed():
    """Yang et al. Eq 4 as printed, ``Delta c_j = sum_i d(y_i, j)(x_i - c_{y_i}) /
    (1 + sum_i d(y_i, j))`` with ``c_j^{t+1} = c_j^t - alpha Delta c_j^t``
    (Algorithm 1, line 7), moves a centre away from its features; Wen et al.'s
    sign moves it towards them. By hand: c = 0, features 1 and 3, alpha = 0.5:
    Wen 0 + 0.5 * 4 / 3 = 2/3; printed -2/3."""
    new = center_update([[1.0], [3.0]], [0, 0], [[0.0], [10.0]], 0.5).numpy()
    np.testing.assert_allclose(new, [[2.0 / 3.0], [10.0]], rtol=1e-6)
    printed = 0.0 - 0.5 * ((1.0 - 0.0) + (3.0 - 0.0)) / (1 + 2)
    assert abs(printed - 2.0) > abs(0.0 - 2.0) > abs(new[0, 0] - 2.0)   # 2 = the features' mean


def np_md_eq9(x, y, c, p, lam_reduction="mean"):
    """Yang et al. Eq 9 (Eq 6 when P = C - 1), per sample, with the numerator's
    sign slip fixed (own-centre term ``exp(-1/phi ||x_i - c_{y_i}||^2 - lambda)``)
    and ``c_j`` in the denominator:
    ``L_i = -log( exp(-1/phi ||x_i - c_{y_i}||^2 - lambda)
                  / sum_{j in P nearest other centres} exp(-1/phi ||x_i - c_j||^2) )``;
    Eq 8 ``phi = 1/2 sum ||x_i - c_{y_i}||^2`` taken as the variance (mean);
    Eq 7 ``lambda = sum_{i != j} c_i . c_j / (||c_i|| ||c_j||)`` (mean or sum)."""
    lab = y >= 0
    phi = 0.5 * np.mean([np.sum((x[i] - c[y[i]]) ** 2) for i in np.flatnonzero(lab)])
    pairs = [(i, j) for i in range(len(c)) for j in range(len(c)) if i != j]
    cos = [c[i] @ c[j] / (np.linalg.norm(c[i]) * np.linalg.norm(c[j])) for i, j in pairs]
    lam = np.sum(cos) if lam_reduction == "sum" else np.mean(cos)
    out = np.zeros(len(x))
    for i in np.flatnonzero(lab):
        others = sorted((j for j in range(len(c)) if j != y[i]),
                        key=lambda j: np.sum((c[j] - c[y[i]]) ** 2))[:p]
        num = np.exp(-np.sum((x[i] - c[y[i]]) ** 2) / phi - lam)
        den = sum(np.exp(-np.sum((x[i] - c[j]) ** 2) / phi) for j in others)
        out[i] = -np.log(num / den)
    return out


def test_md_loss_by_hand():
    """Eq 9 on one sample x = (1, 0), y = 0, centres (0, 0), (3, 0), (0, -2):
    lambda = 0 (the cosines are 0), phi = 1/2 * 1 = 0.5, d = 1, 4, 5.
    P = 2: L = 1/0.5 + log(e^-8 + e^-10) = -6 + log(1 + e^-2);
    P = 1: the centre nearest to c_0 is (0, -2) (not the one nearest to x): L = 2 - 10."""
    x, y, c = [[1.0, 0.0]], [0], [[0.0, 0.0], [3.0, 0.0], [0.0, -2.0]]
    np.testing.assert_allclose(md_loss(x, y, c, 2).numpy(), [-6 + np.log1p(np.exp(-2))],
                               rtol=1e-6)
    np.testing.assert_allclose(md_loss(x, y, c, 1).numpy(), [-8.0], rtol=1e-6)
    np.testing.assert_allclose(md_loss(x, y, c, 1, hinge=True).numpy(), [0.0])
    np.testing.assert_allclose(md_phi(x, y, c).numpy(), 0.5)
    # Eq 7 by hand: centres (1, 0), (0, 1), (1, 1): cosines 0, 1/sqrt2, 1/sqrt2
    c3 = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    np.testing.assert_allclose(md_lambda(c3, "sum").numpy(), 2 * np.sqrt(2), rtol=1e-6)
    np.testing.assert_allclose(md_lambda(c3).numpy(), 2 * np.sqrt(2) / 6, rtol=1e-6)


@pytest.mark.parametrize("p", [1, 2, 4])
def test_md_loss_matches_eq9(p):
    """Eq 9 per sample against the NumPy reference written from the paper."""
    rng = np.random.default_rng(p)
    c = rng.normal(size=(5, 4))
    x = c[rng.integers(0, 5, size=12)] + 0.8 * rng.normal(size=(12, 4))
    y = rng.integers(0, 5, size=12)
    y[-1] = -1
    for lam in ("mean", "sum"):
        got = md_loss(x, y, c, p, lambda_reduction=lam).numpy()
        np.testing.assert_allclose(got, np_md_eq9(x, y, c, p, lam), rtol=1e-8, atol=1e-12)
    assert got[-1] == 0.0
    np.testing.assert_allclose(md_loss(x, y, c, p, reduction="mean").numpy(),
                               np_md_eq9(x, y, c, p)[:-1].mean(), rtol=1e-8)
    np.testing.assert_allclose(md_loss(x, y, c, None).numpy(), np_md_eq9(x, y, c, 4),
                               rtol=1e-8, atol=1e-12)                        # Eq 6
    # phi normalises the distances: scaling features and centres leaves the loss
    np.testing.assert_allclose(md_loss(7 * x, y, 7 * c, p).numpy(), np_md_eq9(x, y, c, p),
                               rtol=1e-8, atol=1e-12)
    xt, ct = tf.constant(x), tf.Variable(c)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        val = tf.reduce_sum(md_loss(xt, y, ct, p))
    gx, gc = tape.gradient(val, [xt, ct])
    assert gc is None and np.abs(gx.numpy()).sum() > 0


def test_md_loss_falls_as_a_sample_nears_its_centre():
    """The evident intent of Eqs 6/9: the own-centre term lowers the loss as x_i
    nears c_{y_i} (the printed ``+1/phi`` would raise it). phi fixed so only x moves."""
    c = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    vals = [md_loss([[t, t]], [0], c, 2, phi=1.0).numpy()[0] for t in (1.5, 1.0, 0.5, 0.0)]
    assert all(a > b for a, b in zip(vals, vals[1:])), vals


def np_margin_hinge(x, y, c, p, scale=1.0):
    """fer-mtl's earlier MD loss (not the paper's; kept as ``variant="margin_hinge"``):
    ``1/P sum_k max(0, d_own - d_k + lambda_jk)``, ``lambda_jk = scale * mean(d_own)
    * (1 + cos(c_j, c_k)) / 2``."""
    valid = y >= 0
    d2 = ((x[:, None] - c[None]) ** 2).sum(-1)
    own = d2[np.arange(len(y)), np.maximum(y, 0)]
    phi = own[valid].mean()
    cn = c / np.linalg.norm(c, axis=1, keepdims=True)
    cos = cn @ cn.T
    cc = ((c[:, None] - c[None]) ** 2).sum(-1)
    out = np.zeros(len(y))
    for i in np.flatnonzero(valid):
        j = y[i]
        order = [k for k in np.argsort(cc[j]) if k != j][:p]
        out[i] = np.mean([max(0.0, own[i] - d2[i, k] + scale * phi * (1 + cos[j, k]) / 2)
                          for k in order])
    return out


def test_md_margin_hinge_variant():
    rng = np.random.default_rng(5)
    c = rng.normal(size=(5, 4))
    x = c[rng.integers(0, 5, size=12)] + 0.8 * rng.normal(size=(12, 4))
    y = np.argmin(((x[:, None] - c[None]) ** 2).sum(-1), 1)
    y[:3] = rng.integers(0, 5, size=3)
    y[-1] = -1
    got = md_loss(x, y, c, 2, variant="margin_hinge", margin_scale=1.5).numpy()
    want = np_margin_hinge(x, y, c, 2, 1.5)
    assert want.sum() > 0
    np.testing.assert_allclose(got, want, rtol=1e-10)
    with pytest.raises(ValueError):
        md_loss(x, y, c, 2, variant="printed")


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
