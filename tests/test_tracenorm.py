"""Trace-norm deep MTL + adversarial domain alignment (models/tracenorm.py).

Synthetic faces with two DISJOINT tasks: ``synth_lab`` faces carry the emotion
only (zero ``landmarks_mask``), ``synth_wild`` faces the 68 landmarks only
(``emotion = -1``, zero ``emotion_mask``). One small model is trained once per
module (graph tracing of two ResNet-34s is the expensive part); the gradient
checks run eagerly.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from components import contract  # noqa: E402
from tests import method_helpers as mh  # noqa: E402

EPOCHS = 16
SIZE = 96  # the small preset's input; faces are drawn at 48 px and upsampled
N_TRAIN, N_TEST = 40, 8  # subjects; 1 face per emotion and domain each


def _disjoint(samples):
    """Lab faces keep only the emotion, wild faces only the landmarks."""
    out = []
    for s in samples:
        if s.domain == "lab":
            out.append(dataclasses.replace(
                s, landmarks=np.zeros((contract.NUM_LANDMARKS, 2), np.float32),
                landmarks_mask=0.0))
        else:
            out.append(dataclasses.replace(
                s, emotion=-1, emotion_mask=np.zeros(contract.NUM_EMOTIONS, np.float32)))
    return out


@pytest.fixture(scope="module")
def data():
    # Full-intensity expression prototypes (min_intensity=1): two ResNet-34s at
    # width 8 get ~200 steps here, too few to generalise across subjects on the
    # generator's default 0.4-1.0 intensities (held-out accuracy 20-30 %).
    from components import synthetic

    def gen(n, offset):
        return _disjoint(synthetic.generate(
            n_subjects=n, samples_per_emotion=1, domains=("lab", "wild"),
            emotions=contract.BASIC7, size=48, seed=0, subject_offset=offset,
            min_intensity=1.0))

    train, test = gen(N_TRAIN, 0), gen(N_TEST, N_TRAIN)
    return {"train": train, "test": test, "datasets": mh.datasets_of(train)}


@pytest.fixture(scope="module")
def trained(data):
    from models import inputs, registry

    keras.utils.set_random_seed(0)
    method = registry.get_method("tracenorm")
    cfg = method.config("small", datasets=list(data["datasets"]))
    assert cfg["image_size"] == SIZE
    steps = len(data["train"]) // cfg["batch_size"]
    cfg["schedule_steps"] = EPOCHS * steps        # the cosine schedule's length
    model = method.build(cfg)
    ds = inputs.dataset_from_samples(data["train"], SIZE, cfg["batch_size"], data["datasets"],
                                     training=True, seed=0, repeat=True)
    history = model.fit(ds, epochs=EPOCHS, steps_per_epoch=steps,
                        callbacks=method.callbacks(cfg, steps), verbose=0)
    return method, model, cfg, history


def _batch(data, domain, n=16, split="test"):
    from models import inputs

    samples = [s for s in data[split] if s.domain == domain][:n]
    return next(iter(inputs.dataset_from_samples(samples, SIZE, n, data["datasets"])))


def _mixed_batch(data, n=8):
    from models import inputs

    lab = [s for s in data["test"] if s.domain == "lab"][:n]
    wild = [s for s in data["test"] if s.domain == "wild"][:n]
    return next(iter(inputs.dataset_from_samples(lab + wild, SIZE, 2 * n, data["datasets"])))


# --------------------------------------------------------------------------- training
def test_fit_learns_both_disjoint_tasks(trained, data):
    from models import inputs

    method, model, cfg, history = trained
    h = history.history
    assert h["loss"][-1] < h["loss"][0]
    assert h["emotion_loss"][-1] < h["emotion_loss"][0]
    assert h["landmark_loss"][-1] < h["landmark_loss"][0]
    assert h["trace_norm"][-1] > 0
    # DANN ramp: lambda grows from ~0 towards max_lambda
    assert h["ada_lambda"][0] < h["ada_lambda"][-1] <= cfg["ada_max_lambda"] + 1e-6
    # cosine learning rate: decayed to ~0 by the last step
    assert float(np.asarray(model.optimizer.learning_rate)) < 0.05 * cfg["learning_rate"]

    infer = method.inference_model(model, cfg)
    lab = [s for s in data["test"] if s.domain == "lab"]
    wild = [s for s in data["test"] if s.domain == "wild"]
    acc = mh.accuracy(infer, inputs.dataset_from_samples(lab, SIZE, 64, data["datasets"]))
    assert acc > 2 * mh.chance(), f"held-out emotion accuracy {acc:.3f}"

    mean_shape = np.mean([s.landmarks.reshape(-1) for s in data["train"]
                          if s.landmarks_mask > 0], axis=0)
    err, base = [], []
    for b in inputs.dataset_from_samples(wild, SIZE, 64, data["datasets"]):
        pred = np.asarray(infer(b["image"], training=False)["landmarks"])
        y = b["landmarks"].numpy()
        err.append(np.abs(pred - y).mean(1))
        base.append(np.abs(mean_shape[None] - y).mean(1))
    err, base = np.concatenate(err).mean(), np.concatenate(base).mean()
    assert err < base, f"landmark l1 {err:.4f} not below the mean-shape baseline {base:.4f}"


def test_trace_norm_rates_and_plot(trained, tmp_path):
    from models.tracenorm import trace_norm_decrease_plot

    method, model, cfg, _ = trained
    rates = method.trace_norm_rates(model)
    assert len(rates) == 33
    assert all(np.isfinite(rates)) and all(r > 0 for r in rates)
    assert max(abs(r - 1.0) for r in rates) > 1e-4  # training moved the norms
    init = np.asarray(model.init_trace_norms)
    np.testing.assert_allclose(np.asarray(model.layer_trace_norms()), init * np.asarray(rates),
                               rtol=1e-5)
    path = trace_norm_decrease_plot(rates, tmp_path / "rates.png")
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    multi = trace_norm_decrease_plot({"laf": rates, "tucker": [1.0] * 33}, tmp_path / "m.png")
    assert open(multi, "rb").read()[:4] == b"\x89PNG"


# --------------------------------------------------------------------------- save / export
def test_save_load_identical_predictions(trained, data, tmp_path):
    method, model, cfg, _ = trained
    images = _mixed_batch(data)["image"]
    infer = method.inference_model(model, cfg)
    ref = {k: np.asarray(v) for k, v in infer(images, training=False).items()}
    assert set(ref) >= {"probabilities", "landmarks", "embedding"}   # embedding: t-SNE plots
    assert ref["probabilities"].shape == (16, 8) and ref["landmarks"].shape == (16, 136)
    # label space learned from the lab data: contempt was never labelled
    assert np.all(ref["probabilities"][:, contract.EMOTIONS.index("contempt")] == 0)

    # weights round trip (the training infrastructure's checkpoint format)
    weights = str(tmp_path / "tn.weights.h5")
    model.save_weights(weights)
    fresh = method.build(cfg)
    fresh.load_weights(weights)
    got = method.inference_model(fresh, cfg)(images, training=False)
    for k in ref:
        np.testing.assert_array_equal(np.asarray(got[k]), ref[k])
    np.testing.assert_array_equal(np.asarray(fresh.init_trace_norms),
                                  np.asarray(model.init_trace_norms))
    np.testing.assert_allclose(fresh.trace_norm_rates(), model.trace_norm_rates(), rtol=1e-6)

    # the inference model as a .keras file
    path = str(tmp_path / "tn_infer.keras")
    infer.save(path)
    loaded = keras.saving.load_model(path)
    got = loaded(images, training=False)
    for k in ref:
        np.testing.assert_array_equal(np.asarray(got[k]), ref[k])


def test_exported_serving_signature(trained, data, tmp_path):
    from models import export, preprocessing

    method, model, cfg, _ = trained
    out_dir = export.export_saved_model(method, model, cfg, str(tmp_path / "serving" / "1"))
    samples = [s for s in data["test"] if s.domain == "lab"][:2] + \
        [s for s in data["test"] if s.domain == "wild"][:2]
    raw = [s.image for s in samples]  # encoded PNGs at 48 px; the signature resizes
    out = export.load_and_predict(out_dir, raw)
    assert out["probabilities"].shape == (4, 8) and out["landmarks"].shape == (4, 136)
    np.testing.assert_allclose(out["probabilities"].sum(-1), 1.0, atol=1e-5)
    assert all(label in contract.EMOTIONS for label in out["label"])
    ref = method.inference_model(model, cfg)(
        preprocessing.decode_image(tf.constant(raw), SIZE), training=False)
    np.testing.assert_allclose(out["probabilities"], np.asarray(ref["probabilities"]),
                               atol=1e-5)
    np.testing.assert_allclose(out["landmarks"], np.asarray(ref["landmarks"]), atol=1e-5)


# --------------------------------------------------------------------------- masks
def test_masked_labels_give_zero_gradient(trained, data):
    """A sample trains only the task its masks allow: per-sample input gradients of
    each task loss vanish exactly on samples without that label, the heads get no
    gradient from the other task's samples, and a class outside the label set
    (contempt) gets none."""
    _, model, _, _ = trained
    batch = _mixed_batch(data)
    lab = np.asarray(batch["emotion"]) >= 0
    has_lmk = np.asarray(batch["landmarks_mask"])[:, 0] > 0
    assert lab.any() and has_lmk.any() and not (lab & has_lmk).any()

    image = tf.Variable(batch["image"])
    with tf.GradientTape(persistent=True) as tape:
        terms = model.compute_batch_loss(batch, model(image, training=False), training=False)
    g_emo = np.abs(np.asarray(tape.gradient(terms["emotion_loss"], image))).sum((1, 2, 3))
    g_lmk = np.abs(np.asarray(tape.gradient(terms["landmark_loss"], image))).sum((1, 2, 3))
    assert np.all(g_emo[~lab] == 0) and np.all(g_emo[lab] > 0)
    assert np.all(g_lmk[~has_lmk] == 0) and np.all(g_lmk[has_lmk] > 0)

    head_e = model.net.get_layer("emotion_logits")
    head_l = model.net.get_layer("landmarks")
    contempt = contract.EMOTIONS.index("contempt")
    for domain, zero_head, live_head in (("lab", head_l, head_e), ("wild", head_e, head_l)):
        b = _batch(data, domain, n=8)
        with tf.GradientTape() as tape:
            loss = model.loss_terms_of(b, training=True)["loss"]
        grads = tape.gradient(loss, [zero_head.kernel, zero_head.bias,
                                     live_head.kernel, live_head.bias])
        for g in grads[:2]:
            assert g is None or not np.any(np.asarray(g)), f"{domain}: gradient leaked"
        assert np.any(np.asarray(grads[2]))
        if domain == "lab":  # contempt is outside the lab label set of these samples
            b = dict(b)
            b["emotion_mask"] = tf.constant(np.tile(contract.label_set_mask(contract.BASIC7),
                                                    (8, 1)))
            with tf.GradientTape() as tape:
                loss = model.loss_terms_of(b, training=False)["emotion_loss"]
            gk, gb = tape.gradient(loss, [head_e.kernel, head_e.bias])
            assert not np.any(np.asarray(gk)[:, contempt]) and np.asarray(gb)[contempt] == 0
            assert np.any(np.asarray(gk)[:, :contempt])


# --------------------------------------------------------------------------- penalty
def _numpy_laf(groups):
    """Reference sum_l ||reshape(stack(W_l^e, W_l^m), [-1, T])||_* and d/dW (U V^T)."""
    total, grads = 0.0, []
    for group in groups:
        ks = [np.asarray(layer.kernel, np.float64) for layer in group]
        m = np.stack(ks, axis=-1).reshape(-1, len(ks))
        u, s, vt = np.linalg.svd(m, full_matrices=False)
        total += s.sum()
        g = (u @ vt).reshape(ks[0].shape + (len(ks),))
        grads.append([g[..., t] for t in range(len(ks))])
    return total, grads


def test_trace_norm_penalty_is_in_the_loss(trained, data):
    _, model, cfg, _ = trained
    mu = float(cfg["trace_norm_strength"])
    assert mu > 0 and cfg["trace_norm_kind"] == "laf" and len(model.trace_groups) == 33
    ref_norm, ref_grads = _numpy_laf(model.trace_groups)
    np.testing.assert_allclose(float(model.trace_norm()), ref_norm, rtol=1e-4)

    batch = _mixed_batch(data, n=4)
    first = list(model.trace_groups[0]) + list(model.trace_groups[20])
    kernels = [layer.kernel for layer in first]

    def loss_and_grads(strength):
        old = model.cfg["trace_norm_strength"]
        model.cfg["trace_norm_strength"] = strength
        try:
            with tf.GradientTape() as tape:
                loss = model.loss_terms_of(batch, training=False)["loss"]
            return float(loss), [np.asarray(g, np.float64) for g in tape.gradient(loss, kernels)]
        finally:
            model.cfg["trace_norm_strength"] = old

    loss_mu, g_mu = loss_and_grads(mu)
    loss_0, g_0 = loss_and_grads(0.0)
    assert loss_mu - loss_0 == pytest.approx(mu * ref_norm, rel=1e-3)
    expected = ref_grads[0] + ref_grads[20]
    for a, b, e in zip(g_mu, g_0, expected):
        np.testing.assert_allclose(a - b, mu * e, atol=1e-6)


def test_trace_norm_kinds_and_svds(trained):
    """LAF / Tucker / TT and exact / randomized SVD are selectable from the config and
    compute the tensor trace norms of Yang & Hospedales (checked on one layer)."""
    from models.tracenorm import _trace_regularizer

    _, model, cfg, _ = trained
    group = model.trace_groups[5]
    w = np.stack([np.asarray(layer.kernel, np.float64) for layer in group], axis=-1)
    n = w.ndim

    def nuc(m):
        return np.linalg.svd(m, compute_uv=False).sum()

    unf = [nuc(np.moveaxis(w, i, 0).reshape(w.shape[i], -1)) for i in range(n)]
    tt = [nuc(w.reshape(int(np.prod(w.shape[:i])), -1)) for i in range(1, n)]
    expected = {"laf": nuc(w.reshape(-1, w.shape[-1])), "tucker": np.mean(unf),
                "tt": np.mean(tt)}
    for kind, value in expected.items():
        for svd in ("exact", "randomized"):
            reg = _trace_regularizer({**cfg, "trace_norm_kind": kind, "trace_norm_svd": svd})
            assert (reg.kind, reg.svd) == (kind, svd)
            got = float(reg.group_norm(group))
            assert got == pytest.approx(value, rel=2e-3 if svd == "randomized" else 1e-4), \
                (kind, svd)


# --------------------------------------------------------------------------- reversal
def test_gradient_reversal_flips_domain_gradient(trained):
    _, model, cfg, _ = trained
    grl = model.gradient_reversal
    assert grl is not None
    feat_dim = int(model.net.get_layer("emotion_domain_classifier").input.shape[-1])
    rng = np.random.default_rng(0)
    feats = tf.Variable(rng.normal(size=(6, feat_dim)).astype(np.float32))
    labels = tf.constant([0, 1, 0, 1, 1, 0], tf.int64)
    head = model.net.get_layer("emotion_domain_classifier")
    old = float(grl.lambda_var.numpy())
    grl.lambda_var.assign(0.7)
    try:
        from models.tracenorm import domain_loss

        grads = {}
        for reverse in (True, False):
            with tf.GradientTape() as tape:
                loss = domain_loss(model.domain_logits(feats, "emotion", reverse=reverse), labels)
            grads[reverse] = tape.gradient(loss, [feats] + head.trainable_variables)
    finally:
        grl.lambda_var.assign(old)
    g_rev, g_plain = np.asarray(grads[True][0]), np.asarray(grads[False][0])
    assert np.abs(g_plain).max() > 0
    np.testing.assert_allclose(g_rev, -0.7 * g_plain, rtol=1e-5, atol=1e-8)
    # the domain classifier itself is trained normally (no reversal on its weights)
    for a, b in zip(grads[True][1:], grads[False][1:]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------- config
def test_paper_preset_topology():
    from models import registry
    from models.tracenorm import NUM_TRACE_LAYERS, build_network

    method = registry.get_method("tracenorm")
    cfg = method.config("paper", datasets=["a", "b", "c"])
    assert (cfg["image_size"], cfg["pool_size"], cfg["optimizer"], cfg["learning_rate"]) == \
        (96, 3, "sgd", 0.01)
    net = build_network(cfg)
    assert net.output["emotion_features"].shape[-1] == 512
    assert net.output["landmarks"].shape[-1] == 136
    head = net.get_layer("landmarks_domain_classifier")
    assert [layer.units for layer in head.layers] == [128, 64, 3]
    from models.backbones import conv_layers

    pairs = list(zip(conv_layers(net, "emotion"), conv_layers(net, "landmarks")))
    assert len(pairs) == NUM_TRACE_LAYERS
    assert all(a.kernel.shape == b.kernel.shape for a, b in pairs)
