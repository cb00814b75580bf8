"""`fermtl benchmark` (benchmarks/protocols.py, benchmarks/tables.py) and the
figures (pipeline/figures.py): folds on data prepared by the pipeline's own data
components, the results table, every figure function, and one tiny end-to-end
run of the command (k-fold, resumable)."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import protocols as B
from benchmarks import tables
from components import contract, synthetic
from components.ingestion import DataSpec
from pipeline import figures

SPEC = {"sources": [{"reader": "synthetic", "dataset": "synth", "aligned": True,
                     "options": {"n_subjects": 12, "samples_per_emotion": 1, "size": 32,
                                 "seed": 0, "domains": ["lab", "wild"]}}],
        "split": {"eval_fraction": 0.25, "seed": 0}, "image_size": 32, "detector": "none"}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The spec ingested once with 4-fold assignment and transformed at 32 px."""
    spec = B.benchmark_spec(DataSpec.load(SPEC), "kfold", 4)
    return B.prepare_data(spec, str(tmp_path_factory.mktemp("bench_data")), 32)


def _column(examples, key):
    return np.concatenate([b[key].numpy() for b in examples.batch(4096)])


def test_kfold_is_subject_disjoint_and_tests_every_example_once(prepared):
    folds = B.make_folds(prepared, "kfold", k=4)
    assert [f.name for f in folds] == ["fold0", "fold1", "fold2", "fold3"]
    everything = _column(prepared.examples(), "subject_id")
    tested = np.concatenate([_column(f.test(prepared), "subject_id") for f in folds])
    assert sorted(tested) == sorted(everything)                     # each exactly once
    for f in folds:
        train, test = _column(f.train(prepared), "subject_id"), _column(f.test(prepared),
                                                                          "subject_id")
        assert not set(train) & set(test)                            # no shared subject
        assert len(train) + len(test) == len(everything)
        assert f.sizes["train"] == len(train) and f.sizes["test"] == len(test)
        assert f.sizes["test_subjects"] == 3                         # 12 subjects / 4 folds


def test_kfold_val_tests_validates_and_trains_on_disjoint_groups(prepared):
    """DDMTL's protocol: fold i tests group i, validates on group (i + 1) % k and
    trains on the other k - 2; every group is tested once and validated once."""
    folds = B.make_folds(prepared, "kfold_val", k=4)
    assert [f.name for f in folds] == ["fold0", "fold1", "fold2", "fold3"]
    assert [f.validation_group for f in folds] == [1, 2, 3, 0]
    everything = _column(prepared.examples(), "subject_id")
    tested, validated = [], []
    for i, f in enumerate(folds):
        sides = {"train": f.train(prepared), "val": f.validation(prepared),
                 "test": f.test(prepared)}
        groups = {k: set(_column(d, "fold")) for k, d in sides.items()}
        assert groups == {"train": {0, 1, 2, 3} - {i, (i + 1) % 4}, "val": {(i + 1) % 4},
                          "test": {i}}
        subjects = {k: _column(d, "subject_id") for k, d in sides.items()}
        assert not set(subjects["train"]) & set(subjects["val"])
        assert not set(subjects["train"]) & set(subjects["test"])
        assert not set(subjects["val"]) & set(subjects["test"])
        assert sum(len(v) for v in subjects.values()) == len(everything)
        assert all(f.sizes[k] == len(subjects[k]) for k in sides)
        assert f.protocol == "kfold_val" and "validation" in f.describe()
        tested += list(subjects["test"])
        validated += list(subjects["val"])
    assert sorted(tested) == sorted(validated) == sorted(everything)   # each exactly once
    kfold0 = B.make_folds(prepared, "kfold", k=4)[0]
    assert kfold0.validation(prepared) is None and "validation" not in kfold0.describe()
    with pytest.raises(tables.BenchmarkError, match="k >= 3"):
        B.make_folds(prepared, "kfold_val", k=2)


