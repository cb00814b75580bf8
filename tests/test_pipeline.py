"""End-to-end TFX pipeline on tiny synthetic data (LocalDagRunner, Beam DirectRunner).

One module-scoped run serves several assertions; the rerun, the untrained model
and the anomaly each add one more (cached or short) run.
"""

import glob
import os

import numpy as np
import pytest

from pipeline.config import load_config

pytestmark = pytest.mark.timeout(600)

TINY_DATA = {
    "sources": [{"reader": "synthetic", "dataset": "synth", "aligned": True,
                 "options": {"n_subjects": 16, "samples_per_emotion": 2, "size": 48,
                             "seed": 3, "domains": ["lab", "wild"]}}],
    "split": {"eval_fraction": 0.3, "seed": 1},
    "image_size": 48,
    "detector": "none",
}


def _config(root, **overrides):
    raw = {"name": "fermtl-test", "pipeline_root": str(root), "data": TINY_DATA,
           "method": {"name": "baseline", "preset": "small", "overrides": {}},
           "train": {"epochs": 20, "batch_size": 32},
           # chance is 1/8: an untrained model predicting one class scores 0.125.
           "evaluation": {"min_accuracy": 0.22, "max_accuracy_drop": 0.5},
           "model_name": "fer"}
    for key, value in overrides.items():
        raw[key] = value
    return load_config(raw=raw)


def _executions(root):
    from pipeline import artifacts

    return artifacts.store(os.path.join(root, "metadata.sqlite")).get_executions()


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    from pipeline.pipeline import run_local

    root = tmp_path_factory.mktemp("pipeline")
    config = _config(root)
    run_local(config)
    # Later tests rerun into the same root; keep this first evaluation's accuracy.
    config.tfma_accuracy = _tfma_overall(root)
    (config.first_push,) = glob.glob(os.path.join(config.push_dir, "*"))
    return config


def test_every_artifact_and_the_blessing(good_run):
    root = good_run.pipeline_root
    for component, output in [("FaceIngestion", "examples"), ("StatisticsGen", "statistics"),
                              ("ImportSchemaGen", "schema"), ("ExampleValidator", "anomalies"),
                              ("Transform", "transform_graph"), ("Trainer", "model"),
                              ("Evaluator", "evaluation"), ("Evaluator", "blessing"),
                              ("Pusher", "pushed_model")]:
        assert glob.glob(os.path.join(root, component, output, "*")), (component, output)
    for split in ("train", "eval"):
        assert glob.glob(os.path.join(root, "FaceIngestion", "examples", "*",
                                      f"Split-{split}", "*.gz"))
    blessing = glob.glob(os.path.join(root, "Evaluator", "blessing", "*"))[0]
    assert os.path.exists(os.path.join(blessing, "BLESSED"))
    versions = glob.glob(os.path.join(good_run.push_dir, "*", "saved_model.pb"))
    assert len(versions) == 1, "Pusher writes <serving_dir>/<model>/<version>/"


def test_pushed_model_serves_raw_images_and_examples(good_run):
    import tensorflow as tf

    from components import contract, synthetic

    version = glob.glob(os.path.join(good_run.push_dir, "*"))[0]
    loaded = tf.saved_model.load(version)
    samples = list(synthetic.generate(n_subjects=1, samples_per_emotion=1, domains=("lab",),
                                      size=64, seed=9))[:4]
    images = tf.constant([s.image for s in samples])
    out = loaded.signatures["serving_default"](images)
    probs = out["probabilities"].numpy()
    assert probs.shape == (4, contract.NUM_EMOTIONS)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-4)
    out2 = loaded.signatures["serving_examples"](tf.constant([s.serialize() for s in samples]))
    np.testing.assert_allclose(out2["probabilities"].numpy(), probs, atol=1e-5)


def test_pushed_model_would_load_in_tf_serving(good_run):
    """Signatures and methods, no Python-only ops, every op registered: the graph walk."""
    from pipeline.serving.graph_check import FERMTL_SIGNATURES, servable_problems

    version = glob.glob(os.path.join(good_run.push_dir, "*"))[0]
    assert servable_problems(version, FERMTL_SIGNATURES) == []


