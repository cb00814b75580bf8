"""Trace-norm deep MTL + adversarial domain alignment (models/tracenorm/), Hu et al.,
"Deep Multi-Task Learning to Recognise Subtle Facial Expressions of Mental States"
(ECCV 2018).

Synthetic faces with two DISJOINT tasks: ``synth_lab`` faces carry the emotion
only (zero ``landmarks_mask``), ``synth_wild`` faces the 68 landmarks only
(``emotion = -1``, zero ``emotion_mask``). One small model is trained once per
module (graph tracing of two ResNet-34s is the expensive part); the gradient
checks run eagerly. Augmentation: tests/test_tracenorm_augmentation.py; the
trace norms themselves: tests/test_trace_norm.py.
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
    assert cfg["image_size"] == SIZE and cfg["sharing"] == "trace_norm" and cfg["ada"]
    steps = len(data["train"]) // cfg["batch_size"]
    cfg["schedule_steps"] = EPOCHS * steps        # the cosine schedule's length
    model = method.build(cfg)
    # no augmentation here (its geometry is tested on its own): the learning
    # check below needs the few CPU steps for the tasks themselves
    ds = inputs.dataset_from_samples(data["train"], SIZE, cfg["batch_size"], data["datasets"],
                                     training=True, seed=0, repeat=True)
    history = model.fit(ds, epochs=EPOCHS, steps_per_epoch=steps,
                        callbacks=method.callbacks(cfg, steps), verbose=0)
    return method, model, cfg, history


def _batch(data, domain, n=16, split="test"):
    from models import inputs

    samples = [s for s in data[split] if s.domain == domain][:n]
    return next(iter(inputs.dataset_from_samples(samples, SIZE, n, data["datasets"])))


def _mixed_batch(data, n=8, wild_offset=0):
    from models import inputs

    lab = [s for s in data["test"] if s.domain == "lab"][:n]
    wild = [s for s in data["test"] if s.domain == "wild"][wild_offset:wild_offset + n]
    return next(iter(inputs.dataset_from_samples(lab + wild, SIZE, 2 * n, data["datasets"])))


# --------------------------------------------------------------------------- training
def test_fit_learns_both_disjoint_tasks(trained, data):
    from models import inputs, metrics, training

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

    # landmarks: NME (% of the outer-eye-corner distance, Sec. 4.1) on held-out
    # faces against the mean training shape
    result = training.evaluate(method, model, cfg, wild)
    truth = np.stack([s.landmarks.reshape(-1) for s in wild])
    mean_shape = np.mean([s.landmarks.reshape(-1) for s in data["train"]
                          if s.landmarks_mask > 0], axis=0)
    base = metrics.landmark_nme(truth, np.tile(mean_shape, (len(wild), 1)), np.ones(len(wild)))
    assert result["num_landmark_examples"] == len(wild)
    assert result["landmark_nme"] < base, \
        f"landmark NME {result['landmark_nme']:.2f} % not below the mean shape's {base:.2f} %"


def test_evaluate_reports_the_landmark_nme(trained, data):
    """training.evaluate's landmark branch is metrics.landmark_nme of the
    inference model's predictions over the labelled faces only."""
    from models import inputs, metrics, training

    method, model, cfg, _ = trained
    faces = data["test"][:10] + [s for s in data["test"] if s.domain == "wild"][:6]
    result = training.evaluate(method, model, cfg, faces)
    infer = method.inference_model(model, cfg)
    batch = next(iter(inputs.dataset_from_samples(faces, SIZE, len(faces), data["datasets"])))
    pred = np.asarray(infer(batch["image"], training=False)["landmarks"])
    mask = np.asarray(batch["landmarks_mask"])
    assert result["num_landmark_examples"] == int(mask.sum()) > 0
    for key, norm in (("landmark_nme", "outer_corners"), ("landmark_nme_pupils", "pupils")):
        want = metrics.landmark_nme(np.asarray(batch["landmarks"]), pred, mask, norm)
        assert result[key] == pytest.approx(want, rel=1e-5)
    lab_only = training.evaluate(method, model, cfg, [s for s in faces if s.domain == "lab"])
    assert "landmark_nme" not in lab_only        # no landmark labels: no NME


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
    png = open(path, "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
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


@pytest.mark.slow   # 27 s on 2 cores; tests/test_serving_graph.py exports tracenorm in CI
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


# --------------------------------------------------------------------------- batch per task
def test_each_task_network_sees_its_own_batch(trained, data):
    """Sec. 4.1 ("batch sizes are both 256", one per network): the emotion network
    runs on the emotion-labelled rows only, the landmark network on the
    landmark-labelled rows only, so that even the batch-norm statistics of a
    training step come from the network's own task data."""
    _, model, _, _ = trained
    model.cfg["route_batches"] = True     # the small preset's default is off (oneDNN)
    try:
        _own_batches(model, data)
    finally:
        model.cfg["route_batches"] = False


def _own_batches(model, data):
    a = _mixed_batch(data, n=4)
    b = _mixed_batch(data, n=4, wild_offset=4)   # same lab rows, other wild rows
    out = model.task_forward(a, training=False)
    np.testing.assert_array_equal(np.asarray(out["emotion_index"]), [0, 1, 2, 3])
    np.testing.assert_array_equal(np.asarray(out["landmarks_index"]), [4, 5, 6, 7])
    assert out["emotion_logits"].shape == (4, 8) and out["landmarks"].shape == (4, 136)
    full = model(a["image"], training=False)
    np.testing.assert_allclose(np.asarray(out["emotion_logits"]),
                               np.asarray(full["emotion_logits"])[:4], atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["landmarks"]),
                               np.asarray(full["landmarks"])[4:], atol=1e-5)
    # training mode (batch statistics): the emotion rows' outputs do not depend
    # on which landmark rows share the batch. The moving statistics are saved
    # and restored around the two training-mode passes.
    saved = [np.asarray(v) for v in model.non_trainable_variables]
    try:
        ta = model.task_forward(a, training=True)
        tb = model.task_forward(b, training=True)
    finally:
        for v, s in zip(model.non_trainable_variables, saved):
            v.assign(s)
    np.testing.assert_allclose(np.asarray(ta["emotion_logits"]),
                               np.asarray(tb["emotion_logits"]), atol=1e-5)
    assert np.abs(np.asarray(ta["landmarks"]) - np.asarray(tb["landmarks"])).max() > 1e-4
    # a batch without landmark rows: the landmark network is skipped, the loss is finite
    lab = _batch(data, "lab", n=4)
    terms = model.loss_terms_of(lab, training=True)
    assert float(terms["landmark_loss"]) == 0.0 and np.isfinite(float(terms["loss"]))
    for v, s in zip(model.non_trainable_variables, saved):
        v.assign(s)