def test_kfold_val_run_records_and_keeps_the_selected_epoch(prepared, tmp_path):
    """One real kfold_val fold: result.json names the protocol, the validation group
    and the epoch the validation group selected (the best of its scores), the saved
    weights are that epoch's, and a kfold result of the same fold is not reused."""
    from benchmarks import resume
    from models import training

    fold = B.make_folds(prepared, "kfold_val", k=4)[2]
    run_dir, committed = tmp_path / "run", tmp_path / "committed"
    row = B.run_one("baseline", fold, prepared, str(run_dir), epochs=3, figures_on=False,
                    overrides={"image_size": 32}, results_dir=str(committed))
    saved = json.loads((committed / "baseline" / "fold2" / "result.json").read_text())
    assert saved["protocol"] == saved["settings"]["protocol"] == "kfold_val"
    assert saved["validation_group"] == 3 and saved["validation_images"] == fold.sizes["val"]
    scores = saved["validation_scores"]
    assert len(scores) == 3 and saved["selected_epoch"] == int(np.argmax(scores)) + 1
    assert abs(saved["validation_accuracy"] - max(scores)) < 1e-4
    method, model, cfg = B.load_run_model(str(run_dir))
    assert training.evaluate(method, model, cfg, fold.validation(prepared))["accuracy"] == (
        row["validation_accuracy"])                              # the selected weights
    kfold2 = B.make_folds(prepared, "kfold", k=4)[2]
    assert resume.fingerprint("baseline", resume.run_settings(
        "baseline", kfold2, prepared, "small", {"image_size": 32}, 3, None, 0)
    )["settings_fingerprint"] != (
        row["settings_fingerprint"])


def test_holdout_and_cross_protocols(prepared):
    (hold,) = B.make_folds(prepared, "holdout")
    assert hold.sizes["train"] == prepared.counts["train"]
    assert hold.sizes["test"] == prepared.counts["eval"]
    (cross,) = B.make_folds(prepared, "cross", train_datasets=["synth_lab"],
                            test_datasets=["synth_wild"])
    lab, wild = (prepared.datasets.index(d) for d in ("synth_lab", "synth_wild"))
    assert set(_column(cross.train(prepared), "dataset_id")) == {lab}
    assert set(_column(cross.test(prepared), "dataset_id")) == {wild}
    assert cross.name == "synth_lab-to-synth_wild"


def test_protocol_errors_are_clear(prepared):
    with pytest.raises(tables.BenchmarkError, match="not in the data"):
        B.make_folds(prepared, "cross", train_datasets=["synth_lab"], test_datasets=["ckplus"])
    with pytest.raises(tables.BenchmarkError, match="both a train and a test"):
        B.make_folds(prepared, "cross", train_datasets=["synth_lab"],
                     test_datasets=["synth_lab"])
    with pytest.raises(tables.BenchmarkError, match="empty .* fewer folds"):
        B.make_folds(prepared, "kfold", k=6)                         # ingested with k = 4
    with pytest.raises(tables.BenchmarkError, match="unknown protocol"):
        B.make_folds(prepared, "loso")
    with pytest.raises(tables.BenchmarkError, match="unknown methods"):
        tables.resolve_methods("baseline,resnet")
    assert tables.resolve_methods("all") == list(tables.ALL_METHODS)


def _samples(n_subjects=2):
    return list(synthetic.generate(n_subjects=n_subjects, samples_per_emotion=1,
                                   domains=("lab",), emotions=contract.BASIC7, size=32, seed=0))


def _row(method, fold, acc, recall_happy):
    recall = {e: None for e in contract.EMOTIONS}
    recall.update(happiness=recall_happy, sadness=0.5)
    return {"method": method, "preset": "small", "fold": fold, "image_size": 48,
            "params": 1234, "epochs": 3, "train_seconds": 60.0, "accuracy": acc,
            "balanced_accuracy": acc - 0.1, "per_class_recall": recall,
            "hardware": "test CPU, 2 cores", "commit": "abc1234"}


def test_shipped_benchmark_settings_load():
    folder = os.path.join(os.path.dirname(os.path.dirname(B.__file__)), "pipeline", "configs",
                          "benchmarks")
    names = [n for n in os.listdir(folder) if n.endswith(".yaml")]
    assert names
    for name in names:
        settings = tables.load_settings(os.path.join(folder, name))
        assert settings["methods"], name


@pytest.mark.parametrize("text, message", [
    ("methds: {}", "unknown keys \\['methds'\\]"),
    ("methods: {nope: {minutes: 1}}", "unknown method 'nope'"),
    ("methods: {baseline: {minute: 1}}", "methods.baseline: unknown keys \\['minute'\\]"),
    ("methods: {ddmtl-x: {method: nope}}", "methods.ddmtl-x: unknown method 'nope'"),
    ("methods: {a/b: {method: ddmtl}}", "a run name may hold"),
])
def test_benchmark_settings_errors_name_the_field(tmp_path, text, message):
    path = tmp_path / "settings.yaml"
    path.write_text(text)
    with pytest.raises(tables.BenchmarkError, match=message):
        tables.load_settings(str(path))


