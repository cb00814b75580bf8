"""k-fold over one dataset of a mix (benchmarks/protocols.py ``fold_only``, issue 17):
with ``fold_datasets``, fold i tests only that dataset's group i; every other dataset
trains in every fold from its train split only, and its eval split is scored beside the
fold (SJMT on FER2013 + CK+: CK+ folds, FER2013 PublicTest beside). Two tiny synthetic
datasets stand in for FER2013 (``wide``) and CK+ (``ck``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from benchmarks import protocols as B
from benchmarks import tables
from components.ingestion import DataSpec


def _source(dataset, domain, seed):
    return {"reader": "synthetic", "dataset": dataset, "aligned": True,
            "options": {"n_subjects": 6, "samples_per_emotion": 1, "size": 32, "seed": seed,
                        "domains": [domain], "emotions": ["anger", "happiness", "surprise"]}}


SPEC = {"sources": [_source("wide", "wild", 0), _source("ck", "lab", 1)],
        "split": {"eval_fraction": 0.34, "seed": 0}, "image_size": 32, "detector": "none"}
WIDE, CK = "wide_wild", "ck_lab"
K = 3


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fold_only")


@pytest.fixture(scope="module")
def prepared(bench_dir):
    spec = B.benchmark_spec(DataSpec.load(SPEC), "kfold", K)
    return B.prepare_data(spec, str(bench_dir / "data"), 32)


def _keys(examples):
    """(dataset, subject, fold, emotion) rows of a selection, as a sorted list."""
    cols = {k: [] for k in ("dataset_id", "subject_id", "fold", "emotion")}
    for b in examples.batch(4096):
        for k in cols:
            cols[k].append(b[k].numpy().reshape(-1))
    return sorted(zip(*(np.concatenate(v).tolist() for v in cols.values())))


def test_only_the_folded_dataset_is_tested_and_the_other_trains_from_its_train_split(
        prepared):
    folds = B.make_folds(prepared, "kfold", K, fold_datasets=[CK])
    ck, wide = prepared.datasets.index(CK), prepared.datasets.index(WIDE)
    every = _keys(prepared.examples(("train", "eval")))
    wide_train = [r for r in _keys(prepared.examples(("train",))) if r[0] == wide]
    wide_eval = [r for r in _keys(prepared.examples(("eval",))) if r[0] == wide]
    assert wide_train and wide_eval
    tested = []
    for i, fold in enumerate(folds):
        test, train = _keys(fold.test(prepared)), _keys(fold.train(prepared))
        assert test and all(r[0] == ck and r[2] == i for r in test)
        assert sorted(r for r in train if r[0] == ck) == sorted(
            r for r in every if r[0] == ck and r[2] != i)
        assert sorted(r for r in train if r[0] == wide) == wide_train  # never its eval split
        assert list(fold.side_tests) == [f"{WIDE}.eval"]
        assert _keys(fold.side(prepared, f"{WIDE}.eval")) == wide_eval
        assert fold.sizes[f"side:{WIDE}.eval"] == len(wide_eval)
        tested += test
    assert sorted(tested) == sorted(r for r in every if r[0] == ck)


def test_fold_datasets_errors_are_clear(prepared):
    with pytest.raises(tables.BenchmarkError, match=r"fold_datasets \['nope'\] are not in"):
        B.make_folds(prepared, "kfold", K, fold_datasets=["nope"])
    with pytest.raises(tables.BenchmarkError, match="holdout: fold_datasets is for"):
        B.make_folds(prepared, "holdout", fold_datasets=[CK])


def test_without_fold_datasets_the_folds_are_unchanged(prepared):
    plain = B.make_folds(prepared, "kfold", K)
    assert all(not f.side_tests and f.train_also is None for f in plain)
    assert sum(f.sizes["test"] for f in plain) == len(_keys(prepared.examples()))


def test_benchmark_command_scores_the_side_test_and_draws_its_au_figure(
        prepared, bench_dir, tmp_path):
    from pipeline import cli

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    committed = tmp_path / "docs_results"
    argv = ["benchmark", "--data", str(spec), "--methods", "sjmt", "--protocol", "kfold",
            "--k", str(K), "--folds", "1", "--fold-datasets", CK, "--epochs", "1",
            "--out", str(bench_dir), "--results", str(committed)]
    assert cli.main(argv) == 0
    kept = json.loads((committed / "sjmt" / "fold0" / "result.json").read_text())
    side = kept["side_scores"][f"{WIDE}.eval"]
    n_wide_eval = sum(1 for r in _keys(prepared.examples(("eval",)))
                      if r[0] == prepared.datasets.index(WIDE))
    assert side["num_examples"] == n_wide_eval
    assert 0.0 <= side["accuracy"] <= 1.0
    # the test faces' dataset labels 3 of the 8 classes: the argmax over those 3 is
    # right wherever the model's own argmax is
    assert kept["accuracy"] <= kept["accuracy_own_labels"] <= 1.0
    figure = kept["figures"][f"au_per_emotion:{WIDE}.eval"]
    assert (committed / "sjmt" / "fold0" / figure).stat().st_size > 0
    assert f"{WIDE}.eval acc." in (committed / "results.md").read_text()
    # --redo-figures redraws the side test's figure too (it used to drop it)
    (committed / "sjmt" / "fold0" / figure).unlink()
    assert cli.main(argv + ["--redo-figures"]) == 0
    redone = json.loads((committed / "sjmt" / "fold0" / "result.json").read_text())
    assert redone["figures"][f"au_per_emotion:{WIDE}.eval"] == figure
    assert (committed / "sjmt" / "fold0" / figure).stat().st_size > 0
    # a later call with --folds 1 keeps every committed fold in the committed table's
    # protocol line (it used to be rewritten with that call's folds only)
    assert cli.main(argv[:argv.index("--folds") + 1] + ["2"] + argv[argv.index("--folds") + 2:]
                    + ["--no-figures"]) == 0
    assert cli.main(argv + ["--no-figures"]) == 0
    protocol = [line for line in (committed / "results.md").read_text().splitlines()
                if line.startswith("Protocol:")]
    assert len(protocol) == 1 and "fold0:" in protocol[0] and "fold1:" in protocol[0]
    assert "fold1:" not in (bench_dir / "results.md").read_text()   # this call's table


def test_cross_and_kfold_of_one_spec_share_one_ingestion():
    spec = DataSpec.load(dict(SPEC, split={"use_source_split": True,
                                           "kfold": {"k": 10, "fold": 0}, "seed": 0}))
    cross, kfold = (B.benchmark_spec(spec, p, 10).to_json() for p in ("cross", "kfold"))
    assert cross == kfold and json.loads(cross)["split"]["kfold"] == {"k": 10}
    assert B.benchmark_spec(spec, "holdout", 10).to_json() == spec.to_json()
