"""FERSNet (models/fersnet/) and its face-identity embedding
(models/face_embedding.py): CPU, small preset, synthetic faces.  The paper's
equations and presets: tests/test_fersnet_paper.py.

Default run: unit tests (pairing, augmentation, the lambda4 ramp), the
ablations' short fits, then one short FERSNet fit (fixture ``short_fit``)
that must beat chance on held-out subjects and is shared by the mechanics
checks: losses go down, the identity network learns (the discriminator does not: xfail),
save/load, the exported signatures, ConvFLU gate maps and FES augmentation.

``slow`` (``make test-all``, ~10 more minutes on 2 cores): a 3500-step fit on
40 subjects (fixture ``synthesis_run``, the same run as ``make
bench-synthesis``) whose synthesized faces keep the source face and show the
target expression to a frozen expression oracle; and a 20-epoch fit with the
paper's (non-residual) decoder whose discriminator passes 0.6.
"""

from __future__ import annotations

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from benchmarks import synthesis as S
from components import contract
from models import face_embedding as fe
from models import fersnet as F
from models import inputs, training
from models.fersnet.fes import decode_faces, fes_training_dataset
from tests.method_helpers import accuracy, chance, synthetic_split

SIZE = 64                 # the small preset's image size
N_TRAIN, N_TEST = 16, 6
SHORT_EPOCHS = 7
SYN_TRAIN, SYN_EPOCHS = 40, 100  # the synthesis checks' fit (3500 steps)
P_TARGET_RISE, HIT_FACTOR = 0.08, 1.6


@pytest.fixture(scope="module")
def split():
    return synthetic_split(N_TRAIN, N_TEST, size=SIZE)


@pytest.fixture(scope="module")
def emb_path(split, tmp_path_factory):
    """A face embedding pre-trained on the training subjects, saved (the
    paper's way: a frozen identity network loaded from weights)."""
    path = str(tmp_path_factory.mktemp("fersnet_emb") / "face_emb.weights.h5")
    _, info = fe.train_face_embedding(split[0], image_size=32, filters=(8, 16, 32), dim=32,
                                      epochs=4, out_path=path)
    assert info["n_subjects"] == N_TRAIN
    return path


@pytest.fixture(scope="module")
def short_fit(split):
    """The small preset on 16 subjects for ``SHORT_EPOCHS`` (identity network
    trained in the fit on the subject ids)."""
    train, test = split
    return training.train(F.FERSNet(), train, test, preset="small", epochs=SHORT_EPOCHS,
                          seed=0)


def _images(samples):
    return decode_faces(samples, SIZE)


# --------------------------------------------------------------------------- #
# unit tests (no training)
# --------------------------------------------------------------------------- #
def test_pair_targets_use_same_subject_pairs_only():
    # subjects: 3 x s5, 2 x s7 (one unlabelled), 2 unknown (-1), 1 lone s9
    sid = tf.constant([5, 5, 5, 7, 7, -1, -1, 9], tf.int64)
    emo = tf.constant([0, 3, 4, 1, -1, 2, 5, 6], tf.int64)
    mask = tf.ones([8, 8])
    allowed = tf.constant([1, 1, 1, 1, 1, 1, 1, 0], tf.float32)  # contempt never seen
    for seed in range(20):
        target, partner, pm = (np.asarray(v) for v in F.pair_targets(
            sid, emo, mask, pair_prob=1.0, allowed=allowed, seed=[seed, 0]))
        s, e = sid.numpy(), emo.numpy()
        for i in range(8):
            if pm[i]:
                j = partner[i]
                assert j != i and s[j] == s[i] and s[i] >= 0 and e[j] >= 0
                assert target[i] == e[j]
            else:
                assert partner[i] == i
                assert target[i] != e[i] and target[i] != 7
        # samples 0-2 (s5) and 4 (unlabelled s7 sees labelled sample 3) have a partner;
        # 3 has none (its only partner is unlabelled), unknown / lone subjects never pair
        assert pm.tolist() == [1, 1, 1, 0, 1, 0, 0, 0]
    _, _, pm = F.pair_targets(sid, emo, mask, pair_prob=0.0, seed=[1, 2])
    assert not np.asarray(pm).any()