def test_write_table_mean_std_per_class_and_csv(tmp_path):
    rows = [_row("baseline", "fold0", 0.6, 0.8), _row("baseline", "fold1", 0.8, 1.0),
            _row("sjmt", "holdout", 0.5, 0.4)]
    paths = tables.write_table(rows, str(tmp_path), seed_reported={"sjmt": "paper: 70 %"},
                          notes=["Protocol: test."])
    md = open(paths["markdown"]).read()
    assert "| baseline | small | 48² | 1,234 | 2 | 3 | 70.0% ± 10.0% | 60.0% |" in md
    assert "recall happiness" in md and "recall anger" not in md     # absent classes dropped
    assert "paper: 70 %" in md and "test CPU, 2 cores" in md and "abc1234" in md
    with open(paths["csv"]) as f:
        table = list(csv.DictReader(f))
    assert [r["method"] for r in table] == ["baseline", "sjmt"]
    assert float(table[0]["accuracy_mean"]) == pytest.approx(0.7)
    assert float(table[0]["accuracy_std"]) == pytest.approx(0.1)
    assert float(table[0]["recall_happiness"]) == pytest.approx(0.9)
    assert float(table[0]["train_minutes"]) == pytest.approx(2.0)
    assert table[0]["landmark_nme"] == ""            # no landmark task: no NME


def test_write_table_landmark_nme_is_the_mean_over_folds(tmp_path):
    side = lambda acc: {"side_scores": {"fer2013.eval": {"accuracy": acc}}}
    rows = [dict(_row("tracenorm", "fold0", 0.6, 0.8), landmark_nme=10.0, **side(0.5)),
            dict(_row("tracenorm", "fold1", 0.8, 1.0), landmark_nme=14.0, **side(0.6))]
    paths = tables.write_table(rows, str(tmp_path))
    md = open(paths["markdown"]).read()
    assert "fer2013.eval acc." in md and "| 12.00 % | 55.0% |" in md   # NME, side test
    with open(paths["csv"]) as f:
        line = next(csv.DictReader(f))
    assert float(line["landmark_nme"]) == pytest.approx(12.0)
    assert float(line["accuracy_fer2013.eval"]) == pytest.approx(0.55)


