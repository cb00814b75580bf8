"""Pre-train on one dataset, fine-tune on the folds of another (benchmarks/pretrain.py,
issue 17: FER2013 -> CK+ folds). Two tiny synthetic datasets stand in for FER2013
(``wide``) and CK+ (``ck``), as in test_benchmark_fold_datasets.py."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml

from benchmarks import pretrain as P
from benchmarks import protocols as B
from benchmarks import tables
from models import training
from tests.method_helpers import synthetic_split
# the fixtures' data (module-scoped: this module's own copy)
from tests.test_benchmark_fold_datasets import (CK, K, SPEC, WIDE, _keys,  # noqa: F401
                                                bench_dir, prepared)


# --------------------------------------------------------------------------- #
# the core: Plan.initial_weights
# --------------------------------------------------------------------------- #
def _weights_equal(a, b) -> bool:
    """Every weight but the label sets, which a fine-tuning starts empty."""
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a.weights, b.weights)
               if x.name != training.LABEL_SET)


def _label_sets(model):
    return [np.asarray(v) for v in model.weights if v.name == training.LABEL_SET]


def test_a_fit_starts_from_the_initial_weights_with_a_fresh_optimizer(tmp_path):
    train, _ = synthetic_split(n_train=4, size=48, samples_per_emotion=1)
    method, pre, cfg, _ = training.train("baseline", train, epochs=1, batch_size=8)
    path = str(tmp_path / "pre.weights.h5")
    pre.save_weights(path)
    examples = training.examples_of(train, cfg)
    # no epoch: what the fit holds is what it started from
    start = training.fit(method, dict(cfg), examples,
                         plan=training.Plan(epochs=0, batch_size=8, initial_weights=path))
    assert _weights_equal(start.model, pre)
    assert _label_sets(pre) and all(s.sum() > 0 for s in _label_sets(pre))
    assert all(s.sum() == 0 for s in _label_sets(start.model))   # the pre-training's, dropped
    optimizer = start.model.optimizer        # fresh: no step, no moments
    assert not optimizer.built or (int(optimizer.iterations) == 0 and all(
        not np.asarray(v).any() for v in optimizer.variables
        if v is not optimizer.iterations and "learning_rate" not in v.path))
    scratch = training.fit(method, dict(cfg), examples, plan=training.Plan(epochs=0, batch_size=8))
    assert not _weights_equal(scratch.model, pre)
    # another architecture does not load quietly
    other_method, other, _, _ = training.train("baseline", train, epochs=1, batch_size=8,
                                               overrides={"dense": [32]})
    other_path = str(tmp_path / "other.weights.h5")
    other.save_weights(other_path)
    with pytest.raises(ValueError):
        training.fit(method, dict(cfg), examples,
                     plan=training.Plan(epochs=0, batch_size=8, initial_weights=other_path))


# --------------------------------------------------------------------------- #
# folds and settings
# --------------------------------------------------------------------------- #
def test_the_pretraining_reads_its_datasets_train_split_and_scores_their_eval_split(prepared):
    fold = P.pretrain_fold(prepared, [WIDE])
    wide = prepared.datasets.index(WIDE)
    assert _keys(fold.train(prepared)) == [r for r in _keys(prepared.examples(("train",)))
                                           if r[0] == wide]
    assert _keys(fold.test(prepared)) == [r for r in _keys(prepared.examples(("eval",)))
                                          if r[0] == wide]
    assert fold.sizes["train"] and fold.sizes["test"]


def test_a_finetuning_fold_trains_without_the_pretraining_datasets(prepared):
    folds = B.make_folds(prepared, "kfold", K, fold_datasets=[CK])
    wide = prepared.datasets.index(WIDE)
    for fold in folds:
        tuned = P.finetune_fold(fold, prepared, [WIDE])
        train = _keys(tuned.train(prepared))
        assert train and all(r[0] != wide for r in train)
        assert train == [r for r in _keys(fold.train(prepared)) if r[0] != wide]
        assert _keys(tuned.test(prepared)) == _keys(fold.test(prepared))
        assert list(tuned.side_tests) == list(fold.side_tests)
        assert tuned.sizes["train"] == len(train) < fold.sizes["train"]
    with pytest.raises(tables.BenchmarkError, match="nothing left to fine-tune"):
        P.finetune_fold(folds[0], prepared, [WIDE, CK])
    with pytest.raises(tables.BenchmarkError, match=r"datasets \['nope'\] are not in"):
        P.pretrain_fold(prepared, ["nope"])


@pytest.mark.parametrize("pretrain, message", [
    ({"datasets": ["a"]}, "one budget, minutes or epochs"),
    ({"datasets": ["a"], "minutes": 1, "epochs": 2}, "one budget"),
    ({"datasets": [], "epochs": 1}, "non-empty list"),
    ({"datasets": "a", "epochs": 1}, "non-empty list"),
    ({"datasets": ["a"], "epochs": 0}, "positive number"),
    ({"datasets": ["a"], "epochs": 1, "split": "train"}, r"unknown keys \['split'\]"),
    (["a"], "a mapping"),
])
def test_a_bad_pretrain_setting_fails_when_the_settings_load(tmp_path, pretrain, message):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"methods": {"baseline": {"epochs": 1,
                                                             "pretrain": pretrain}}}))
    with pytest.raises(tables.BenchmarkError, match=message):
        tables.load_settings(str(path))


# --------------------------------------------------------------------------- #
# the benchmark command
# --------------------------------------------------------------------------- #
def _argv(tmp_path, bench_dir, committed, pretrain_epochs: int, folds: int):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({"methods": {"baseline": {
        "preset": "small", "epochs": 1, "overrides": {"image_size": 32, "batch_size": 4},
        "pretrain": {"datasets": [WIDE], "epochs": pretrain_epochs}}}}))
    return ["benchmark", "--data", str(spec), "--methods", "baseline", "--protocol", "kfold",
            "--k", str(K), "--folds", str(folds), "--fold-datasets", CK, "--settings",
            str(settings), "--out", str(bench_dir), "--results", str(committed),
            "--no-figures"]


def test_benchmark_pretrains_once_then_finetunes_every_fold(prepared, bench_dir, tmp_path):
    from pipeline import cli

    committed = tmp_path / "docs_results"
    pre_result = bench_dir / "pretrain" / "baseline" / "result.json"
    assert cli.main(_argv(tmp_path, bench_dir, committed, 1, folds=1)) == 0
    pre = json.loads(pre_result.read_text())
    wide = prepared.datasets.index(WIDE)
    n_wide = {s: sum(1 for r in _keys(prepared.examples((s,))) if r[0] == wide)
              for s in ("train", "eval")}
    assert (pre["train_images"], pre["test_images"]) == (n_wide["train"], n_wide["eval"])
    assert (bench_dir / "pretrain" / "baseline" / "final.weights.h5").exists()
    assert not (committed / "baseline" / "pretrain").exists()      # weights are its point
    stamp = os.path.getmtime(pre_result)

    assert cli.main(_argv(tmp_path, bench_dir, committed, 1, folds=2)) == 0
    assert os.path.getmtime(pre_result) == stamp                    # one pre-training
    folds = B.make_folds(prepared, "kfold", K, fold_datasets=[CK])
    for i in range(2):
        row = json.loads((committed / "baseline" / f"fold{i}" / "result.json").read_text())
        assert row["pretrain"]["accuracy"] == pre["accuracy"]
        assert row["pretrain"]["test"] == f"{WIDE}.eval"
        assert row["settings"]["pretrain"]["datasets"] == [WIDE]
        ck_train = [r for r in _keys(folds[i].train(prepared)) if r[0] != wide]
        assert row["train_images"] == len(ck_train)                 # CK+ only
        assert f"{WIDE}.eval" in row["side_scores"]
    table = (committed / "results.md").read_text()
    assert f"pre-trained, {WIDE}.eval acc." in table and "pre-train min" in table
    assert f"Pre-trained runs: fitted on {WIDE}'s train split first" in table

    # another pre-training budget is another fingerprint: the folds rerun on it
    before = json.loads((committed / "baseline" / "fold0" / "result.json").read_text())
    assert cli.main(_argv(tmp_path, bench_dir, committed, 2, folds=1)) == 0
    after = json.loads((committed / "baseline" / "fold0" / "result.json").read_text())
    assert after["settings"]["pretrain"]["epochs"] == 2
    assert after["settings_fingerprint"] != before["settings_fingerprint"]
    assert json.loads(pre_result.read_text())["epochs"] == 2


def test_runs_without_pretrain_keep_their_fingerprints(prepared):
    fold = B.make_folds(prepared, "kfold", K)[0]
    from benchmarks import resume

    plain = resume.run_settings("baseline", fold, prepared, "small", {}, 1, None, 0)
    assert "pretrain" not in plain
    assert resume.run_settings("baseline", fold, prepared, "small", {}, 1, None, 0,
                               pretrain=None) == plain