def test_task_losses_train_only_their_network_and_label_set(trained, data):
    """Each task loss reaches only its own network and head; a class outside the
    label set (contempt) gets no gradient."""
    _, model, _, _ = trained
    batch = _mixed_batch(data, n=4)
    variables = {t: model.trunk(t).trainable_variables for t in ("emotion", "landmarks")}
    with tf.GradientTape(persistent=True) as tape:
        terms = model.compute_batch_loss(batch, model.task_forward(batch, training=False),
                                         training=False)
    for loss, own, other in (("emotion_loss", "emotion", "landmarks"),
                             ("landmark_loss", "landmarks", "emotion")):
        g_own = tape.gradient(terms[loss], variables[own])
        g_other = tape.gradient(terms[loss], variables[other])
        assert any(g is not None and np.any(np.asarray(g)) for g in g_own), loss
        assert all(g is None or not np.any(np.asarray(g)) for g in g_other), loss

    head_e = model.net.get_layer("emotion_logits")
    contempt = contract.EMOTIONS.index("contempt")
    b = dict(_batch(data, "lab", n=8))
    b["emotion_mask"] = tf.constant(np.tile(contract.label_set_mask(contract.BASIC7), (8, 1)))
    with tf.GradientTape() as tape:
        loss = model.loss_terms_of(b, training=False)["emotion_loss"]
    gk, gb = tape.gradient(loss, [head_e.kernel, head_e.bias])
    assert not np.any(np.asarray(gk)[:, contempt]) and np.asarray(gb)[contempt] == 0
    assert np.any(np.asarray(gk)[:, :contempt])