def _png_ok(path):
    assert os.path.getsize(path) > 1000
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_array_figures_write_pngs(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 120)
    pred = np.where(rng.random(120) < 0.6, y, rng.integers(0, 7, 120))
    _png_ok(figures.confusion_matrix_plot(y, pred, tmp_path / "cm.png"))
    feats = rng.normal(size=(120, 16)) + y[:, None]                  # separable clusters
    _png_ok(figures.tsne_plot(feats, y, tmp_path / "tsne.png"))
    _png_ok(figures.au_per_emotion_plot(rng.random((120, contract.NUM_AUS)), pred,
                                        tmp_path / "au.png"))
    _png_ok(figures.trace_norm_rates_plot(rng.random(33), tmp_path / "tn.png"))
    from PIL import Image

    def white_on_the_face(true):                # one black face: white pixels inside it
        path = figures.landmarks_plot(np.zeros((1, 32, 32, 1)), true, {"net": true * 0 + 2},
                                      tmp_path / "l.png")   # "net" off the face
        _png_ok(path)
        pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
        black = (pixels < 10).all(-1)          # the face's rows and columns, not the text's
        rows = np.nonzero(black.sum(1) > 0.5 * black.sum(1).max())[0]
        cols = np.nonzero(black.sum(0) > 0.5 * black.sum(0).max())[0]
        face = pixels[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        return int((face > 245).all(-1).sum())

    assert white_on_the_face(np.full((1, 136), 0.5)) > 0      # the true points, drawn white
    assert white_on_the_face(np.full((1, 136), 5.0)) == 0     # off the face: nothing drawn
    summary = tables.summarize([_row("baseline", "f0", 0.6, 0.8), _row("baseline", "f1", 0.7, 0.8)])
    _png_ok(figures.accuracy_bars(summary, tmp_path / "acc.png"))
    with pytest.raises(ValueError, match="no labelled"):
        figures.confusion_matrix_plot([-1], [0], tmp_path / "x.png")


def test_fersnet_figures_write_pngs(tmp_path):
    from models import fersnet as F

    method = F.FERSNet()
    cfg = method.config("small", image_size=32, filters=[4, 4, 8, 8],
                        decoder_filters=[8, 8, 4, 4], fc_units=8, disc_filters=[4, 4, 4])
    model = method.build(cfg)
    from models import inputs

    batch = next(iter(inputs.dataset_from_samples(_samples(), 32, 64)))
    faces = figures.example_faces(batch["image"], batch["emotion"], max_faces=3)
    assert faces.shape == (3, 32, 32, 1)
    _png_ok(figures.convflu_gate_plot(model, faces, tmp_path / "gates.png"))
    _png_ok(figures.synthesis_grid_plot(model, faces, tmp_path / "grid.png"))
    # the targets are the data's classes (a CK+ fold: contempt, no neutral)
    labels = [0, contract.canonical_emotion("contempt"), -1, 5]
    assert figures.present_emotions(labels) == ["anger", "surprise", "contempt"]
    _png_ok(figures.synthesis_grid_plot(model, faces, tmp_path / "grid_ck.png",
                                        emotions=figures.present_emotions(labels)))


def test_benchmark_command_kfold_end_to_end_and_resume(tmp_path, capsys, monkeypatch):
    from pipeline import cli

    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "sources:\n"
        "  - reader: synthetic\n"
        "    dataset: synth\n"
        "    aligned: true\n"
        "    options: {n_subjects: 24, samples_per_emotion: 1, size: 48, seed: 0,\n"
        "              domains: [lab], emotions: [anger, happiness, surprise]}\n"
        "image_size: 48\n"
        "detector: none\n")
    out, committed = tmp_path / "bench", tmp_path / "docs_results"
    argv = ["benchmark", "--data", str(spec), "--methods", "baseline", "--protocol", "kfold",
            "--k", "3", "--folds", "2", "--epochs", "1", "--out", str(out),
            "--results", str(committed)]
    capsys.readouterr()
    assert cli.main(argv) == 0
    printed = capsys.readouterr()
    assert "[1/2] baseline on fold0" in printed.out and "baseline/fold1: accuracy" in printed.out
    assert "INFO" not in printed.out + printed.err, "routine logs go to the file"
    (logged,) = os.listdir(out / "logs")
    assert "Component FaceIngestion is finished." in (out / "logs" / logged).read_text()
    md = (out / "results.md").read_text()
    assert "| baseline | small |" in md and "±" in md and "kfold" in md
    rows = json.loads((out / "rows.json").read_text())
    assert [r["fold"] for r in rows] == ["fold0", "fold1"]
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["params"] > 0
        for name in ("confusion", "tsne"):
            _png_ok(r["figures"][name])
        assert os.path.exists(out / "runs" / "baseline" / r["fold"] / "checkpoints")
        kept = committed / "baseline" / r["fold"]                     # the committed copy
        assert sorted(os.listdir(kept)) == ["confusion.png", "predictions.csv", "result.json"]
        assert len((kept / "predictions.csv").read_text().splitlines()) == r["test_images"] + 1
        assert json.loads((kept / "result.json").read_text())["accuracy"] == r["accuracy"]
    assert "| baseline | small |" in (committed / "results.md").read_text()
    _png_ok(out / "accuracy.png")
    # a fold committed by an earlier run of another method stays in the committed table
    other = committed / "baseline-earlier" / "fold0"
    other.mkdir(parents=True)
    earlier = dict(json.loads((committed / "baseline" / "fold0" / "result.json").read_text()),
                   run="baseline-earlier")
    (other / "result.json").write_text(json.dumps(earlier))
    first = (out / "runs" / "baseline" / "fold0" / "result.json").stat().st_mtime
    capsys.readouterr()
    assert cli.main(argv) == 0                                       # resumes: reuses results
    assert (out / "runs" / "baseline" / "fold0" / "result.json").stat().st_mtime == first
    assert "| baseline | small |" in capsys.readouterr().out
    table = (committed / "results.md").read_text()
    assert "| baseline | small |" in table and "| baseline-earlier | small |" in table
    assert "| baseline-earlier |" not in (out / "results.md").read_text()   # this run's rows
    tsne = out / "runs" / "baseline" / "fold1" / "tsne.png"
    os.remove(tsne)
    assert cli.main(argv + ["--redo-figures"]) == 0                  # redraws from the weights
    _png_ok(tsne)
    spec_obj = B.benchmark_spec(DataSpec.from_yaml(str(spec)), "kfold", 3)
    data = B.prepare_data(spec_obj, str(out / "data"), 48)           # cached: runs nothing
    fold0 = B.make_folds(data, "kfold", k=3)[0]
    _check_rebuilt_run_serves_raw_images(out / "runs" / "baseline" / "fold0", fold0.test(data),
                                         tmp_path)

    import shutil

    shutil.rmtree(out / "runs")                  # stopped on another machine: the commit stays
    monkeypatch.setattr(B, "train_fold", lambda *a, **k: pytest.fail("trained a committed fold"))
    assert cli.main(argv) == 0
    assert [r["accuracy"] for r in json.loads((out / "rows.json").read_text())] == [
        r["accuracy"] for r in rows]