def test_pair_targets_keep_known_sequences_apart():
    # subject 5: sequences 10 (samples 0, 1) and 11 (sample 2), and sample 3 of
    # unknown sequence; subject 7: sample 4 in sequence 12 (alone)
    sid = tf.constant([5, 5, 5, 5, 7], tf.int64)
    seq = tf.constant([10, 10, 11, -1, 12], tf.int64)
    emo = tf.constant([0, 3, 4, 1, 2], tf.int64)
    for seed in range(20):
        _, partner, pm = (np.asarray(v) for v in F.pair_targets(
            sid, emo, tf.ones([5, 8]), seed=[seed, 0], sequence_id=seq))
        # 0 <-> 1 only; 2 and 4 are alone in their sequence; 3 pairs within subject 5
        assert pm.tolist() == [1, 1, 0, 1, 0]
        assert partner[0] == 1 and partner[1] == 0 and partner[3] in (0, 1, 2)


def test_pair_targets_never_pair_the_same_expression():
    """CK+'s sequences hold one expression (its last three frames): a partner of
    the same sequence would ask G to copy a near-duplicate and show D the same
    face as real and as fake. Such partners are skipped; ``within="subject"``
    pairs across the subject's sequences instead."""
    sid = tf.constant([5, 5, 5, 5, 7, 7], tf.int64)
    seq = tf.constant([10, 10, 11, 12, 13, 13], tf.int64)
    emo = tf.constant([2, 2, 4, 6, 1, -1], tf.int64)
    for seed in range(20):
        _, _, pm = F.pair_targets(sid, emo, tf.ones([6, 8]), seed=[seed, 0], sequence_id=seq)
        # 0 and 1 share sequence 10 and expression 2; 2, 3 are alone; 5 (unlabelled) may
        # take 4 as its target, 4 has no labelled partner of another expression
        assert np.asarray(pm).tolist() == [0, 0, 0, 0, 0, 1]
        target, partner, pm = (np.asarray(v) for v in F.pair_targets(
            sid, emo, tf.ones([6, 8]), seed=[seed, 0], sequence_id=seq, within="subject"))
        assert pm.tolist() == [1, 1, 1, 1, 0, 1]
        e = emo.numpy()
        for i in range(4):
            assert sid.numpy()[partner[i]] == 5 and e[partner[i]] != e[i]
            assert target[i] == e[partner[i]]
    with pytest.raises(ValueError, match="pair_within"):
        F.pair_targets(sid, emo, tf.ones([6, 8]), within="session")


def test_augment_same_transform_within_subject():
    cfg = F.FERSNet().config("small")
    assert cfg["image_size"] == SIZE
    img = np.random.default_rng(0).random((1, SIZE, SIZE, 1)).astype(np.float32)
    batch = {"image": tf.constant(np.repeat(img, 6, 0)),
             "subject_id": tf.constant([3, 3, 3, -1, -1, 8], tf.int64),
             "emotion": tf.zeros([6], tf.int64)}
    outs = [np.asarray(F.augment_batch(batch, cfg)["image"]) for _ in range(4)]
    for out in outs:
        assert out.shape == (6, SIZE, SIZE, 1) and 0 <= out.min() and out.max() <= 1
        np.testing.assert_allclose(out[0], out[1], atol=1e-6)
        np.testing.assert_allclose(out[0], out[2], atol=1e-6)
    # something actually moves
    assert any(np.abs(o - img).max() > 0.05 for out in outs for o in out)
    off = F.FERSNet().augment(batch, {**cfg, "augment": False})
    assert off is batch


def test_identity_ramp_values():
    ramp = F.IdentityLambdaRamp(0.1, 0.5, 5)
    assert [round(ramp.value(e), 3) for e in range(7)] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.5]


def test_identity_network_trained_in_the_fit_without_weights():
    """No ``face_embedding_weights``: the identity network ``f`` of Eq 9 is
    built trainable with its NormFace head (trained in the fit on subject
    ids, by its own optimizer: not a generator variable)."""
    cfg = F.FERSNet().config("small")
    model = F.FERSNetModel(cfg)
    assert model.embedder.trainable and model.id_head is not None
    assert model.id_head.n_classes == cfg["identity_buckets"]
    gen = {id(v) for v in model._gen_variables()}
    assert not any(id(v) in gen for v in model.embedder.trainable_variables)