# --------------------------------------------------------------------------- Eq 4
def _np_mlp(dense_layers, x):
    for j, layer in enumerate(dense_layers):
        x = x @ np.asarray(layer.kernel, np.float64) + np.asarray(layer.bias, np.float64)
        if j < len(dense_layers) - 1:
            x = np.maximum(x, 0.0)
    return x


def test_eq4_one_domain_classifier_on_the_stacked_features(trained, data):
    """Eq 4: ``max_{Theta*_1..T} min_Phi l(g_Phi([f_Theta*_1(X_1) ... f_Theta*_T(X_T)]), y)``,
    ``y`` the one-hot label of "which distribution the feature is from", ``g_Phi`` a
    classifier (an MLP 512-128-64-2 in Sec. 2.3), ``l`` the cross-entropy.
    NumPy reference: ``Z`` = the emotion network's features of the emotion rows
    stacked over the landmark network's features of the landmark rows."""
    from models.tracenorm import domain_loss

    _, model, _, _ = trained
    assert [layer.name for layer in model.net.layers if "domain" in layer.name] == \
        ["domain_classifier"]                                     # ONE g_Phi
    batch = _mixed_batch(data, n=4)
    out = model.task_forward(batch, training=False)
    image = np.asarray(batch["image"])
    z = np.concatenate([np.asarray(model.trunk("emotion")(image[:4], training=False)),
                        np.asarray(model.trunk("landmarks")(image[4:], training=False))])
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    logits = _np_mlp(model.domain_classifier.layers, z.astype(np.float64))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want = -logp[np.arange(8), y].mean()
    np.testing.assert_array_equal(np.asarray(out["domain_labels"]), y)
    assert float(domain_loss(out["domain_logits"], out["domain_labels"])) == \
        pytest.approx(want, rel=1e-4)
    # hand-computed: two classes at equal logits cost log 2; logits (2, 0) for class 0
    # cost log(1 + e^-2); a row labelled -1 costs nothing
    assert float(domain_loss(tf.zeros([3, 2]), [0, 1, 1])) == pytest.approx(np.log(2.0))
    assert float(domain_loss([[2.0, 0.0], [5.0, 5.0]], [0, -1])) == \
        pytest.approx(np.log1p(np.exp(-2.0)), rel=1e-6)