def test_report_has_slices_and_plots(good_run, tmp_path):
    from pipeline.report import write_report

    path = write_report(good_run.pipeline_root, str(tmp_path))
    text = open(path).read()
    assert "BLESSED" in text and "NOT BLESSED" not in text
    for slice_name in ("overall", "emotion=happiness", "dataset=synth_lab", "domain=wild"):
        assert slice_name in text
    for png in ("per_class_accuracy.png", "confusion_matrix.png", "training_curves.png"):
        assert os.path.getsize(os.path.join(tmp_path, png)) > 1000
        assert f"]({png})" in text
    # Per-class recall (argmax-based) equals the accuracy on that class's slice.
    import json

    rows = json.loads((tmp_path / "metrics.json").read_text())
    recall = {r["class"]: r["value"] for r in rows
              if r["slice"] == "overall" and r["metric"] == "recall_argmax"}
    per_slice = {r["slice"][len("emotion="):]: r["value"] for r in rows
                 if r["slice"].startswith("emotion=") and r["metric"] ==
                 "sparse_categorical_accuracy"}
    assert per_slice and all(abs(recall[c] - v) < 1e-6 for c, v in per_slice.items())


@pytest.mark.slow   # a second whole pipeline run, 29 s on 2 cores
def test_rerun_hits_the_cache(good_run):
    from pipeline.pipeline import run_local

    before = len(_executions(good_run.pipeline_root))
    run_local(good_run)
    from ml_metadata.proto import metadata_store_pb2

    new = _executions(good_run.pipeline_root)[before:]
    cached = [e for e in new if e.last_known_state == metadata_store_pb2.Execution.CACHED]
    # Ingestion .. Trainer are cached; the Evaluator runs again because its
    # baseline (the latest blessed model) is new since the first run.
    assert len(cached) >= 7, [(e.type_id, e.last_known_state) for e in new]


def test_untrained_model_is_not_blessed_nor_pushed(good_run):
    from pipeline.pipeline import run_local
    from pipeline.report import latest_push

    bad = _config(good_run.pipeline_root, train={"epochs": 0, "batch_size": 32})
    pushed_before = glob.glob(os.path.join(bad.push_dir, "*", "saved_model.pb"))
    run_local(bad)
    blessings = sorted(glob.glob(os.path.join(bad.pipeline_root, "Evaluator", "blessing", "*")),
                       key=lambda p: int(os.path.basename(p)))
    assert os.path.exists(os.path.join(blessings[-1], "NOT_BLESSED"))
    assert not latest_push(bad.metadata_path)["pushed"]
    assert glob.glob(os.path.join(bad.push_dir, "*", "saved_model.pb")) == pushed_before
    # A warm start from this root takes the blessed model, not this newer one.
    from models import warm_start
    from pipeline import artifacts

    (newest,) = artifacts.latest_outputs(bad.metadata_path, "Trainer")["model"]
    base = artifacts.base_model_uri(bad.pipeline_root, warm_start.WEIGHTS_FILE)
    assert not _is_the_pushed_model(newest.uri, good_run)
    assert base != newest.uri and _is_the_pushed_model(base, good_run)


def test_anomaly_stops_the_run(tmp_path):
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    from pipeline import schema as contract_schema
    from pipeline.pipeline import create_pipeline
    from tfx import v1 as tfx

    # A schema that allows only 3 emotion classes: the synthetic data has 8.
    schema = contract_schema.contract_schema()
    for feature in schema.feature:
        if feature.name == "emotion":
            feature.int_domain.CopyFrom(schema_pb2.IntDomain(min=-1, max=2))
    path = tmp_path / "schema.pbtxt"
    path.write_text(text_format.MessageToString(schema))
    config = _config(tmp_path / "root")
    with pytest.raises(Exception) as err:
        tfx.orchestration.LocalDagRunner().run(create_pipeline(config, schema_path=str(path)))
    assert "emotion" in str(err.value) and "schema" in str(err.value)
    assert not glob.glob(os.path.join(config.pipeline_root, "Trainer", "model", "*"))


# tracenorm (54 s on 2 cores: two ResNet-34s traced, trained and exported) and
# fersnet (34 s) run in make test-all; tests/test_fersnet.py and test_tracenorm.py
# train and export both in CI.
@pytest.mark.parametrize("method_name", ["sjmt", "ddmtl", "multidataset",
                                         pytest.param("fersnet", marks=pytest.mark.slow),
                                         pytest.param("tracenorm", marks=pytest.mark.slow)])
def test_trainer_module_trains_and_exports_any_method(good_run, method_name, tmp_path):
    """The Trainer's run_fn on the run's Transform output, for every other method
    (a few steps each): what `fermtl run --method NAME` executes."""
    # The run's Transform resizes to 48 px; trace-norm's ResNet-34 leaves a 2x2 map
    # there, too small for its 3x3 pool.
    extra = {"tracenorm": {"pool_size": 1}}.get(method_name, {})
    _run_trainer_module(good_run, method_name, extra, tmp_path)
    assert os.path.exists(tmp_path / "run" / "history.json")