def _check_rebuilt_run_serves_raw_images(run_dir, examples, tmp_path):
    """A finished run rebuilds from its weights with the predictions it saved, and
    benchmarks/serve_speed.py answers a class folder of JPEGs through the export."""
    import importlib.util

    from PIL import Image

    from models import training

    method, model, cfg = B.load_run_model(str(run_dir))
    probs = np.concatenate([out["probabilities"] for _, out in
                            training.predict(method, model, cfg, examples)])
    np.testing.assert_allclose(probs, np.load(run_dir / "predictions.npz")["probabilities"],
                               atol=1e-5)
    batch = next(iter(examples.batch(4096)))
    images, emotions = batch["image"].numpy(), batch["emotion"].numpy()
    order = np.argsort(emotions, kind="stable")               # as a class-folder test set is
    by_class = tf.data.Dataset.from_tensor_slices({k: v.numpy()[order] for k, v in batch.items()})
    arrays = B.collect_predictions(method, model, cfg, by_class, max_features=6)
    assert len(arrays["features"]) == len(arrays["feature_index"]) == 6
    index = arrays["feature_index"]
    assert list(index) == sorted(set(index)) and list(index) != list(range(6))  # a draw, not a head
    assert len(set(arrays["emotion"][index])) > 1

    folder = tmp_path / "faces"
    for i, (img, e) in enumerate(zip(images, emotions)):
        d = folder / contract.EMOTIONS[e]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img.squeeze() * 255).round().astype(np.uint8)).save(d / f"{i}.png")
    spec = importlib.util.spec_from_file_location(
        "serve_speed", os.path.join(os.path.dirname(__file__), "..", "benchmarks",
                                    "serve_speed.py"))
    serve_speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve_speed)
    out = tmp_path / "serve.json"
    assert serve_speed.main([str(run_dir), "--data", str(folder), "--single", "3",
                             "--out", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["method"] == "baseline" and row["images"] == len(images)
    expected = float((probs.argmax(-1) == emotions).mean())
    assert abs(row["accuracy"] - expected) <= 1.0 / len(images) + 1e-9  # 8-bit PNG may flip one
    assert row["images_per_second_batch1"] > 0 and row["images_per_second_batch64"] > 0


# tracenorm (31 s on 2 cores) and fersnet (15 s) in make test-all; test_tracenorm and
# test_fersnet check their save/load in CI.
@pytest.mark.parametrize("method", ["ddmtl", pytest.param("fersnet", marks=pytest.mark.slow),
                                    "multidataset", "sjmt",
                                    pytest.param("tracenorm", marks=pytest.mark.slow)])
def test_every_method_rebuilds_from_its_run_weights(method, prepared, tmp_path):
    """What ``--redo-figures`` and benchmarks/serve_speed.py rely on (baseline: above)."""
    from models import training

    (fold,) = B.make_folds(prepared, "holdout")
    run_dir = tmp_path / method
    size = {"tracenorm": {"pool_size": 1}}.get(method, {})   # 32 px leaves a 1x1 map
    B.run_one(method, fold, prepared, str(run_dir), epochs=1, figures_on=False,
              overrides=dict(size, image_size=32, batch_size=8))
    for legacy in (False, True):       # runs written before config.json existed
        if legacy:
            os.remove(run_dir / "config.json")
        m, model, cfg = B.load_run_model(str(run_dir), datasets=prepared.datasets)
        probs = np.concatenate([out["probabilities"] for _, out in
                                training.predict(m, model, cfg, fold.test(prepared))])
        np.testing.assert_allclose(probs, np.load(run_dir / "predictions.npz")["probabilities"],
                                   atol=1e-5)


# --------------------------------------------------------------------------- #
# runs that survive a stop (benchmarks/resume.py)
# --------------------------------------------------------------------------- #
def _fake_training(monkeypatch):
    """``train_fold`` replaced by a stand-in that records its calls and leaves what
    a real run leaves for the committed copy (``predictions.npz``, a confusion PNG)."""
    calls = []

    def fake(method_name, fold, data, run_dir, preset, overrides, epochs, minutes, seed,
             figures_on, initial_weights=None):
        calls.append(dict(overrides))
        test = fold.test(data)
        emotion, dataset_id = _column(test, "emotion"), _column(test, "dataset_id")
        probs = np.full((len(emotion), len(contract.EMOTIONS)), 0.1)
        probs[np.arange(len(emotion)), (emotion + len(calls)) % 7] = 0.3
        probs /= probs.sum(1, keepdims=True)
        np.savez_compressed(os.path.join(run_dir, "predictions.npz"), emotion=emotion,
                            dataset_id=dataset_id, probabilities=probs)
        cm = figures.confusion_matrix_plot(emotion, probs.argmax(-1),
                                           os.path.join(run_dir, "confusion.png"))
        return {"method": method_name, "fold": fold.name, "preset": preset,
                "accuracy": float((probs.argmax(-1) == emotion).mean()),
                "balanced_accuracy": 0.0, "train_seconds": 0.0, "figures": {"confusion": cm}}

    monkeypatch.setattr(B, "train_fold", fake)
    return calls


def test_resume_reruns_a_fold_only_when_its_settings_or_method_code_change(
        prepared, tmp_path, monkeypatch, caplog):
    from benchmarks import resume

    (fold,) = B.make_folds(prepared, "holdout")
    calls = _fake_training(monkeypatch)
    method_file, unrelated = tmp_path / "method.py", tmp_path / "training.py"
    method_file.write_text("LR = 0.1\n")
    unrelated.write_text("STEPS = 1\n")
    monkeypatch.setattr(resume, "method_sources", lambda name: [str(method_file)])
    out, committed = tmp_path / "out", tmp_path / "committed"

    def run(**overrides):
        caplog.clear()
        with caplog.at_level("INFO", logger="fermtl.benchmark"):
            return B.run_one("baseline", fold, prepared, str(out), epochs=2, figures_on=True,
                             overrides=overrides, results_dir=str(committed))

    first = run()
    assert len(calls) == 1
    saved = json.loads((committed / "baseline" / "holdout" / "result.json").read_text())
    assert saved["settings_fingerprint"] == first["settings_fingerprint"]
    assert saved["settings"]["fold_members"]["test"] == fold.sizes["test"]
    assert saved["settings"]["protocol"] == "holdout" and saved["figures"] == {
        "confusion": "confusion.png"}
    _png_ok(committed / "baseline" / "holdout" / "confusion.png")
    with open(committed / "baseline" / "holdout" / "predictions.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == fold.sizes["test"]
    assert list(table[0])[:4] == ["index", "dataset", "emotion", "predicted"]
    assert table[0]["dataset"] in prepared.datasets and table[0]["emotion"] in contract.EMOTIONS
    assert all(len(table[0][f"p_{e}"].split(".")[1]) == 4 for e in contract.EMOTIONS)

    assert run()["accuracy"] == first["accuracy"] and len(calls) == 1          # same: skipped
    unrelated.write_text("STEPS = 2\n")                                        # elsewhere
    run()
    assert len(calls) == 1
    run(lr=0.5)                                                                # a setting
    assert calls[-1] == {"lr": 0.5} and len(calls) == 2
    assert 'settings changed (overrides: {} -> {"lr": 0.5})' in caplog.text
    run(lr=0.5)
    assert len(calls) == 2
    (out / "checkpoints").mkdir()                          # a stopped run of the old code
    method_file.write_text("LR = 0.2\n")                                       # the method
    run(lr=0.5)
    assert len(calls) == 3 and "method code changed" in caplog.text
    assert "settings changed" not in caplog.text
    assert not (out / "checkpoints").exists()              # not resumed under the new code

    import shutil

    shutil.rmtree(out)                                     # a new machine: only the commit
    again = run(lr=0.5)
    assert len(calls) == 3 and "reusing " + str(committed) in caplog.text
    assert again["figures"]["confusion"] == str(committed / "baseline" / "holdout"
                                                / "confusion.png")
    assert again["code_fingerprint"] == json.loads(
        (committed / "baseline" / "holdout" / "result.json").read_text())["code_fingerprint"]


def test_a_variant_is_its_own_run_results_folder_and_table_line(prepared, tmp_path,
                                                                   monkeypatch):
    """An ablation in a settings file: a run name with ``method:``; its fold is
    committed under the run name and it gets its own line beside the method's."""
    path = tmp_path / "s.yaml"
    path.write_text("methods:\n  baseline: {epochs: 2}\n"
                    "  baseline-lr: {method: baseline, epochs: 2, overrides: {lr: 0.5}}\n")
    methods = tables.load_settings(str(path))["methods"]
    assert tables.resolve_methods("baseline,baseline-lr", runs=list(methods)) == [
        "baseline", "baseline-lr"]
    assert [tables.method_of(n, s) for n, s in methods.items()] == ["baseline", "baseline"]
    (fold,) = B.make_folds(prepared, "holdout")
    calls = _fake_training(monkeypatch)
    committed = tmp_path / "committed"
    rows = [B.run_one("baseline", fold, prepared, str(tmp_path / "runs" / name), epochs=2,
                      overrides=methods[name].get("overrides"), results_dir=str(committed),
                      run_name=name, figures_on=False) for name in methods]
    assert calls == [{}, {"lr": 0.5}]
    assert [(r["method"], r["run"]) for r in rows] == [("baseline", "baseline"),
                                                       ("baseline", "baseline-lr")]
    saved = json.loads((committed / "baseline-lr" / "holdout" / "result.json").read_text())
    assert saved["method"] == "baseline" and saved["settings"]["overrides"] == {"lr": 0.5}
    table = [dict(_row("baseline", "fold0", 0.6, 0.8), run=name) for name in methods]
    assert [s["method"] for s in tables.summarize(table)] == ["baseline", "baseline-lr"]


def test_method_code_is_the_methods_own_module_or_package():
    from benchmarks import resume
    from models import registry

    root = resume.REPO_ROOT
    assert list(resume.code_files("baseline")) == ["models/baseline.py"]
    fersnet = sorted(os.path.relpath(os.path.join(d, n), root)
                     for d, _, names in os.walk(os.path.join(root, "models", "fersnet"))
                     for n in names if n.endswith(".py"))
    assert list(resume.code_files("fersnet")) == fersnet and len(fersnet) > 1
    for name in registry.method_names():
        files = resume.code_files(name)
        assert files and all(f.startswith("models/") for f in files)
        assert "models/training.py" not in files and "models/registry.py" not in files
    spec = json.dumps({"sources": [{"path": os.path.join(root, "..", "shared", "fer2013"),
                                    "au_table": {"path": os.path.join(root, "x", "facs.csv")}},
                                   {"path": None}]})
    assert resume.portable_spec(spec)["sources"][0] == {"path": "../shared/fer2013",
                                                        "au_table": {"path": "x/facs.csv"}}


def test_benchmark_settings_results_folder_resolves_against_the_yaml(tmp_path):
    (tmp_path / "configs").mkdir()
    path = tmp_path / "configs" / "s.yaml"
    path.write_text("methods: {baseline: {epochs: 1}}\nresults: ../docs/results/x\n")
    assert tables.load_settings(str(path))["results"] == str(tmp_path / "docs" / "results" / "x")
    path.write_text("results: 3\n")
    with pytest.raises(tables.BenchmarkError, match="results: a folder path"):
        tables.load_settings(str(path))


def test_ablation_table_pairs_a_variant_with_its_method_fold_by_fold(tmp_path):
    from benchmarks import ablation_table

    def put(folder, run, fold, method, acc, overrides=None):
        d = tmp_path / folder / run / fold
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps(
            {"method": method, "accuracy": acc, "settings": {"overrides": overrides or {}}}))

    for fold, acc in (("fold0", 0.9), ("fold1", 0.7), ("fold2", 0.8)):
        put("full", "ddmtl", fold, "ddmtl", acc, {"image_size": 48})
    for fold, acc in (("fold0", 0.6), ("fold1", 0.8)):          # fold2 not finished yet
        put("abl", "ddmtl-no_rw", fold, "ddmtl", acc, {"image_size": 48, "weights_from": "none"})
    (row,) = ablation_table.paired_rows(str(tmp_path / "full"), str(tmp_path / "abl"))
    # paired differences 0.3 and -0.1: mean 0.1, population std 0.2
    assert row["folds"] == 2 and row["full_better_folds"] == 1
    assert abs(row["full"] - 0.8) < 1e-9 and abs(row["without"] - 0.7) < 1e-9
    assert abs(row["delta"] - 0.1) < 1e-9 and abs(row["delta_std"] - 0.2) < 1e-9
    text = ablation_table.markdown([row])
    assert "| ddmtl | ddmtl-no_rw (`weights_from: none`) | 2 |" in text and "+10.0 ± 20.0" in text
    assert text.rstrip().endswith("| 1/2 | — |")                     # no landmarks: no NME


def test_ablation_table_one_folder_and_paired_landmark_nme(tmp_path):
    from benchmarks import ablation_table

    def put(run, fold, acc, nme, overrides):
        d = tmp_path / "one" / run / fold
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps(
            {"method": "tracenorm", "accuracy": acc, "landmark_nme": nme,
             "settings": {"overrides": overrides}}))

    for fold, nme_full, nme_without in (("fold0", 10.0, 13.0), ("fold1", 12.0, 13.0)):
        put("tracenorm", fold, 0.8, nme_full, {})
        put("tracenorm-no_ada", fold, 0.7, nme_without, {"ada": False})
    folder = str(tmp_path / "one")
    (row,) = ablation_table.paired_rows(folder, folder)     # the method is not its own variant
    assert row["variant"] == "tracenorm-no_ada"
    # NME without - full: 3 and 1 -> mean 2, population std 1 (lower NME is better)
    assert abs(row["nme_full"] - 11.0) < 1e-9 and abs(row["nme_without"] - 13.0) < 1e-9
    assert abs(row["nme_delta"] - 2.0) < 1e-9 and abs(row["nme_delta_std"] - 1.0) < 1e-9
    assert "| 11.00 / 13.00 % (+2.00 ± 1.00) |" in ablation_table.markdown([row])


def test_ablation_table_by_name_pairs_pretrained_runs_with_the_same_runs_from_scratch(
        tmp_path):
    from benchmarks import ablation_table

    def put(folder, fold, acc, pretrain=None):
        d = tmp_path / folder / "sjmt" / fold
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps(
            {"method": "sjmt", "accuracy": acc,
             "settings": {"overrides": {}, **({"pretrain": pretrain} if pretrain else {})}}))

    for fold, tuned, scratch in (("fold0", 0.9, 0.8), ("fold1", 0.7, 0.8)):
        put("tuned", fold, tuned, {"datasets": ["fer2013"], "minutes": 10.0})
        put("scratch", fold, scratch)
    tuned, scratch = str(tmp_path / "tuned"), str(tmp_path / "scratch")
    assert ablation_table.paired_rows(tuned, scratch) == []    # a method is not its variant
    (row,) = ablation_table.paired_rows(tuned, scratch, by_name=True)
    assert row["variant"] == "sjmt (scratch)" and row["overrides"] == {"pretrain": "none"}
    assert abs(row["delta"]) < 1e-9 and abs(row["delta_std"] - 0.1) < 1e-9
    assert row["full_better_folds"] == 1 and row["folds"] == 2