def test_eq4_gradient_reversal_max_min(trained):
    """Eq 4's max over the networks, min over Phi: through the reversal layer the
    features get ``-lambda dl/dZ``, while ``g_Phi``'s weights get ``+dl/dPhi``."""
    from models.tracenorm import domain_loss

    _, model, _, _ = trained
    grl, g_phi = model.gradient_reversal, model.domain_classifier
    feat_dim = int(g_phi.input.shape[-1])
    rng = np.random.default_rng(0)
    z = tf.Variable(rng.normal(size=(6, feat_dim)).astype(np.float32))
    labels = tf.constant([0, 1, 0, 1, 1, 0], tf.int64)
    old = float(grl.lambda_var.numpy())
    grl.lambda_var.assign(0.7)
    try:
        grads = {}
        for reverse in (True, False):
            with tf.GradientTape() as tape:
                loss = domain_loss(model.domain_logits(z, reverse=reverse), labels)
            grads[reverse] = tape.gradient(loss, [z] + g_phi.trainable_variables)
    finally:
        grl.lambda_var.assign(old)
    g_rev, g_plain = np.asarray(grads[True][0]), np.asarray(grads[False][0])
    assert np.abs(g_plain).max() > 0
    np.testing.assert_allclose(g_rev, -0.7 * g_plain, rtol=1e-5, atol=1e-8)
    for a, b in zip(grads[True][1:], grads[False][1:]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------- penalty
def _numpy_laf(groups):
    """Eq 1 with gamma = 1, summed over the layers: ``sum_l ||reshape(stack(W_l^e,
    W_l^m), [-1, T])||_*`` and its sub-gradient ``U V^T`` (Sec. 2.2)."""
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
    """Sec. 2.4: the trace norm of all 33 stacked convolutions, one strength mu."""
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
    """LAF / Tucker / TT (Eqs 1-3) and exact / randomized SVD are selectable from
    the config (checked on one layer against NumPy)."""
    from models.tracenorm import trace_regularizer

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
            reg = trace_regularizer({**cfg, "trace_norm_kind": kind, "trace_norm_svd": svd})
            assert (reg.kind, reg.svd) == (kind, svd)
            got = float(reg.group_norm(group))
            assert got == pytest.approx(value, rel=2e-3 if svd == "randomized" else 1e-4), \
                (kind, svd)


# --------------------------------------------------------------------------- config
def test_paper_preset_has_the_papers_values():
    from models import registry
    from models.backbones import RESNET34_BLOCKS
    from models.tracenorm import NUM_TRACE_LAYERS, build_network, trunk_convs

    method = registry.get_method("tracenorm")
    cfg = method.config("paper")
    assert cfg["image_size"] == 96                      # Sec. 4.1: 96 x 96 faces
    assert cfg["pool_size"] == 3                        # Sec. 2.4: 3x3 average pooling
    assert RESNET34_BLOCKS == (3, 4, 6, 3)              # Sec. 2.4: 34-layer ResNet [17]
    assert cfg["learning_rate"] == 0.01                 # Sec. 4.1: lr 0.01 for both networks
    assert cfg["batch_size"] == 2 * 256                 # Sec. 4.1: batch 256 per network
    assert cfg["trace_norm_kind"] == "laf"              # Sec. 4.2: LAF for later comparisons
    assert (cfg["sharing"], cfg["ada"]) == ("trace_norm", True)   # Table 4: RN+LAF+ADA
    assert cfg["route_batches"]                         # Sec. 4.1: a batch per network
    # Sec. 4.1: landmarks flipped, rotated (-30, 30), scaled (0.8, 1.2); emotion: flip only
    assert cfg["augment"] and cfg["emotion_flip"] and cfg["landmark_flip"]
    assert cfg["landmark_rotation"] == 30.0 and list(cfg["landmark_scale"]) == [0.8, 1.2]
    assert cfg["landmark_shift"] > 0 and cfg["landmark_noise"] > 0
    net = build_network(cfg)
    assert net.output["emotion_features"].shape[-1] == 512   # Sec. 2.3: 512 input features
    assert net.output["landmarks"].shape[-1] == 136          # Sec. 4.1: 68 points
    head = net.get_layer("domain_classifier")                # Sec. 2.3: 512-128-64-2
    assert head.input.shape[-1] == 512
    assert [layer.units for layer in head.layers] == [128, 64, 2]
    # Sec. 2.4: trace norm on all 33 convolutional layers of the stacked networks
    pairs = list(zip(*(trunk_convs(net.get_layer(f"{t}_trunk"))
                       for t in ("emotion", "landmarks"))))
    assert len(pairs) == NUM_TRACE_LAYERS == 33
    assert all(a.kernel.shape == b.kernel.shape and a is not b for a, b in pairs)


# Table 4, "Accuracy (%) of Mental State Recognition on LSEMSW using 34-layer ResNet"
# (cross stitch [36] not implemented; "-" cells have no variant).
TABLE4 = {"RN": 28.39, "LAF": 33.43, "Tucker": 33.39, "TT": 33.41, "RN(6)": 30.07,
          "RN(14)": 28.11, "RN(26)": 26.90, "RN(32)": 24.69, "LAF+ADA": 36.72,
          "Tucker+ADA": 36.51, "TT+ADA": 36.64, "RN(6)+ADA": 33.97, "RN(14)+ADA": 31.95,
          "RN(26)+ADA": 30.58, "RN(32)+ADA": 28.18}


def test_table4_variants_are_selectable():
    """Every implemented cell of Table 4 is a named config; RN(k) shares the
    stem and the first k block convolutions (Sec. 4.2: "the first {6, 14, 26, 32}
    convolutional layers shared and the rest task-specific")."""
    from models import registry
    from models.tracenorm import TABLE4_VARIANTS, TraceNormMTLModel, trunk_convs

    assert set(TABLE4_VARIANTS) == set(TABLE4)
    method = registry.get_method("tracenorm")
    small = dict(image_size=32, pool_size=1)            # a 1x1 map at 32 px: cheap builds
    for name, k in (("RN(6)+ADA", 6), ("RN(32)", 32)):
        cfg = method.config("small", variant=name, **small)
        model = TraceNormMTLModel(cfg)
        convs = [trunk_convs(model.trunk(t)) for t in ("emotion", "landmarks")]
        same = [a is b for a, b in zip(*convs)]
        assert same == [True] * (k + 1) + [False] * (32 - k), name    # stem + k convs
        assert not model.penalised and model.has_domain_branch == name.endswith("+ADA")
    rn = TraceNormMTLModel(method.config("small", variant="RN", **small))
    assert not rn.penalised and not rn.has_domain_branch
    assert not any(a is b for a, b in rn.trace_groups)
    assert "domain_classifier" not in [layer.name for layer in rn.net.layers]
    tt = method.config("small", variant="TT+ADA")
    assert (tt["sharing"], tt["trace_norm_kind"], tt["ada"]) == ("trace_norm", "tt", True)
    with pytest.raises(ValueError, match="variant"):
        method.config("small", variant="cross-stitch")
    with pytest.raises(ValueError, match="even"):
        TraceNormMTLModel(method.config("small", sharing="hard", hard_shared_convs=5, **small))


def test_hard_sharing_trains_shared_layers_from_both_tasks(data):
    """RN(6): the shared stem gets gradient from both task losses; a convolution
    past the shared part only from its own task."""
    from models import inputs, registry
    from models.tracenorm import TraceNormMTLModel, trunk_convs

    cfg = registry.get_method("tracenorm").config("small", variant="RN(6)", image_size=32,
                                                   pool_size=1)
    model = TraceNormMTLModel(cfg)
    head = model.net.get_layer("landmarks")    # its zero init passes no gradient back
    head.kernel.assign(np.random.default_rng(0).normal(0, 0.1, head.kernel.shape)
                       .astype(np.float32))
    lab = [s for s in data["test"] if s.domain == "lab"][:4]
    wild = [s for s in data["test"] if s.domain == "wild"][:4]
    batch = next(iter(inputs.dataset_from_samples(lab + wild, 32, 8)))
    stem = trunk_convs(model.trunk("emotion"))[0].kernel
    own = {t: trunk_convs(model.trunk(t))[10].kernel for t in ("emotion", "landmarks")}
    with tf.GradientTape(persistent=True) as tape:
        terms = model.loss_terms_of(batch, training=True)
    for loss, task, other in (("emotion_loss", "emotion", "landmarks"),
                              ("landmark_loss", "landmarks", "emotion")):
        assert np.any(np.asarray(tape.gradient(terms[loss], stem))), loss
        assert np.any(np.asarray(tape.gradient(terms[loss], own[task]))), loss
        g = tape.gradient(terms[loss], own[other])
        assert g is None or not np.any(np.asarray(g)), loss