@pytest.mark.slow   # 84 s on 2 cores; FES itself: tests/test_fersnet.py (fast)
def test_trainer_module_runs_fersnet_fes_augmentation(good_run, tmp_path):
    """`fermtl run --method fersnet --fes-augment`: after fit, the Trainer module
    synthesizes every expression for each Transform-output face and fine-tunes."""
    import json

    _run_trainer_module(good_run, "fersnet", {"fes_augment": True, "fes_epochs": 1}, tmp_path)
    history = json.loads((tmp_path / "run" / "history.json").read_text())["history"]
    assert history["post_fit_cls_loss"] and history["cls_loss"]


def _run_trainer_module(good_run, method_name, overrides, tmp_path,
                        train=None, base_model=None):
    """run_fn for ``method_name`` (small preset at 48 px + ``overrides``, 2 steps;
    ``train``: the custom config's train section, ``base_model``: the Trainer's
    base_model input) on the good run's Transform output, with the DataAccessor
    TFX builds; checks the export serves raw images."""
    import tensorflow as tf
    from tfx.components.trainer.fn_args_utils import FnArgs

    from components import synthetic
    from models import trainer_module
    from models.registry import get_method
    from pipeline import artifacts

    transform = artifacts.latest_outputs(good_run.metadata_path, "Transform")
    examples = transform["transformed_examples"]
    cfg = get_method(method_name).config("small", image_size=48, **overrides)
    serving_dir = str(tmp_path / "serving")
    trainer_module.run_fn(FnArgs(
        train_files=artifacts.split_pattern(examples, "train"),
        eval_files=artifacts.split_pattern(examples, "eval"),
        data_accessor=artifacts.data_accessor(examples),
        train_steps=2, eval_steps=1, transform_output=transform["transform_graph"][0].uri,
        serving_model_dir=serving_dir, model_run_dir=str(tmp_path / "run"),
        base_model=base_model,
        custom_config={"method": cfg, "train": train or {"epochs": 1, "batch_size": 16}}))
    loaded = tf.saved_model.load(serving_dir)
    images = [s.image for s in synthetic.generate(n_subjects=1, samples_per_emotion=1,
                                                  domains=("wild",), size=64, seed=5)][:3]
    out = loaded.signatures["serving_default"](images=tf.constant(images))
    assert out["probabilities"].shape == (3, 8)


def _tfma_overall(root, metric="sparse_categorical_accuracy"):
    import tensorflow_model_analysis as tfma

    from pipeline.report import find_run_artifacts, metric_rows

    rows = metric_rows(tfma.load_eval_result(find_run_artifacts(root)["evaluation"]))
    (value,) = [r["value"] for r in rows
                if r["slice"] == "overall" and r["metric"] == metric and not r["class"]]
    return value


def test_core_accuracy_equals_the_evaluators_tfma_accuracy(good_run):
    """``models.metrics.emotion_metrics`` on the pushed model's answers for the
    Evaluator's examples (the eval split, through ``serving_examples``) gives
    TFMA's ``SparseCategoricalAccuracy``."""
    import tensorflow as tf

    from models import metrics

    root = good_run.pipeline_root
    serve = tf.saved_model.load(good_run.first_push).signatures["serving_examples"]
    files = glob.glob(os.path.join(root, "FaceIngestion", "examples", "*", "Split-eval", "*"))
    y, prob = [], []
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(64):
        parsed = tf.io.parse_example(batch, {"emotion": tf.io.FixedLenFeature([], tf.int64)})
        y.append(parsed["emotion"].numpy())
        prob.append(serve(examples=batch)["probabilities"].numpy())
    ours = metrics.emotion_metrics(np.concatenate(y), np.concatenate(prob))["accuracy"]
    assert ours == pytest.approx(good_run.tfma_accuracy, abs=1e-6)


def test_benchmark_and_run_give_the_same_accuracy(good_run, tmp_path):
    """The same data, seed, batch and epochs through `fermtl benchmark`
    (holdout) and `fermtl run` (TFMA's accuracy) agree within 0.5 points: both
    fit with the training core on the same Transform output."""
    from benchmarks.protocols import run_benchmark

    result = run_benchmark(
        TINY_DATA, str(tmp_path / "bench"), methods="baseline", protocol="holdout",
        method_settings={"baseline": {"preset": "small", "overrides": {"batch_size": 32},
                                      "epochs": good_run.train["epochs"]}},
        seed=good_run.train["seed"], figures_on=False)
    (row,) = result["rows"]
    assert row["train_images"] > 0 and row["test_images"] > 0
    assert row["accuracy"] == pytest.approx(good_run.tfma_accuracy, abs=0.005)


# --- warm start (train.base_model) -------------------------------------------------