def test_identity_embedding_from_weights_is_frozen(emb_path):
    model = F.FERSNetModel(F.FERSNet().config("small", face_embedding_weights=emb_path))
    assert not model.embedder.trainable and model.id_head is None
    assert model.cfg["face_embedding_arch"] == fe.read_arch(emb_path)


def test_identity_loss_off_is_warned(caplog):
    cfg = F.FERSNet().config("small", identity_embedding=False)
    with caplog.at_level(logging.WARNING, logger="models.fersnet"):
        model = F.FERSNetModel(cfg)
    assert model.embedder is None
    assert "L_idt" in caplog.text and "disabled" in caplog.text


def test_small_preset_decoder_is_residual_with_skips():
    """``G(x, t) = clip(x + tanh(conv(.)), 0, 1)`` with U-Net skips: with the
    last conv's kernel at zero and its bias b, G is the NumPy
    ``clip(x + tanh(b), 0, 1)`` whatever the target; b = 0 gives back x."""
    from models.registry import get_method

    cfg = get_method("fersnet").config("small")
    assert cfg["decoder_skips"] and cfg["residual_output"]
    model = F.FERSNetModel(cfg)
    assert [tuple(o.shape[1:3]) for o in model.encoder.outputs] == \
        [(4, 4), (4, 4), (32, 32), (16, 16), (8, 8)]
    delta = model.decoder.get_layer("synth_delta")
    kernel, _ = delta.get_weights()
    x = np.random.default_rng(0).uniform(size=(3, SIZE, SIZE, 1)).astype(np.float32)
    for b in (0.0, 0.4, -0.7):
        delta.set_weights([np.zeros_like(kernel), np.full([1], b, np.float32)])
        out = model.synthesize(tf.constant(x), tf.constant([0, 3, 6]))
        np.testing.assert_allclose(np.asarray(out), np.clip(x + np.tanh(b), 0.0, 1.0),
                                   atol=1e-6)


def test_small_preset_synthesis_side_has_no_batchnorm():
    """Small preset: the synthesis stream and the decoder are conv + LeakyReLU
    (no BN), the recognition stream keeps conv-BN-ReLU (the paper preset's
    BN + ReLU everywhere: tests/test_fersnet_paper.py)."""
    from models.registry import get_method

    def kinds(cfg, prefix):
        model = F.FERSNetModel(cfg)
        layers = model.encoder.layers + model.decoder.layers
        return {type(l).__name__ for l in layers if l.name.startswith(prefix)}

    small = get_method("fersnet").config("small")
    syn, dec, rec = kinds(small, "syn_b"), kinds(small, "dec"), kinds(small, "rec_b")
    assert "FusedBatchNorm" not in syn | dec and "LeakyReLU" in syn and "LeakyReLU" in dec
    assert {"FusedBatchNorm", "ReLU"} <= rec and "LeakyReLU" not in rec