def test_code_digest_ignores_docstrings_and_comments_not_code(tmp_path, monkeypatch):
    from benchmarks import resume

    base = b'"""Module."""\nimport math\n\n\ndef f(x):\n    """Eq 1."""\n    return x * 2\n'
    same = (b'"""Module, reworded: see docs/methods.md."""\nimport math  # why\n\n\n'
            b'def f(x):\n    """Eq 1: y = 2x."""\n\n    return x * 2   # doubled\n')
    other = base.replace(b"x * 2", b"x * 3")
    assert resume.source_digest(base) == resume.source_digest(same)
    assert resume.source_digest(base) != resume.source_digest(other)
    assert resume.source_digest(b"def g():\n    'only a docstring'\n") == resume.source_digest(
        b"def g():\n    pass\n")
    # a result made with byte digests still matches the same bytes, not other bytes
    method_file = tmp_path / "m.py"
    method_file.write_bytes(base)
    monkeypatch.setattr(resume, "method_sources", lambda name: [str(method_file)])
    fp = resume.fingerprint("baseline", {"method": "baseline"})
    assert fp["code_digest"] == resume.CODE_DIGEST
    files = resume.code_files("baseline", resume._bytes_digest)
    old = dict(fp, code_files=files, code_fingerprint=resume.code_fingerprint(files))
    old.pop("code_digest")
    assert resume.difference(old, fp) is None
    method_file.write_bytes(same)
    assert "method code changed" in resume.difference(old, resume.fingerprint(
        "baseline", {"method": "baseline"}))


