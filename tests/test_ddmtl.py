"""DDMTL (models/ddmtl.py): CPU, small preset, synthetic faces.

One model is trained per module (fixture ``trained``, through
``models.training.train``) and shared by the learning, save/load and export
checks; the pair-forming and loss-weighting checks build nothing.

The faces use full-intensity expression prototypes (``min_intensity=1``):
the default subtle expressions need far more training than a < 60 s CPU test
allows.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from components import contract, synthetic
from models import ddmtl as D
from models import inputs
from models.losses import image_keys, masked_softmax_cross_entropy
from tests.method_helpers import accuracy, assert_export_answers_raw_images, chance, images_of

SIZE = 50
N_TRAIN, N_TEST = 32, 6
EPOCHS = 12


def _gen(n, offset):
    return list(synthetic.generate(n_subjects=n, samples_per_emotion=2, domains=("lab",),
                                   emotions=contract.BASIC7, size=48, seed=0,
                                   subject_offset=offset, min_intensity=1.0))


@pytest.fixture(scope="module")
def split():
    return _gen(N_TRAIN, 0), _gen(N_TEST, 100)


@pytest.fixture(scope="module")
def trained(split):
    from models import training

    return training.train(D.DDMTL(), split[0], preset="small", epochs=EPOCHS, seed=0)


def _images(samples):
    return images_of(samples, SIZE)


# --------------------------------------------------------------------------- #
# pairs and weights (no training)
# --------------------------------------------------------------------------- #
def _labels():
    # 7 classes x 4 samples + 4 unlabelled
    return tf.constant(np.r_[np.repeat(np.arange(7), 4), [-1] * 4], tf.int64)


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_pairs_follow_the_configured_ratio(ratio):
    y = _labels().numpy()
    n_labelled = int((y >= 0).sum())
    for seed in range(5):
        partner, same, valid = (np.asarray(v) for v in D.form_pairs(_labels(), ratio, seed=seed))
        assert valid.tolist() == (y >= 0).tolist()            # every labelled anchor pairs
        assert same.sum() == round(ratio * n_labelled)        # exactly the configured share
        for i in np.flatnonzero(valid):
            j = partner[i]
            assert j != i and y[j] >= 0
            assert (y[j] == y[i]) == bool(same[i])


def test_pairs_fall_back_when_the_batch_cannot_supply_a_kind():
    # class 0 has a single sample (no same partner); one-class batch (no different one)
    partner, same, valid = (np.asarray(v) for v in D.form_pairs(
        tf.constant([0, 1, 1, 2, 2], tf.int64), 1.0, seed=0))
    assert valid.all() and not same[0] and same[1:].all()
    partner, same, valid = (np.asarray(v) for v in D.form_pairs(
        tf.constant([3, 3, 3], tf.int64), 0.0, seed=0))
    assert valid.all() and same.all()
    _, _, valid = D.form_pairs(tf.constant([4, -1], tf.int64), 0.5, seed=0)
    assert not np.asarray(valid).any()                        # nobody to pair with


def _loss_inputs(seed=0):
    rng = np.random.default_rng(seed)
    y = _labels()
    b = int(y.shape[0])
    logits = tf.constant(rng.normal(size=(b, 8)), tf.float32)
    emb = tf.constant(rng.normal(size=(b, 16)), tf.float32)
    mask = tf.constant(np.tile(contract.label_set_mask(contract.BASIC7), (b, 1)))
    mask = tf.where((y >= 0)[:, None], mask, 0.0)
    partner, same, valid = D.form_pairs(y, 0.5, seed=seed)
    return logits, emb, y, mask, partner, same, valid


def test_weights_scale_the_softmax_terms_only():
    logits, emb, y, mask, partner, same, valid = _loss_inputs()
    base = D.ddmtl_loss(logits, emb, y, mask, partner, same, valid, None, 0.01, 1.0)
    ones = D.ddmtl_loss(logits, emb, y, mask, partner, same, valid, tf.ones([32]), 0.01, 1.0)
    two = D.ddmtl_loss(logits, emb, y, mask, partner, same, valid, 2 * tf.ones([32]), 0.01, 1.0)
    np.testing.assert_allclose(float(ones["loss"]), float(base["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(two["softmax"]), 2 * float(base["softmax"]), rtol=1e-6)
    np.testing.assert_allclose(float(two["contrastive"]), float(base["contrastive"]), rtol=1e-6)
    np.testing.assert_allclose(float(base["loss"]),
                               float(base["softmax"]) + 0.01 * float(base["contrastive"]),
                               rtol=1e-6)

    # Eq. 1 by hand: sum over pairs of W_i SLoss_i + W_j SLoss_j, over |P|
    w = np.random.default_rng(1).uniform(0.2, 2.0, 32).astype(np.float32)
    got = D.ddmtl_loss(logits, emb, y, mask, partner, same, valid, tf.constant(w), 0.0, 1.0)
    sl = np.asarray(masked_softmax_cross_entropy(y, logits, mask)["per_sample"])
    p, v = np.asarray(partner), np.asarray(valid)
    expect = sum(w[i] * sl[i] + w[p[i]] * sl[p[i]] for i in np.flatnonzero(v)) / v.sum()
    np.testing.assert_allclose(float(got["softmax"]), expect, rtol=1e-5)
    assert float(got["loss"]) == pytest.approx(float(got["softmax"]))      # beta = 0


def test_reachability_down_weights_an_outlier_and_its_loss():
    rng = np.random.default_rng(0)
    y = tf.constant(np.repeat(np.arange(4), 6), tf.int64)
    centres = rng.normal(size=(4, 8)) * 5
    emb = centres[np.asarray(y)] + rng.normal(size=(24, 8)) * 0.3
    emb[0] += 6.0                                              # sample 0 far from its class
    w = np.asarray(D.sample_weights(tf.constant(emb, tf.float32), y, k=3))
    assert w[0] < 0.5 * np.median(w[1:6])
    # W multiplies SLoss: the outlier's mistakes cost less than with W = 1
    logits = tf.constant(rng.normal(size=(24, 8)), tf.float32)
    mask = tf.ones([24, 8])
    partner, same, valid = D.form_pairs(y, 0.5, seed=0)
    only0 = tf.constant(np.eye(24, dtype=np.float32)[0])
    with_w = D.ddmtl_loss(logits, tf.constant(emb, tf.float32), y, mask, partner, same, valid,
                          only0 * w, 0.0)
    without = D.ddmtl_loss(logits, tf.constant(emb, tf.float32), y, mask, partner, same, valid,
                           only0, 0.0)
    np.testing.assert_allclose(float(with_w["softmax"]), w[0] * float(without["softmax"]),
                               rtol=1e-5)
    # unlabelled samples get weight 0
    w2 = np.asarray(D.sample_weights(tf.constant(emb, tf.float32),
                                     tf.concat([y[:-1], [-1]], 0), k=3))
    assert w2[-1] == 0 and (w2[1:-1] > 0).all()


def test_memory_bank_mode_fills_the_bank():
    method = D.DDMTL()
    cfg = method.config("small", weights_from="bank", bank_size=40, filters=[4, 4, 4, 4],
                        embedding_dim=8)
    model = method.build(cfg)
    y = _labels()
    batch = {"image": tf.random.uniform([32, SIZE, SIZE, 1], seed=1), "emotion": y,
             "emotion_mask": tf.ones([32, 8])}
    out = model(batch["image"], training=True)
    terms = model.compute_batch_loss(batch, out, training=True)
    assert np.isfinite(float(terms["loss"]))
    labels = np.asarray(model.bank.labels)
    assert (labels[:28] == np.asarray(y)[:28]).all() and (labels[28:] == -1).all()
    assert int(model.bank.pointer) == 28


# --------------------------------------------------------------------------- #
# trained model
# --------------------------------------------------------------------------- #
def test_fit_lowers_loss_and_beats_chance(trained, split):
    method, model, cfg, history = trained
    h = history.history
    assert h["loss"][-1] < 0.8 * h["loss"][0]
    assert h["same_pairs"][-1] == pytest.approx(cfg["same_pair_ratio"], abs=0.05)
    test_ds = inputs.dataset_from_samples(split[1], SIZE, 64)
    infer = method.inference_model(model, cfg)
    acc = accuracy(infer, test_ds)
    assert acc > 2 * chance(), acc
    out = infer(next(iter(test_ds))["image"])
    assert out["embedding"].shape[-1] == cfg["embedding_dim"]
    np.testing.assert_allclose(np.asarray(out["probabilities"]).sum(-1), 1.0, atol=1e-5)


def test_save_load_identical_predictions(trained, split, tmp_path):
    """Training model: weights round trip (``save_weights``/``load_weights``, as the
    training checkpoints); inference model: ``.keras`` round trip (registered
    layers, no custom_objects)."""
    method, model, cfg, _ = trained
    x = _images(split[1][:16])
    ref = method.inference_model(model, cfg)(x)
    wpath = str(tmp_path / "ddmtl.weights.h5")
    model.save_weights(wpath)
    fresh = method.build(cfg)
    fresh.load_weights(wpath)
    out = method.inference_model(fresh, cfg)(x)
    for k in ("probabilities", "embedding"):
        np.testing.assert_allclose(np.asarray(out[k]), np.asarray(ref[k]), atol=1e-6)

    kpath = str(tmp_path / "ddmtl_inference.keras")
    method.inference_model(model, cfg).save(kpath)
    loaded = keras.saving.load_model(kpath)
    out = loaded(x)
    for k in ("probabilities", "embedding"):
        np.testing.assert_allclose(np.asarray(out[k]), np.asarray(ref[k]), atol=1e-6)


def test_export_answers_raw_images(trained, split, tmp_path):
    method, model, cfg, _ = trained
    res = assert_export_answers_raw_images(method, model, cfg, split[1][:5], tmp_path / "export")
    assert res["embedding"].shape == (5, cfg["embedding_dim"])


def test_paper_preset_has_the_papers_values():
    """Zheng et al.: the values the paper gives (section in each comment)."""
    from models.layers import LocalResponseNormalization

    method = D.DDMTL()
    cfg = method.config("paper")
    assert cfg["image_size"] == 50                 # Sec. 4.1: cropped to 50 x 50 pixels
    assert cfg["optimizer"] == "sgd"               # Sec. 3.4, Sec. 4: stochastic gradient descent
    assert cfg["momentum"] == 0.0                  # Eq 9: Theta^{i+1} = Theta^i - eta grad
    assert cfg["learning_rate"] == 0.05            # Sec. 4: initial learning rate 0.05
    assert 0 < cfg["lr_decay"] < 1                 # Sec. 4: "decayed per epoch" (no factor)
    assert cfg["beta"] == 0.01                     # Sec. 4.1, Fig. 4: beta = 0.01
    assert cfg["margin"] > 0                       # Eq 7: m > 0
    assert cfg["weights_from"] != "none" and cfg["pcon_accumulate"]   # Eq 4: sum over T
    net = D.build_branch(cfg)
    assert net.input_shape == (None, 50, 50, 1)    # Sec. 4.1: 8-bit grey
    kinds = [type(l).__name__ for l in net.layers
             if isinstance(l, (keras.layers.Conv2D, keras.layers.MaxPooling2D,
                               LocalResponseNormalization, keras.layers.Dense))]
    # Sec. 4: 4 conv layers, each followed by max-pooling and LRN, one FC, softmax
    assert kinds == ["Conv2D", "MaxPooling2D", "LocalResponseNormalization"] * 4 + ["Dense"] * 2
    cb = method.callbacks(cfg, 10)
    assert len(cb) == 1 and isinstance(cb[0], D.EpochDecay)


def test_contrastive_term_is_the_mean_of_eq7_over_pairs():
    """Eq 8 ``L = SL + beta CL`` with Eq 7 ``CL = 0.5 (1 - Y) D^2 + 0.5 Y max(0, m - D)``,
    ``Y = 1`` for a pair of different emotions, averaged over the batch's pairs."""
    logits, emb, y, mask, partner, same, valid = _loss_inputs(3)
    got = D.ddmtl_loss(logits, emb, y, mask, partner, same, valid, None, 0.5, 6.0)
    e, p, v, yy = (np.asarray(t) for t in (emb, partner, valid, y))
    cl = []
    for i in np.flatnonzero(v):
        d = np.linalg.norm(e[i] - e[p[i]])
        dissimilar = float(yy[i] != yy[p[i]])
        cl.append(0.5 * (1 - dissimilar) * d ** 2 + 0.5 * dissimilar * max(0.0, 6.0 - d))
    np.testing.assert_allclose(float(got["contrastive"]), np.mean(cl), rtol=1e-5)
    np.testing.assert_allclose(float(got["loss"]), float(got["softmax"]) + 0.5 * np.mean(cl),
                               rtol=1e-5)