def test_aligned_jobs_and_synthesis_scores():
    """Jobs pair expressions only within a capture sequence; the scores of a
    stub oracle match hand-computed values."""
    def sample(subject, sequence, emotion):
        return contract.FaceSample(image=b"png", dataset="d", uid=f"{subject}{sequence}{emotion}",
                                   emotion=emotion, subject=subject, sequence=sequence)

    samples = [sample("a", "s1", 0), sample("a", "s1", 3), sample("a", "s2", 6),
               sample("b", "s1", 3), sample("b", "s1", 6), sample("b", "s1", -1)]
    assert S.capture_sequences(samples) == [{0: 0, 3: 1}, {6: 2}, {3: 3, 6: 4}]
    jobs = S.aligned_synthesis_jobs(samples)
    assert jobs.tolist() == [[0, 3, 1], [1, 0, 0], [3, 6, 4], [4, 3, 3]]

    labels = [0, 3, 6, 3, 6, -1]
    x = np.arange(6, dtype=np.float32).reshape(6, 1, 1, 1) / 10
    fakes = x[jobs[:, 0]] + 0.05
    n = len(contract.EMOTIONS)
    real_probs = np.full((6, n), 0.01, np.float32)          # p(target) on a source: 0.01
    real_probs[np.arange(6), np.maximum(labels, 0)] = 0.9
    fake_probs = np.full((4, n), 0.05, np.float32)
    fake_probs[np.arange(4), [0, 6, 3, 3]] = 0.55             # first choice
    fake_probs[np.arange(4), [3, 0, 6, 6]] = 0.35             # second choice

    def oracle(images):
        return {"probabilities": real_probs if len(images) == len(x) else fake_probs}

    s = S.synthesis_scores(oracle, x, labels, fakes, jobs, n_expressions=7)
    # targets 3, 0, 6, 3; argmax 0, 6, 3, 3; without the source (0, 3, 3, 6): 3, 6, 6, 3
    assert s["pairs"] == 4 and s["hit"] == 0.25 and s["hit_excluding_source"] == 0.75
    assert s["chance"] == pytest.approx(1 / 7) and s["chance_excluding_source"] == pytest.approx(1 / 6)
    tgt = jobs[:, 1]
    assert s["p_target_fake"] == pytest.approx(fake_probs[np.arange(4), tgt].mean())
    assert s["p_target_real_source"] == pytest.approx(0.01)
    assert s["l1_fake_source"] == pytest.approx(0.05)
    assert s["l1_source_target"] == pytest.approx(np.abs(x[jobs[:, 0]] - x[jobs[:, 2]]).mean())


def test_face_embedding_is_frozen_and_separates_new_subjects(emb_path, split):
    emb = fe.load_face_embedding(emb_path)
    assert not emb.trainable and not emb.trainable_weights
    assert fe.read_arch(emb_path) == {"image_size": 32, "filters": [8, 16, 32], "dim": 32}
    auc = fe.verification_auc(emb, split[1], image_size=32)     # held-out subjects
    assert auc > 0.6, auc


# --------------------------------------------------------------------------- #
# trained model
# --------------------------------------------------------------------------- #
def test_short_fit_lowers_losses(short_fit):
    method, model, cfg, history = short_fit
    h = history.history
    assert len(h["cls_loss"]) == SHORT_EPOCHS
    assert h["cls_loss"][-1] < h["cls_loss"][0]
    assert h["rec"][-1] < h["rec"][0] and h["cyc"][-1] < h["cyc"][0]
    assert min(h["pairs"]) > 0.3          # the batches do hold same-subject pairs
    assert h["idt"][-1] > 0               # Eq 9 active (the data has identities)
    assert all(np.isfinite(v).all() for v in h.values())
    # the lambda4 ramp runs over the whole fit (idt_ramp_epochs None)
    ramp = F.IdentityLambdaRamp(cfg["lambda_idt_start"], cfg["lambda_idt_end"], SHORT_EPOCHS)
    assert float(model.lambda_idt) == pytest.approx(ramp.value(SHORT_EPOCHS - 1))
    assert float(model.lambda_idt) == pytest.approx(cfg["lambda_idt_end"])
    assert np.asarray(model.emotions_seen).tolist() == [1.0] * 7 + [0.0]


def test_short_fit_beats_chance_on_new_subjects(short_fit, split):
    """CI's check that FERSNet learns: held-out subjects (84 faces, 7
    expressions, chance 12 right) recognised well above chance."""
    method, model, cfg, history = short_fit
    test_ds = inputs.dataset_from_samples(split[1], SIZE, 64)
    acc = accuracy(method.inference_model(model, cfg), test_ds)
    assert acc > 2 * chance(), (acc, history.history["val_accuracy"])


def test_identity_network_learns_the_subjects(short_fit):
    """The in-fit identity network (the stand-in for the Light CNN of Eq 9)
    learns the 16 training subjects (chance 1/16)."""
    h = short_fit[3].history
    assert h["id_acc"][-1] > max(0.3, h["id_acc"][0]), h["id_acc"]


