"""A user's mistake is one ``error: <what, where, how to fix>`` line and exit
code 2, before any component runs: a missing data path, an unknown config
key, a bad ``--set`` path or value, an unknown method or preset, malformed
YAML. ``--set`` addresses list items (``data.sources.0.path=...``)."""

import os

import pytest
import yaml

from pipeline.cli import main
from pipeline.config import load_config, preflight


@pytest.fixture
def run_yaml(tmp_path):
    """A run config whose only source is a class folder that does not exist."""
    cfg = {"name": "t", "pipeline_root": str(tmp_path / "root"),
           "data": {"sources": [{"reader": "class_folders", "path": "missing/fer",
                                 "dataset": "fer", "aligned": True}],
                    "image_size": 48, "detector": "none"}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("extra, message", [
    ([], f"error: data.sources.0.path: {{tmp}}{os.sep}missing{os.sep}fer does not exist; fix "
         "the path in {tmp}{sep}run.yaml or pass --set data.sources.0.path=PATH"),
    (["--set", "data.sources.0.path=also/missing"], "data.sources.0.path: {tmp}"),
    (["--set", "train.epoch=2"], "error: --set train.epoch: unknown key 'epoch' in train"),
    (["--set", "data.sources.2.path=x"], "data.sources is a list of 1 item(s); address one "
                                         "as data.sources.0 .. data.sources.0"),
    (["--set", "train.epochs=[1"], "--set train.epochs: the value '[1' is not valid YAML"),
    (["--set", "train.epochs"], "--set expects KEY=VALUE"),
    (["--set", "train.epochs.x=1"], "train.epochs is a value (3)"),
    (["--method", "nope"], "config.method.name: unknown method 'nope'"),
    (["--preset", "huge", "--set", "data.sources.0.path={tmp}"],
     "method: baseline: unknown preset 'huge'"),
    (["--set", "method.overrides.nope=1", "--set", "data.sources.0.path={tmp}"],
     "unknown config keys ['nope']"),
    (["--set", "train.base_model=no_run", "--set", "data.sources.0.path={tmp}"],
     "train.base_model: {tmp}{sep}no_run is neither a Model artifact"),
])
def test_mistakes_are_one_line_and_exit_2(run_yaml, tmp_path, capsys, extra, message):
    code = main(["run", "--config", str(run_yaml), *(a.format(tmp=tmp_path) for a in extra)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert message.format(tmp=tmp_path, sep=os.sep) in err, err
    assert not (tmp_path / "root").exists(), "no component ran"


def test_unknown_key_and_malformed_yaml(tmp_path, capsys):
    bad_key = tmp_path / "a.yaml"
    bad_key.write_text("name: t\ndata: {sources: []}\ntrian: {epochs: 1}\n")
    assert main(["run", "--config", str(bad_key)]) == 2
    assert "error: config: unknown key 'trian'" in capsys.readouterr().err
    broken = tmp_path / "b.yaml"
    broken.write_text("name: t\ndata: [unclosed\n")
    assert main(["run", "--config", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {broken}: malformed YAML in the config") and \
        err.count("\n") == 1


def test_set_addresses_list_items(run_yaml, tmp_path):
    (tmp_path / "fer" / "happy").mkdir(parents=True)
    config = load_config(str(run_yaml), sets=[f"data.sources.0.path={tmp_path / 'fer'}",
                                              "data.sources.0.domain=wild", "train.epochs=1"])
    src = config.data["sources"][0]
    assert src["path"] == str(tmp_path / "fer") and src["domain"] == "wild"
    assert src["reader"] == "class_folders" and config.train["epochs"] == 1
    preflight(config)      # the path exists now: nothing to report
    data_file = tmp_path / "data.yaml"
    data_file.write_text(yaml.safe_dump({"sources": [{"reader": "synthetic", "dataset": "s"}]}))
    config = load_config(raw={"data": str(data_file)}, sets=["data.sources.0.dataset=other"])
    assert config.data["sources"][0]["dataset"] == "other", "--set reaches into a spec file"


def test_missing_model_or_images(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nothing"), "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no SavedModel in") and err.count("\n") == 1