def test_pcon_store_accumulates_over_training_steps():
    """Eq 4 ``W_k = G(sum_{t=1..T} pCON)``: each training step adds one pCON per
    labelled sample to its slot (T += 1); evaluation reads without writing."""
    method = D.DDMTL()
    cfg = method.config("small", filters=[4, 4, 4, 4], embedding_dim=8, pcon_store_size=997)
    model = method.build(cfg)
    assert model.pcon_store is not None
    y = _labels()
    batch = {"image": tf.random.uniform([32, SIZE, SIZE, 1], seed=1), "emotion": y,
             "emotion_mask": tf.ones([32, 8])}
    slots = np.asarray(image_keys(batch["image"], 997))
    for step in range(3):
        out = model(batch["image"], training=True)
        model.compute_batch_loss(batch, out, training=True)
        counts = np.asarray(model.pcon_store.counts)[slots]
        np.testing.assert_array_equal(counts[:28], step + 1)    # labelled samples
        np.testing.assert_array_equal(counts[28:], 0)           # unlabelled: none
    model.compute_batch_loss(batch, model(batch["image"]), training=False)
    np.testing.assert_array_equal(np.asarray(model.pcon_store.counts)[slots][:28], 3)
    off = method.build(method.config("small", pcon_accumulate=False, filters=[4, 4, 4, 4],
                                     embedding_dim=8))
    assert off.pcon_store is None


def test_epoch_decay_multiplies_lr_each_epoch():
    """``lr = lr0 * decay ** epoch``; a resumed fit (a new callback, the optimizer's
    learning rate restored decayed from the checkpoint) continues the curve."""
    class Fake:
        optimizer = keras.optimizers.SGD(0.05)

    cb = D.EpochDecay(0.05, 0.9)
    cb.set_model(Fake())
    for epoch in range(3):
        cb.on_epoch_begin(epoch)
        assert float(Fake.optimizer.learning_rate) == pytest.approx(0.05 * 0.9 ** epoch)
    resumed = D.EpochDecay(0.05, 0.9)       # lr is now 0.05 * 0.9 ** 2, as restored
    resumed.set_model(Fake())
    resumed.on_epoch_begin(3)
    assert float(Fake.optimizer.learning_rate) == pytest.approx(0.05 * 0.9 ** 3)
