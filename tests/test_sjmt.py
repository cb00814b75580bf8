"""SJMT (models/sjmt.py): selective sigmoid CE over emotions ∪ AUs on two
heterogeneously labelled datasets. CPU, small preset, synthetic faces.

The equations (Eqs 1-3), the presets (Sec. 4), the compound setting (Sec. 4.3,
Table 4) and the classical multi-task / single-task variants (Fig. 1) are
tested from the paper (Pons & Masip 2018); docs/methods.md, SJMT.

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
from benchmarks import tables
from models import backbones, inputs, metrics, optimizers, preprocessing, sjmt, training
from models.losses import selective_sigmoid_cross_entropy
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
    assert len(names) == 25 + 8  # the paper's eight compounds (Sec. 4.3)
    assert "happily_surprised" in names and "angrily_disgusted" in names
    assert names[sjmt.compound_output_index(("surprise", "happiness"), ccfg)] == \
        "happily_surprised"
    all21 = [[a, b] for i, a in enumerate(contract.BASIC7) for b in contract.BASIC7[i + 1:]]
    assert len(sjmt.label_names(method.config("small", compound=True,
                                              compound_pairs=all21))) == 25 + 21
    net = method.build_net(ccfg)
    assert net.get_layer("logits").units == 33
    assert net.output["compound"].shape == (None, 8)


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
    assert labels.shape == (3, 33)
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


@pytest.mark.slow   # 6 s; tests/test_serving_graph.py exports sjmt in CI
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


# --------------------------------------------------------------------------- #
# the paper's equations (NumPy references written from the paper, not the code)
# --------------------------------------------------------------------------- #
def np_eq1(labels, logits, mask, normalizer):
    """Pons & Masip Eq 1 per sample, then the mean over samples with labels:

        E(y_hat, y, k) = -1/N sum_{j in L^k} [y_j log y_hat_j + (1 - y_hat_j) log(1 - y_hat_j)]   (1)
        y_hat_j = 1 / (1 + e^{-p_j})                                                            (2)

    "N is the number of classes". The printed ``(1 - y_hat_j)`` factor is read
    as ``(1 - y_j)`` (binary cross-entropy; docs/methods.md, SJMT). ``N`` = all
    classes (``"classes"``, as written) or ``|L^k|`` (``"labels"``)."""
    per = []
    for y, p, m in zip(labels, logits, mask):
        members = [j for j in range(len(p)) if m[j] > 0.5]  # L^k
        if not members:
            continue
        total = 0.0
        for j in members:
            y_hat = 1.0 / (1.0 + np.exp(-p[j]))  # Eq 2
            total += y[j] * np.log(y_hat) + (1.0 - y[j]) * np.log(1.0 - y_hat)
        n = len(p) if normalizer == "classes" else len(members)
        per.append(-total / n)
    return float(np.mean(per)) if per else 0.0


@pytest.mark.parametrize("normalizer", ["classes", "labels"])
def test_eq1_selective_sigmoid_cross_entropy_is_the_papers(normalizer):
    """Eq 1 (see :func:`np_eq1`) on random inputs — three datasets with
    different label sets L^k in one batch, garbage labels outside L^k, one
    sample without labels — and on a case computed by hand."""
    rng = np.random.default_rng(7)
    sets = [[0, 1, 2, 3], [3, 4, 5, 6, 7, 8, 9], [9], []]
    mask = np.zeros((8, 10))
    for i in range(8):
        mask[i, sets[i % 4]] = 1.0
    labels = np.where(mask > 0, rng.integers(0, 2, size=mask.shape), -7.0)
    logits = rng.normal(scale=2.0, size=mask.shape)
    got = float(selective_sigmoid_cross_entropy(labels, logits, mask, normalizer=normalizer))
    assert got == pytest.approx(np_eq1(labels, logits, mask, normalizer), rel=1e-10)
    # By hand: 4 classes, L^k = {0, 1}, p = (0, ln 3, 5, -5), y = (1, 0, -, -):
    # y_hat = (1/2, 3/4); E = -(log 1/2 + log 1/4) / N = 3 ln 2 / N.
    hand = float(selective_sigmoid_cross_entropy(
        [[1.0, 0.0, 1.0, 1.0]], [[0.0, np.log(3.0), 5.0, -5.0]], [[1.0, 1.0, 0.0, 0.0]],
        normalizer=normalizer))
    assert hand == pytest.approx(3 * np.log(2.0) / (4 if normalizer == "classes" else 2))


def test_eq2_outputs_are_sigmoids_of_the_last_layer():
    """Eq 2: ``y_hat_j = 1 / (1 + e^{-p_j})``, ``p_j`` the last layer's output;
    the ``aus`` and ``compound`` outputs are these scores."""
    method = sjmt.SJMT()
    cfg = method.config("small", image_size=16, width=4, compound=True)
    net = method.build_net(cfg)
    out = net(np.random.default_rng(0).random((3, 16, 16, 1)).astype("float32"))
    p = np.asarray(out["logits"], np.float64)
    y_hat = 1.0 / (1.0 + np.exp(-p))
    np.testing.assert_allclose(np.asarray(out["aus"]), y_hat[:, 8:25], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out["compound"]), y_hat[:, 25:], rtol=1e-5)


def test_eq3_au_accuracy_and_the_table_column(tmp_path):
    """Eq 3: ``accuracy_i = (TP_i + TN_i) / N``, i an AU, N the number of test
    images (here: those labelled for the AU). Reported beside F1, and shown
    in the benchmark table as "AU acc." beside "AU F1"."""
    rng = np.random.default_rng(3)
    truth = (rng.random((40, contract.NUM_AUS)) > 0.6).astype(np.float32)
    scores = rng.random((40, contract.NUM_AUS))
    mask = np.ones_like(truth)
    mask[:10, 0] = 0  # AU1 labelled on 30 images only
    got = metrics.au_metrics(truth, mask, scores)
    for i, name in enumerate(contract.AU_NAMES):
        lab = mask[:, i] > 0
        tp = np.sum((truth[lab, i] == 1) & (scores[lab, i] >= 0.5))
        tn = np.sum((truth[lab, i] == 0) & (scores[lab, i] < 0.5))
        assert got["au_accuracy"][name] == pytest.approx((tp + tn) / lab.sum())
    # By hand: AU1 truth (1, 0, 1, 0), scores (.9, .2, .3, .6): TP 1, TN 1, N 4.
    t = np.zeros((4, contract.NUM_AUS), np.float32)
    t[[0, 2], 0] = 1
    s = np.zeros((4, contract.NUM_AUS))
    s[:, 0] = [0.9, 0.2, 0.3, 0.6]
    m = np.zeros_like(t)
    m[:, 0] = 1
    assert metrics.au_metrics(t, m, s)["au_accuracy"]["AU1"] == 0.5
    row = {"method": "sjmt", "preset": "small", "fold": "holdout", "image_size": 48,
           "params": 1, "epochs": 1, "train_seconds": 6.0, "accuracy": 0.5,
           "balanced_accuracy": 0.4, "per_class_recall": {"happiness": 0.5},
           "au_mean_accuracy": 0.937, "au_mean_f1": 0.41}
    md = open(tables.write_table([row], str(tmp_path))["markdown"]).read()
    header = [c.strip() for c in md.splitlines()[2].split("|")]
    cells = [c.strip() for c in md.splitlines()[4].split("|")]
    assert header[header.index("AU F1") - 1] == "AU acc."
    assert cells[header.index("AU acc.")] == "93.7%" and cells[header.index("AU F1")] == "0.41"


# --------------------------------------------------------------------------- #
# presets against the paper
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("preset, depth, params", [("resnet32", 32, 0.46e6),
                                                   ("paper", 110, 1.7e6)])
def test_paper_presets_have_the_papers_values(preset, depth, params):
    cfg = sjmt.SJMT().config(preset)
    assert cfg["depth"] == depth  # Sec. 4.1-4.2, Tables 1-2: ResNet-32 and ResNet-110
    assert cfg["batch_size"] == 128  # Sec. 4: "a training batch size of 128 images"
    assert cfg["learning_rate"] == 0.05  # Sec. 4: "learning rate of 0.05"
    # Sec. 4: "exponential decay every 10,000 steps, for a total of 80,000 steps"
    assert cfg["lr_schedule"] == "exponential" and cfg["lr_staircase"]
    assert cfg["lr_decay_steps"] == 10_000 and sjmt.PAPER_TRAIN_STEPS == 80_000
    schedule = optimizers.learning_rate(cfg)
    rate = cfg["lr_decay_rate"]
    for step, lr in [(0, 0.05), (9_999, 0.05), (10_000, 0.05 * rate),
                     (79_999, 0.05 * rate ** 7)]:
        assert float(schedule(step)) == pytest.approx(lr, rel=1e-6), step
    # Sec. 4: "padding and random cropping"; "Input data of size 32x32".
    assert cfg["crop_padding"] > 0 and cfg["image_size"] == 32 and not cfg["flip"]
    # Eq 3 scores binary AU occurrence: binary targets.
    assert cfg["au_threshold"] == 0.5
    # Fig. 1(c) and Eq 1 with N the number of classes.
    assert cfg["variant"] == "sjmt" and cfg["loss_normalizer"] == "classes"
    # He et al. 2016, Table 6: ResNet-32 0.46M and ResNet-110 1.7M parameters.
    image = keras.Input((32, 32, 1))
    trunk = keras.Model(image, backbones.cifar_resnet(image, depth=depth, width=cfg["width"]))
    assert trunk.count_params() == pytest.approx(params, rel=0.03)


def test_paper_preset_binary_au_targets():
    """Binary AU occurrence targets (Sec. 4: "sample images with a certain AU
    present"): intensities at or above ``au_threshold`` are 1, below 0."""
    cfg = sjmt.SJMT().config("paper")
    aus = np.zeros((1, 17), np.float32)
    aus[0, :3] = [0.2, 0.5, 0.9]
    batch = {"emotion": tf.constant([-1], tf.int64), "emotion_mask": tf.zeros([1, 8]),
             "aus": aus, "aus_mask": tf.ones([1, 17])}
    labels, _ = sjmt.sjmt_targets(batch, cfg)
    assert labels.numpy()[0, 8:11].tolist() == [0.0, 1.0, 1.0]


# --------------------------------------------------------------------------- #
# compound emotions (Sec. 4.3, Table 4)
# --------------------------------------------------------------------------- #
#: Sec. 4.3: "the following compound emotions from the EmotioNet database".
PAPER_COMPOUND_NAMES = ("angrily disgusted", "angrily surprised", "fearfully angry",
                        "fearfully surprised", "happily disgusted", "happily surprised",
                        "sadly angry", "sadly disgusted")


def test_every_compound_the_paper_names_is_expressible():
    method = sjmt.SJMT()
    cfg = method.config("small", compound=True)  # default pairs: the paper's
    names = sjmt.label_names(cfg)[25:]
    assert names == [n.replace(" ", "_") for n in PAPER_COMPOUND_NAMES]
    by_name = method.config("small", compound=True, compound_pairs=list(PAPER_COMPOUND_NAMES))
    assert by_name["compound_pairs"] == cfg["compound_pairs"]
    assert sjmt.parse_compound("fearfully angry") == (contract.EMOTIONS.index("fear"),
                                                      contract.EMOTIONS.index("anger"))
    for name in PAPER_COMPOUND_NAMES:
        a, b = sjmt.parse_compound(name)
        multihot = np.zeros((1, 8), np.float32)
        multihot[0, [a, b]] = 1
        batch = {"emotion": tf.constant([a], tf.int64), "emotion_multihot": multihot,
                 "emotion_mask": tf.ones([1, 8]), "aus": tf.zeros([1, 17]),
                 "aus_mask": tf.zeros([1, 17])}
        labels = sjmt.sjmt_targets(batch, cfg)[0].numpy()[0]
        col = sjmt.compound_output_index(name, cfg)
        assert sjmt.label_names(cfg)[col] == name.replace(" ", "_")
        assert labels[25:].sum() == 1 and labels[col] == 1, name
        assert sjmt.compound_classes(multihot, cfg["compound_pairs"]).tolist() == [col - 25]
    with pytest.raises(ValueError, match="either order"):
        sjmt.resolve_pairs([("fear", "anger"), ("anger", "fear")])


def test_compound_accuracy_is_table4():
    """Table 4 (SJMT column): accuracy per compound = share of its images
    classified as it; "Mean compounds" = their mean; "All images" = share of
    all 722 images. Correct counts chosen to give the printed percentages."""
    number = (19, 25, 19, 17, 486, 36, 15, 105)  # Table 4, "Number images"
    correct = (8, 16, 12, 12, 382, 26, 3, 68)
    names = [n.replace(" ", "_") for n in PAPER_COMPOUND_NAMES]
    true, scores = [], []
    for c, (n, k) in enumerate(zip(number, correct)):
        for i in range(n):
            true.append(c)
            scores.append(np.eye(8)[c if i < k else (c + 1) % 8])
    true.append(-1)  # an image without a compound label is left out
    scores.append(np.eye(8)[0])
    got = sjmt.compound_accuracy(true, np.array(scores), names)
    paper = (42.1, 64.0, 63.1, 70.6, 78.6, 72.2, 20.0, 64.7)  # Table 4, SJMT ResNet-110
    for name, n, value in zip(names, number, paper):
        assert got["num_images"][name] == n
        assert 100 * got["per_compound"][name] == pytest.approx(value, abs=0.1), name
    assert got["per_compound"]["sadly_angry"] == 3 / 15
    assert 100 * got["mean_compounds"] == pytest.approx(59.4, abs=0.1)  # "Mean compounds"
    assert 100 * got["all_images"] == pytest.approx(73.1, abs=0.2)  # "All images"
    assert got["all_images"] == sum(correct) / sum(number)


# --------------------------------------------------------------------------- #
# variants: classical multi-task (Fig. 1(b)) and single task (Fig. 1(a))
# --------------------------------------------------------------------------- #
TINY = 16


def _tiny(variant, **overrides):
    """A tiny net; plain SGD without weight decay so that a step moves exactly
    the weights its loss reaches."""
    return sjmt.SJMT().config("small", variant=variant, image_size=TINY, width=4, momentum=0.0,
                              nesterov=False, weight_decay=0.0, learning_rate=0.1,
                              lr_schedule="constant", **overrides)


def _twins(cfg):
    method = sjmt.SJMT()
    cfg = dict(cfg, datasets=["lab_emotions", "wild_aus"])
    model, twin = method.build(cfg), method.build(cfg)
    twin.set_weights(model.get_weights())
    return method, cfg, model, twin


def _weights(model, layer):
    return [np.asarray(w) for w in model.net.get_layer(layer).weights]


def _assert_same(a, b):
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_classical_has_one_head_per_task(split):
    method = sjmt.SJMT()
    cfg = _tiny("classical")
    net = method.build_net(cfg)
    assert net.get_layer("emotion_logits").units == 8
    assert net.get_layer("au_logits").units == 17
    assert "logits" not in net.output
    model = method.build(cfg)
    assert set(method.inference_model(model, cfg).output) == {"probabilities", "aus",
                                                              "embedding"}
    single = method.build(_tiny("single"))
    assert set(method.inference_model(single, cfg).output) == {"probabilities", "embedding"}


def test_classical_alternates_dataset_batches(split):
    """Fig. 1(b): "the training is performed alternatively feeding the model with
    batches of images from each dataset". On a mixed batch, step 0 equals a step
    on dataset 0's samples alone (batch norm included) and leaves the AU head
    untouched; step 1 trains the AU head and leaves the emotion head."""
    a = [s for s in split[0] if s.dataset == "lab_emotions"][:4]
    b = [s for s in split[0] if s.dataset == "wild_aus"][:4]
    method, cfg, model, twin = _twins(_tiny("classical"))
    mixed, only_a = _batch(a + b, size=TINY), _batch(a, size=TINY)
    au0, emo0 = _weights(model, "au_logits"), _weights(model, "emotion_logits")
    model.train_step(mixed)
    twin.train_step(only_a)
    _assert_same(model, twin)
    assert all((x == y).all() for x, y in zip(au0, _weights(model, "au_logits")))
    emo1 = _weights(model, "emotion_logits")
    assert not all((x == y).all() for x, y in zip(emo0, emo1))
    model.train_step(mixed)
    assert all((x == y).all() for x, y in zip(emo1, _weights(model, "emotion_logits")))
    assert not all((x == y).all() for x, y in zip(au0, _weights(model, "au_logits")))


def test_single_task_trains_on_the_emotion_dataset_only(split):
    """Ablation "single task" (Fig. 1(a)): every step uses only the samples of
    datasets that label emotions; a batch without any trains nothing."""
    a = [s for s in split[0] if s.dataset == "lab_emotions"][:4]
    b = [s for s in split[0] if s.dataset == "wild_aus"][:4]
    method, cfg, model, twin = _twins(_tiny("single"))
    for _ in range(2):
        model.train_step(_batch(a + b, size=TINY))
        twin.train_step(_batch(a, size=TINY))
    _assert_same(model, twin)
    only_b = _batch(b, size=TINY)
    nothing = sjmt.select_samples(only_b, sjmt.step_samples(only_b, "single", 0))
    out = model.net(nothing["image"], training=False)
    assert float(model.compute_batch_loss(nothing, out, training=False)["loss"]) == 0.0
    emo = _weights(model, "emotion_logits")
    model.train_step(only_b)
    assert all((x == y).all() for x, y in zip(emo, _weights(model, "emotion_logits")))
