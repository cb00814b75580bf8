"""SJMT (models/sjmt.py): selective sigmoid CE over emotions ∪ AUs on two
heterogeneously labelled datasets. CPU, small preset, synthetic faces.

The two-dataset setting: synthetic *lab* faces keep only their emotion
(dataset ``lab_emotions``, AU mask 0) and *wild* faces keep only their AUs
(dataset ``wild_aus``, emotion -1). One SJMT is trained on the mixture per
module (fixture ``trained``) and shared by the checks.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from components import contract
from models import inputs, preprocessing, sjmt, training
from tests.method_helpers import chance, synthetic_split

SIZE = 48
EPOCHS = 7
BATCH = 16
# Shared with tests/test_baseline.py (same lru_cache entry when run together).
SPLIT = dict(n_train=40, n_test=8, size=SIZE, domains=("lab", "wild"), samples_per_emotion=1)
NO_AUS = np.zeros(contract.NUM_AUS, np.float32)
NO_EMOTIONS = np.zeros(contract.NUM_EMOTIONS, np.float32)


def emotion_only(s):
    return dataclasses.replace(s, dataset="lab_emotions", aus=NO_AUS, aus_mask=NO_AUS)


def aus_only(s):
    return dataclasses.replace(s, dataset="wild_aus", emotion=-1, emotion_mask=NO_EMOTIONS)


def two_datasets(samples):
    return ([emotion_only(s) for s in samples if s.domain == "lab"]
            + [aus_only(s) for s in samples if s.domain == "wild"])


@pytest.fixture(scope="module")
def split():
    train, test = synthetic_split(**SPLIT)
    # Held-out subjects, lab faces with their true emotions and AUs.
    return two_datasets(train), [s for s in test if s.domain == "lab"]


@pytest.fixture(scope="module")
def trained(split):
    return training.train("sjmt", split[0], preset="small", epochs=EPOCHS, batch_size=BATCH,
                          seed=0)


def _batch(samples, datasets=("lab_emotions", "wild_aus"), size=SIZE):
    return next(iter(inputs.dataset_from_samples(samples, size, len(samples), datasets)))


def _images(samples):
    return preprocessing.decode_image(tf.constant([s.image for s in samples]), SIZE)


# --------------------------------------------------------------------------- #
# label space and loss (no training)
# --------------------------------------------------------------------------- #
def test_label_space_and_compound_pairs():
    method = sjmt.SJMT()
    cfg = method.config("small")
    assert len(sjmt.label_names(cfg)) == 25
    ccfg = method.config("small", compound=True)
    names = sjmt.label_names(ccfg)
    assert len(names) == 25 + 15
    assert "happily_surprised" in names and "angrily_disgusted" in names
    assert names[sjmt.compound_output_index(("surprise", "happiness"), ccfg)] == \
        "happily_surprised"
    all21 = [[a, b] for i, a in enumerate(contract.BASIC7) for b in contract.BASIC7[i + 1:]]
    assert len(sjmt.label_names(method.config("small", compound=True,
                                              compound_pairs=all21))) == 25 + 21
    net = method.build_net(ccfg)
    assert net.get_layer("logits").units == 40
    assert net.output["compound"].shape == (None, 15)


def test_compound_targets_from_multi_hot_emotions():
    pairs = sjmt.resolve_pairs(None)
    hs = pairs.index((3, 5))  # happiness + surprise
    multihot = np.zeros((3, 8), np.float32)
    multihot[0, [3, 5]] = 1  # happily surprised
    multihot[1, 3] = 1  # happy, from a compound-labelling dataset
    multihot[2, 3] = 1  # happy, from a basic-only dataset
    mask = np.ones((3, 8), np.float32)
    t, m = (x.numpy() for x in sjmt.compound_targets(multihot, mask, [1, 1, 0], pairs))
    assert t[0, hs] == 1 and t[0].sum() == 1 and t[1].sum() == 0
    assert m[0].all() and m[1].all() and not m[2].any()
    # Through sjmt_targets: a multi-hot sample is a compound sample by itself,
    # a dataset listed in compound_datasets makes all its samples compound ones.
    cfg = sjmt.SJMT().config("small", compound=True)
    batch = {"emotion": tf.constant([3, 3, 3], tf.int64), "emotion_multihot": multihot,
             "emotion_mask": mask, "aus": tf.zeros([3, 17]), "aus_mask": tf.zeros([3, 17]),
             "dataset_id": tf.constant([0, 1, 0], tf.int64)}
    labels, lmask = (x.numpy() for x in sjmt.sjmt_targets(batch, cfg, compound_dataset_ids=(1,)))
    assert labels.shape == (3, 40)
    assert lmask[0, 25:].all() and lmask[1, 25:].all() and not lmask[2, 25:].any()
    assert labels[0, 25 + hs] == 1 and labels[0, [3, 5]].tolist() == [1, 1]


def test_never_penalised_on_labels_its_dataset_lacks(split):
    """Dataset A (emotion only) and B (AUs only) in one batch: the loss gradient
    wrt every masked logit is exactly zero, and changing masked targets leaves
    the loss unchanged."""
    train = split[0]
    a = [s for s in train if s.dataset == "lab_emotions"][:3]
    b = [s for s in train if s.dataset == "wild_aus"][:3]
    batch = _batch(a + b)
    cfg = sjmt.SJMT().config("small")
    labels, mask = sjmt.sjmt_targets(batch, cfg)
    mask = mask.numpy()
    # A: emotions only — its label set is the 7 basic emotions (no contempt)
    assert not mask[:3, 8:].any() and mask[:3, :7].all() and not mask[:3, 7].any()
    assert not mask[3:, :8].any() and mask[3:, 8:].all()  # B: AUs only
    logits = tf.Variable(tf.random.stateless_normal([6, 25], seed=[3, 4]))
    # The loss reads only the batch and the logits: a tiny network will do.
    model = sjmt.SJMT().build(dict(cfg, image_size=16, width=4))

    def loss_of(b):
        return model.compute_batch_loss(b, {"logits": logits}, training=False)["loss"]

    with tf.GradientTape() as tape:
        loss = loss_of(batch)
    grad = tape.gradient(loss, logits).numpy()
    assert (grad[mask == 0] == 0).all()
    assert (np.abs(grad[mask == 1]) > 0).all()
    # Garbage in the masked targets: A's AUs random, B's emotion set.
    rng = np.random.default_rng(0)
    changed = dict(batch)
    aus = batch["aus"].numpy().copy()
    aus[:3] = rng.random((3, 17))
    emotion = batch["emotion"].numpy().copy()
    emotion[3:] = [0, 3, 5]
    changed["aus"] = tf.constant(aus)
    changed["emotion"] = tf.constant(emotion)
    assert float(loss_of(changed)) == float(loss)


def test_unseen_emotions_get_zero_probability():
    method = sjmt.SJMT()
    cfg = method.config("small", image_size=16, width=4)
    model = method.build(cfg)
    mask = np.zeros((1, 8), np.float32)
    mask[0, :7] = 1
    model.net.get_layer("label_set").update(mask)
    probs = np.asarray(method.inference_model(model, cfg)(np.zeros((2, 16, 16, 1)))[
        "probabilities"])
    assert (probs[:, 7] == 0).all()
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


# --------------------------------------------------------------------------- #
# trained on the two datasets
# --------------------------------------------------------------------------- #
def test_fit_learns_emotions_from_dataset_a(trained, split):
    method, model, cfg, history = trained
    loss = history.history["loss"]
    assert loss[-1] < 0.85 * loss[0]
    emotion_loss = history.history["emotion_loss"]
    assert emotion_loss[-1] < 0.85 * emotion_loss[0]
    result = training.evaluate(method, model, cfg, split[1])
    assert result["accuracy"] > 2 * chance(), result


def test_predicts_aus_for_emotion_only_images(trained, split):
    """The AU outputs are trained by the wild AU-only faces only; on held-out
    lab faces (whose dataset has no AU labels) they follow the true AUs.

    Statistic: the pooled within-AU correlation (each AU's mean over the test
    set removed from predictions and truth, then one Pearson correlation over
    all (image, AU) pairs), so a predictor that only knows each AU's base rate
    scores 0, and the AUs that vary most (the expressions' own AUs) weigh most.
    """
    method, model, cfg, _ = trained
    test = split[1]
    aus = np.asarray(method.inference_model(model, cfg)(_images(test))["aus"])
    truth = np.stack([s.aus for s in test])
    p, t = aus - aus.mean(0), truth - truth.mean(0)
    corr = float((p * t).sum() / np.sqrt((p * p).sum() * (t * t).sum()))
    assert corr > 0.15, corr


def test_save_load_identical_predictions(trained, split, tmp_path):
    method, model, cfg, _ = trained
    x = _images(split[1][:6])
    infer = method.inference_model(model, cfg)
    ref = {k: np.asarray(v) for k, v in infer(x).items()}
    assert set(ref) == {"probabilities", "aus", "embedding"}
    np.testing.assert_allclose(ref["probabilities"].sum(-1), 1.0, atol=1e-5)
    path = str(tmp_path / "sjmt.keras")
    infer.save(path)
    got = keras.models.load_model(path)(x)
    for k in ref:
        np.testing.assert_array_equal(np.asarray(got[k]), ref[k])
    wpath = str(tmp_path / "sjmt.weights.h5")
    model.save_weights(wpath)
    fresh = method.build(cfg)
    fresh.load_weights(wpath)
    np.testing.assert_array_equal(np.asarray(method.inference_model(fresh, cfg)(x)["aus"]),
                                  ref["aus"])


def test_exported_signature_answers_raw_images(trained, split, tmp_path):
    from models import export

    method, model, cfg, _ = trained
    samples = split[1][:5]
    out = export.load_and_predict(
        export.export_saved_model(method, model, cfg, str(tmp_path / "1")),
        [s.image for s in samples])
    ref = method.inference_model(model, cfg)(_images(samples))
    np.testing.assert_allclose(out["probabilities"], np.asarray(ref["probabilities"]),
                               atol=1e-5)
    np.testing.assert_allclose(out["aus"], np.asarray(ref["aus"]), atol=1e-5)
    assert out["aus"].shape == (5, contract.NUM_AUS)