@pytest.mark.xfail(reason="measured: d_acc stays 0.50-0.58 in the joint fit; D's real and fake "
                          "gradients cancel (cosine -0.98 to -1.0) because the residual G's fakes "
                          "are near-copies of real faces of the batch; with the paper's decoder "
                          "it learns (the slow test below) (docs/methods.md, FERSNet, "
                          "does D learn?; benchmarks/fersnet_discriminator.py)", strict=False)
def test_discriminator_learns(short_fit):
    """The PatchGAN tells real from fake on the training batches: its
    accuracy (mean patch logit > 0 for real, < 0 for fake) rises above 0.6."""
    h = short_fit[3].history
    assert max(h["d_acc"]) > 0.6, h["d_acc"]


@pytest.mark.slow
def test_discriminator_learns_against_the_papers_decoder(split):
    """With the paper's decoder (no residual output, no U-Net skips: G's fakes
    are drawn, not copied from the input) the PatchGAN does learn in the joint
    fit: its accuracy on the training batches passes 0.6 within 20 epochs
    (measured 0.78 at epoch 19, seed 0; ~150 s on 2 cores)."""
    train, test = split
    _, _, _, history = training.train(
        F.FERSNet(), train, test, preset="small", epochs=20, seed=0,
        overrides={"residual_output": False, "decoder_skips": False})
    assert max(history.history["d_acc"]) > 0.6, history.history["d_acc"]


@pytest.mark.parametrize("overrides, absent, present", [
    ({"synthesis": False}, ("syn_b", "transfer"), ("rec_b",)),      # FERSNet w/o MTL
    ({"sharing": "hard"}, ("syn_b", "rec_b", "transfer"), ("shared_b",)),  # w/o ConvFLU
])
def test_ablations_build_and_train(overrides, absent, present, split):
    """Table VI's ablations: without the synthesis task (the recognition
    stream alone, L_cls only) and without ConvFLU (one stream shared by the
    classifier and the decoder, hard parameter sharing)."""
    train, test = split
    method, model, cfg, history = training.train(
        F.FERSNet(), train[:64], None, preset="small", epochs=2, steps_per_epoch=3,
        overrides=overrides, seed=0)
    names = [layer.name for layer in model.encoder.layers]
    for prefix in absent:
        assert not any(n.startswith(prefix) for n in names), (prefix, names)
    for prefix in present:
        assert sum(n.startswith(prefix) for n in names) > 0
    h = history.history
    assert all(np.isfinite(v).all() for v in h.values())
    probs = method.inference_model(model, cfg)(_images(test[:4]))["probabilities"]
    assert probs.shape == (4, contract.NUM_EMOTIONS)
    if overrides.get("synthesis") is False:
        assert model.decoder is None and set(h) == {"loss", "cls_loss", "accuracy"}
        assert method.extra_signatures(model, cfg) == {}
        with pytest.raises(ValueError, match="synthesis"):
            model.synthesize(_images(test[:1]), [0])
    else:
        assert {"gan_d", "rec", "idt"} <= set(h)
        fake = model.synthesize(tf.constant(_images(test[:2])), tf.constant([0, 1]))
        assert fake.shape == (2, SIZE, SIZE, 1)
        with pytest.raises(ValueError, match="ConvFLU"):
            F.gate_maps(model, _images(test[:1]))


