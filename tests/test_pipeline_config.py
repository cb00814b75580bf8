"""Run-config loading, the curated schema and the anomaly gate (no pipeline run)."""

import os

import pytest
import yaml

from pipeline.config import CONFIG_DIR, ConfigError, load_config


def test_checked_in_schema_matches_the_contract():
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    from components import contract
    from pipeline import schema

    with open(schema.SCHEMA_PATH) as f:
        checked_in = text_format.Parse(f.read(), schema_pb2.Schema())
    assert checked_in == schema.contract_schema(), \
        "run `python -m pipeline.schema` after changing the contract"
    names = {f.name for f in checked_in.feature}
    assert names == set(contract.feature_spec())


def test_shipped_configs_load():
    for name in os.listdir(CONFIG_DIR):
        if name.endswith(".yaml"):
            cfg = load_config(os.path.join(CONFIG_DIR, name))
            assert cfg.data["sources"], name
            assert cfg.push_dir.endswith(cfg.model_name)


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data.yaml").write_text(yaml.safe_dump({"sources": [
        {"reader": "synthetic", "dataset": "s"}]}))
    (tmp_path / "sub" / "run.yaml").write_text(yaml.safe_dump(
        {"pipeline_root": "../root", "data": "data.yaml",
         "train": {"base_model": "../pretrain_root"}}))
    cfg = load_config(str(tmp_path / "sub" / "run.yaml"))
    assert cfg.pipeline_root == str(tmp_path / "root")
    assert cfg.train["base_model"] == str(tmp_path / "pretrain_root")
    assert cfg.data_base_dir == str(tmp_path / "sub")
    assert cfg.serving_dir == str(tmp_path / "root" / "serving")


@pytest.mark.parametrize("raw, message", [
    ({"data": {"sources": []}, "methd": {}}, "unknown key 'methd'"),
    ({"data": {"sources": []}, "method": {"name": "nope"}}, "unknown method 'nope'"),
    ({"method": {"name": "baseline"}}, "data spec"),
    ({"data": {"sources": []}, "train": 3}, "train: expected a mapping"),
])
def test_config_errors_name_the_field(raw, message):
    with pytest.raises(ConfigError, match=message):
        load_config(raw=raw)


def test_cli_overrides(tmp_path):
    from pipeline.commands.run import _overrides

    class Args:
        method = "sjmt"
        preset = None

    assert _overrides(Args) == {"method": {"name": "sjmt"}}
    raw = {"data": {"sources": [{"reader": "synthetic", "dataset": "s"}]}}
    config = load_config(raw=raw, overrides=_overrides(Args),
                         sets=["train.epochs=2", "evaluation.min_accuracy=0.5"])
    assert config.method["name"] == "sjmt" and config.train["epochs"] == 2
    assert config.evaluation["min_accuracy"] == 0.5


def test_fes_augment_flag_merges_into_the_method_overrides(tmp_path):
    from pipeline.commands.run import _overrides

    class Args:
        method = "fersnet"
        preset = None
        fes_augment = True

    raw = {"data": {"sources": [{"reader": "synthetic", "dataset": "s"}]},
           "method": {"name": "baseline", "preset": "small", "overrides": {"batch_size": 8}}}
    config = load_config(raw=raw, overrides=_overrides(Args),
                         sets=["method.overrides.fes_epochs=2"])
    assert config.method["name"] == "fersnet"
    assert config.method["overrides"] == {"batch_size": 8, "fes_augment": True, "fes_epochs": 2}


def test_anomaly_gate_reads_and_formats_anomalies(tmp_path):
    from tensorflow_metadata.proto.v0 import anomalies_pb2
    from tfx.types import artifact_utils, standard_artifacts

    from components.anomaly_gate import ANOMALIES_FILE, format_anomalies, read_anomalies

    artifact = standard_artifacts.ExampleAnomalies()
    artifact.uri = str(tmp_path)
    artifact.split_names = artifact_utils.encode_split_names(["train", "eval"])
    for split, bad in (("train", True), ("eval", False)):
        a = anomalies_pb2.Anomalies()
        if bad:
            info = a.anomaly_info["emotion"]
            info.reason.add(description="Unexpectedly large value: 9.")
        os.makedirs(tmp_path / f"Split-{split}")
        (tmp_path / f"Split-{split}" / ANOMALIES_FILE).write_bytes(a.SerializeToString())
    found = read_anomalies(artifact)
    assert found == {"train": ["emotion: Unexpectedly large value: 9."]}
    text = format_anomalies(found)
    assert "split train" in text and "emotion" in text


def test_fit_eval_split_sends_both_splits_to_the_fit_and_is_off_by_default():
    from components.ingestion import DataSpec
    from models.trainer_module import fit_files
    from pipeline.pipeline import method_config, train_config

    raw = {"data": {"sources": [{"reader": "synthetic", "dataset": "s"}]}}
    for sets, expected in (([], ["t1", "t2"]), (["train.fit_eval_split=true"],
                                                 ["t1", "t2", "e1"])):
        config = load_config(raw=raw, sets=sets)
        spec = DataSpec.from_dict(config.data, config.data_base_dir)
        train = train_config(config, method_config(config, spec), spec)
        assert train["fit_eval_split"] == bool(sets)
        assert fit_files(["t1", "t2"], ["e1"], train) == expected