def _is_the_pushed_model(model_uri, good_run):
    """Whether the Model artifact at ``model_uri`` is the one the good run pushed
    (its SavedModel's variables are byte-equal to the pushed copy's)."""
    import filecmp

    from tfx.utils import path_utils

    name = os.path.join("variables", "variables.data-00000-of-00001")
    return filecmp.cmp(os.path.join(path_utils.serving_model_path(model_uri), name),
                       os.path.join(good_run.first_push, name), shallow=False)


def _network_weights(model):
    """Variable path -> value of a built model's network (not its optimizer),
    the label set left out."""
    from models.training import LABEL_SET

    return {v.path: v.numpy() for v in model.weights
            if v.name != LABEL_SET and "optimizer" not in v.path}


def test_the_model_artifact_keeps_the_fitted_weights(good_run):
    """Beside the SavedModel, the Trainer's Model artifact holds the fitted
    weights, loadable (shapes checked) into a new model of the run's method."""
    from models import training, warm_start
    from models.registry import get_method
    from pipeline import artifacts

    (model,) = artifacts.latest_outputs(good_run.metadata_path, "Trainer")["model"]
    path = warm_start.weights_path(model.uri)
    assert os.path.exists(path)
    built = get_method("baseline").build(get_method("baseline").config("small"))
    training.restore(built, path)


def test_base_model_is_the_latest_blessed_model(good_run):
    """A pipeline root as ``train.base_model`` names the model its Evaluator
    blessed last (the pushed one); a Model artifact folder names itself. That
    it is not merely the newest model: test_untrained_model_is_not_blessed_nor_pushed."""
    from models import warm_start
    from pipeline import artifacts

    uri = artifacts.base_model_uri(good_run.pipeline_root, warm_start.WEIGHTS_FILE)
    assert _is_the_pushed_model(uri, good_run)
    (newest,) = artifacts.latest_outputs(good_run.metadata_path, "Trainer")["model"]
    assert artifacts.base_model_uri(newest.uri, warm_start.WEIGHTS_FILE) == newest.uri


def test_warm_start_fits_from_the_base_models_weights(good_run, tmp_path):
    """run_fn with a base_model input and 0 epochs exports the base model's
    network weights unchanged; without one, a fresh initialisation."""
    from tfx.utils import path_utils

    from models import training, warm_start
    from models.registry import get_method
    from pipeline import artifacts

    base = artifacts.base_model_uri(good_run.pipeline_root, warm_start.WEIGHTS_FILE)
    method = get_method("baseline")
    cfg = method.config("small", image_size=48)
    weights = {}
    for name, base_model in (("warm", path_utils.serving_model_path(base)), ("cold", None)):
        _run_trainer_module(good_run, "baseline", {}, tmp_path / name,
                            train={"epochs": 0, "batch_size": 16}, base_model=base_model)
        model = method.build(dict(cfg))
        training.restore(model, warm_start.weights_path(str(tmp_path / name)))
        weights[name] = _network_weights(model)
    model = method.build(dict(cfg))
    training.restore(model, warm_start.weights_path(base))
    expected = _network_weights(model)
    assert weights["warm"].keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(weights["warm"][key], value, err_msg=key)
    assert any(not np.array_equal(weights["cold"][k], v) for k, v in expected.items())


def test_warm_start_refuses_another_network_or_no_model(good_run, tmp_path):
    from models.registry import get_method
    from pipeline.config import ConfigError, base_model_uri

    paper = get_method("baseline").config("paper")
    with pytest.raises(ConfigError, match="preset 'small' there, 'paper' here"):
        base_model_uri(good_run.pipeline_root, paper)
    with pytest.raises(ConfigError, match="neither a Model artifact"):
        base_model_uri(str(tmp_path), paper)


def test_pipeline_imports_the_base_model_for_the_trainer(good_run, tmp_path):
    """``train.base_model`` adds an Importer whose Model feeds the Trainer's
    ``base_model``; the backup folder changes with it."""
    from pipeline.pipeline import create_pipeline

    warm = _config(tmp_path, train={"epochs": 1, "batch_size": 32,
                                    "base_model": good_run.pipeline_root})
    nodes = {c.id: c for c in create_pipeline(warm).components}
    importer = nodes["base_model_importer"]
    assert nodes["Trainer"].inputs["base_model"].producer_component_id == importer.id
    assert _is_the_pushed_model(importer.exec_properties["artifact_uri"], good_run)
    cold = _config(tmp_path, train={"epochs": 1, "batch_size": 32})
    assert "base_model_importer" not in {c.id for c in create_pipeline(cold).components}
    assert (nodes["Trainer"].exec_properties["custom_config"]
            != {c.id: c for c in create_pipeline(cold).components}["Trainer"]
            .exec_properties["custom_config"])