def test_save_load_identical_predictions(short_fit, split, tmp_path):
    method, model, cfg, _ = short_fit
    x = tf.constant(_images(split[1][:16]))
    target = tf.constant(np.arange(16) % 7, tf.int64)
    path = str(tmp_path / "fersnet.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, F.FERSNetModel) and loaded.embedder is not None
    np.testing.assert_allclose(np.asarray(loaded.embedder(x)), np.asarray(model.embedder(x)),
                               atol=1e-6)
    p0 = np.asarray(model(x)["probabilities"])
    p1 = np.asarray(loaded(x)["probabilities"])
    np.testing.assert_allclose(p0, p1, atol=1e-6)
    np.testing.assert_allclose(np.asarray(method.inference_model(loaded, cfg)(x)["probabilities"]),
                               p0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(model.synthesize(x, target)),
                               np.asarray(loaded.synthesize(x, target)), atol=1e-6)
    assert float(loaded.lambda_idt) == pytest.approx(float(model.lambda_idt))
    # weights-only round trip (what training checkpoints use)
    wpath = str(tmp_path / "fersnet.weights.h5")
    model.save_weights(wpath)
    fresh = method.build(cfg)
    fresh.load_weights(wpath)
    np.testing.assert_allclose(np.asarray(fresh(x)["probabilities"]), p0, atol=1e-6)


def test_export_serving_and_synthesize(short_fit, split, tmp_path):
    from models import export

    method, model, cfg, _ = short_fit
    out_dir = str(tmp_path / "export")
    export.export_saved_model(method, model, cfg, out_dir)
    loaded = tf.saved_model.load(out_dir)
    assert "synthesize" in loaded.signatures
    samples = split[1][:5]
    serve = loaded.signatures["serving_default"]
    (name, spec), = serve.structured_input_signature[1].items()
    assert spec.dtype == tf.string
    res = serve(**{name: tf.constant([s.image for s in samples])})
    probs = np.asarray(res["probabilities"])
    assert probs.shape == (5, contract.NUM_EMOTIONS)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-4)
    ref = np.asarray(method.inference_model(model, cfg)(_images(samples))["probabilities"])
    np.testing.assert_allclose(probs, ref, atol=1e-4)
    synth = loaded.signatures["synthesize"](image=tf.constant(_images(samples)),
                                             target=tf.constant([0, 1, 2, 3, 4], tf.int64))
    img = np.asarray(synth["image"])
    assert img.shape == (5, SIZE, SIZE, 1)
    assert img.min() >= 0.0 and img.max() <= 1.0


@pytest.fixture(scope="module")
def synthesis_run():
    """FERSNet (small preset, no identity embedding) trained ``SYN_EPOCHS`` on
    the lab faces of ``SYN_TRAIN`` subjects (~9 min on 2 cores), as
    ``make bench-synthesis`` does; its fakes for every aligned (source,
    target) pair of the held-out subjects' capture sequences, scored by a
    frozen expression oracle (the baseline CNN trained on all subjects' real
    faces).  Returns ``(scores, x, fakes, jobs, test samples)``."""
    from models import training

    train, test = synthetic_split(SYN_TRAIN, N_TEST, size=SIZE)
    _, model, _, _ = training.train(F.FERSNet(), train, test, preset="small",
                                    epochs=SYN_EPOCHS, seed=0)
    oracle = S.expression_oracle(train + test, SIZE, epochs=6, seed=1)
    scores, x, fakes, jobs = S.judge_synthesis(model, oracle, test)
    return scores, x, fakes, jobs, test


@pytest.mark.slow
def test_synthesis_keeps_the_face(synthesis_run):
    """Residual output + skips: a fake stays close to its source face (the
    old bottleneck-only decoder returned a blur ~0.08 away), much closer than
    the same expression on another held-out subject."""
    scores, x, _, _, test = synthesis_run
    subjects = np.asarray([s.subject for s in test])
    other = np.roll(np.arange(len(x)), 14)           # same index, a different subject
    assert (subjects != subjects[other]).all()
    between_subjects = np.abs(x - x[other]).mean()
    assert scores["l1_fake_source"] < 0.25 * between_subjects, (scores, between_subjects)


@pytest.mark.slow
def test_synthesis_shows_the_target_expression(synthesis_run):
    """The frozen oracle reads the target in the fakes: its probability of
    the target rises well over its value on the real source, and with the
    source's own expression left out of its argmax the target wins clearly
    more often than chance (a blur that only flattens the oracle's output,
    or a change that ignores ``t``, stays at chance there)."""
    scores = synthesis_run[0]
    assert scores["p_target_fake"] > scores["p_target_real_source"] + P_TARGET_RISE, scores
    assert scores["hit_excluding_source"] > HIT_FACTOR * scores["chance_excluding_source"], \
        scores