def test_mean_shape_nme_predicts_the_train_mean_for_every_test_face():
    import tensorflow as tf

    from benchmarks.mean_shape_nme import mean_shape_nme

    rng = np.random.default_rng(0)

    def faces(n, labelled):
        pts = rng.random((n, 68, 2)).astype(np.float32)
        pts[:, 36], pts[:, 45] = [0.2, 0.4], [0.8, 0.4]          # eye corners 0.6 apart
        return pts, np.asarray(labelled, np.float32)

    (tr, tr_m), (te, te_m) = faces(4, [1, 1, 0, 1]), faces(3, [1, 0, 1])
    ds = lambda p, m: tf.data.Dataset.from_tensor_slices(
        {"landmarks": p.reshape(len(p), -1), "landmarks_mask": m})
    mean = tr[tr_m > 0].mean(0)                 # the unlabelled train face is not averaged
    # NME per labelled test face: mean over the 68 points of ||mean - true|| / 0.6, in %
    want = np.mean([np.linalg.norm(mean - te[i], axis=-1).mean() / 0.6 * 100 for i in (0, 2)])
    assert mean_shape_nme(ds(tr, tr_m), ds(te, te_m)) == pytest.approx(want, rel=1e-5)
    assert mean_shape_nme(ds(tr, tr_m * 0), ds(te, te_m)) is None