def test_judge_synthesis_scores_the_models_fakes(short_fit, split):
    """``judge_synthesis`` feeds the oracle exactly ``G(x[src], t)`` for the
    aligned jobs of the samples (a recording stub oracle)."""
    _, model, _, _ = short_fit
    samples = split[1][:28]
    seen = []

    def oracle(images):
        seen.append(np.asarray(images))
        return {"probabilities": np.full((len(images), len(contract.EMOTIONS)), 0.125)}

    scores, x, fakes, jobs = S.judge_synthesis(model, oracle, samples)
    np.testing.assert_array_equal(jobs, S.aligned_synthesis_jobs(samples))
    assert len(jobs) > 0 and scores["pairs"] == len(jobs)
    np.testing.assert_allclose(x, _images(samples))
    np.testing.assert_allclose(fakes, F.synthesize(model, x[jobs[:, 0]], jobs[:, 1]), atol=1e-6)
    np.testing.assert_allclose(seen[0], fakes)
    assert scores["p_target_fake"] == pytest.approx(0.125)


def test_gate_maps(short_fit, split):
    _, model, cfg, _ = short_fit
    gates = F.gate_maps(model, _images(split[1][:3]))
    assert sorted(gates) == ["block1", "block2", "block3", "block4"]
    for k, f in enumerate(cfg["filters"], 1):
        g = gates[f"block{k}"]
        side = SIZE // 2 ** k
        assert g["z_x"].shape == (3, side, side, f)
        assert g["r_x"].shape == (3, side, side, f)
        for v in g.values():
            assert v.min() >= 0.0 and v.max() <= 1.0


def test_fes_balanced_synthesis_and_fine_tune(short_fit, split):
    _, model, cfg, _ = short_fit
    faces = [s for s in split[0] if s.subject in {split[0][0].subject}]   # one subject
    fes = F.synthesize_balanced(model, faces)
    present = sorted({s.emotion for s in faces})
    assert len(fes) == len(faces) * (len(present) - 1)
    counts = contract.counts(faces + fes)["emotion"]
    assert set(counts.values()) == {len(faces)}          # balanced
    assert all(s.dataset.endswith("_fes") and "_fes_" in s.uid for s in fes)
    assert all(s.subject == faces[0].subject for s in fes)
    assert {s.emotion for s in fes} <= set(present)

    dec_before = [np.array(v) for v in model.decoder.weights]
    cls_before = [np.array(v) for v in model.classifier.weights]
    hist, fes2 = F.fine_tune_with_fes(model, cfg, faces, epochs=1, batch_size=16)
    assert len(fes2) == len(fes) and "cls_loss" in hist.history
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(dec_before,
                                                                model.decoder.weights))
    assert any(not np.array_equal(a, np.asarray(b)) for a, b in zip(cls_before,
                                                                    model.classifier.weights))
    assert model.stage == "joint"


def test_fes_on_model_input_batches_matches_samples(short_fit, split):
    """The Trainer's FES path (Transform-output batches, no FaceSample objects)
    synthesizes the same jobs as the sample path and fine-tunes the recognition
    stream only."""
    _, model, cfg, _ = short_fit
    faces = split[0][:20]
    batches = inputs.dataset_from_samples(faces, SIZE, 8, datasets=("synth_lab",))
    arrays = F.synthesize_balanced_arrays(model, batches)
    expected = F.synthesize_balanced(model, faces)
    assert len(arrays["emotion"]) == len(expected)
    assert sorted(arrays["emotion"].tolist()) == sorted(s.emotion for s in expected)
    assert arrays["image"].dtype == np.uint8 and arrays["image"].shape[1:] == (SIZE, SIZE, 1)
    ds, steps = fes_training_dataset(batches, arrays, batch_size=8)
    assert steps == (len(faces) + len(expected)) // 8
    batch = next(iter(ds))
    assert batch["image"].shape == (8, SIZE, SIZE, 1) and batch["image"].dtype == tf.float32
    dec_before = [np.array(v) for v in model.decoder.weights]
    cls_before = [np.array(v) for v in model.classifier.weights]
    hist = F.FERSNet().post_fit(model, {**cfg, "fes_augment": True, "fes_epochs": 1},
                                train_data=batches)
    assert "cls_loss" in hist.history and model.stage == "joint"
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(dec_before,
                                                                model.decoder.weights))
    assert any(not np.array_equal(a, np.asarray(b)) for a, b in zip(cls_before,
                                                                    model.classifier.weights))
    assert F.FERSNet().post_fit(model, cfg, train_data=batches) is None   # flag off: no-op
