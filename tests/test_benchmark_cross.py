"""The cross-dataset protocol (benchmarks/protocols.py, issue 17): only the classes
both sides label are scored, a test example of a class the train datasets never
label is left out and counted, a side can be kept to one split of the spec, and
the command runs it end to end. Three tiny synthetic datasets with other label
sets stand in for FER2013 (7 basic emotions, with neutral), CK+48 (contempt, no
neutral) and a dataset that shares no class with the first."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from benchmarks import protocols as B
from benchmarks import tables
from components import contract
from components.ingestion import DataSpec


def _source(dataset, domain, emotions, seed):
    return {"reader": "synthetic", "dataset": dataset, "aligned": True,
            "options": {"n_subjects": 6, "samples_per_emotion": 1, "size": 32, "seed": seed,
                        "domains": [domain], "emotions": emotions}}


SPEC = {"sources": [_source("wide", "wild", ["anger", "happiness", "surprise", "neutral"], 0),
                    _source("ck", "lab", ["anger", "happiness", "surprise", "contempt"], 1),
                    _source("other", "lab", ["disgust", "fear"], 2),
                    _source("few", "lab", ["anger", "happiness"], 3)],
        "split": {"eval_fraction": 0.34, "seed": 0}, "image_size": 32, "detector": "none"}
WIDE, CK, OTHER, FEW = "wide_wild", "ck_lab", "other_lab", "few_lab"


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cross")


@pytest.fixture(scope="module")
def prepared(bench_dir):
    spec = B.benchmark_spec(DataSpec.load(SPEC), "cross", 10)
    return B.prepare_data(spec, str(bench_dir / "data"), 32)


def _columns(examples, *keys):
    batches = list(examples.batch(4096))
    return [np.concatenate([b[k].numpy().reshape(-1) for b in batches]) for k in keys]


def _count(data, dataset, splits=("train", "eval"), emotion=None):
    ds, emo = _columns(data.examples(splits), "dataset_id", "emotion")
    keep = ds == data.datasets.index(dataset)
    if emotion is not None:
        keep &= emo == contract.EMOTIONS.index(emotion)
    return int(keep.sum())


def test_a_class_the_train_side_never_labels_is_left_out_and_counted(prepared):
    (fold,) = B.make_folds(prepared, "cross", train_datasets=[WIDE], test_datasets=[CK])
    contempt = _count(prepared, CK, emotion="contempt")
    assert contempt == 6                                       # 6 subjects x 1 sample
    assert fold.classes["left_out"] == {"contempt": contempt}
    assert fold.classes["scored"] == ["anger", "happiness", "surprise"]
    assert fold.classes["train_label_set"] == ["anger", "happiness", "surprise", "neutral"]
    assert "contempt" in fold.classes["test_label_set"]
    (test_emotions,) = _columns(fold.test(prepared), "emotion")
    assert sorted(set(test_emotions)) == [contract.EMOTIONS.index(e)
                                          for e in ("anger", "happiness", "surprise")]
    assert fold.sizes["test"] == _count(prepared, CK) - contempt
    assert "6 test examples left out (contempt 6: classes the train side never labels)" \
        in fold.describe()
    # the other way round: neutral is left out; the train side is never filtered
    (back,) = B.make_folds(prepared, "cross", train_datasets=[CK], test_datasets=[WIDE])
    assert back.classes["left_out"] == {"neutral": _count(prepared, WIDE, emotion="neutral")}
    assert back.sizes["train"] == _count(prepared, CK)
    assert back.name == "ck_lab-to-wide_wild"


def test_the_train_label_set_is_the_union_of_its_datasets(prepared):
    (fold,) = B.make_folds(prepared, "cross", train_datasets=[WIDE, OTHER],
                           test_datasets=[CK])
    assert fold.classes["train_label_set"] == ["anger", "disgust", "fear", "happiness",
                                               "surprise", "neutral"]
    assert fold.classes["left_out"] == {"contempt": 6}
    (few,) = B.make_folds(prepared, "cross", train_datasets=[WIDE], test_datasets=[FEW])
    assert few.classes["left_out"] == {} and few.classes["scored"] == ["anger", "happiness"]
    assert few.sizes["test"] == _count(prepared, FEW) and "left out" not in few.describe()


def test_a_side_can_be_kept_to_one_split(prepared):
    (fold,) = B.make_folds(prepared, "cross", train_datasets=[WIDE], test_datasets=[CK],
                           train_split="train", test_split="eval")
    assert fold.name == "wide_wild.train-to-ck_lab.eval"
    assert (fold.train_splits, fold.test_splits) == (("train",), ("eval",))
    train_n, eval_n = _count(prepared, WIDE, ("train",)), _count(prepared, CK, ("eval",))
    assert 0 < train_n < _count(prepared, WIDE) and 0 < eval_n < _count(prepared, CK)
    assert fold.sizes["train"] == train_n
    left = _count(prepared, CK, ("eval",), emotion="contempt")
    assert fold.classes["left_out"] == {"contempt": left}
    assert fold.sizes["test"] == eval_n - left
    # the kept split's subjects only: no train-split subject reaches the test side
    (test_subjects,) = _columns(fold.test(prepared), "subject_id")
    ds, sid = _columns(prepared.examples(("train",)), "dataset_id", "subject_id")
    assert not set(test_subjects) & set(sid[ds == prepared.datasets.index(CK)])


def test_cross_errors_are_clear(prepared):
    with pytest.raises(tables.BenchmarkError, match=r"labels \['anger', 'happiness', "
                       r"'surprise', 'neutral'\] and the test side \(other_lab\) labels "
                       r"\['disgust', 'fear'\]: no class in common"):
        B.make_folds(prepared, "cross", train_datasets=[WIDE], test_datasets=[OTHER])
    with pytest.raises(tables.BenchmarkError, match="test split 'val'; choose from"):
        B.make_folds(prepared, "cross", train_datasets=[WIDE], test_datasets=[CK],
                     test_split="val")
    with pytest.raises(tables.BenchmarkError, match="holdout: .* for cross only"):
        B.make_folds(prepared, "holdout", test_split="eval")


def test_shared_class_scores_take_the_argmax_over_the_scored_classes():
    idx = {e: i for i, e in enumerate(contract.EMOTIONS)}
    probs = np.zeros((3, contract.NUM_EMOTIONS))
    probs[:, idx["neutral"]] = 0.6                   # a class the test side never labels
    probs[0, idx["anger"]], probs[1, idx["surprise"]], probs[2, idx["anger"]] = 0.3, 0.3, 0.3
    arrays = {"emotion": np.array([idx["anger"], idx["surprise"], idx["surprise"]]),
              "probabilities": probs}
    scores = B.shared_class_scores(arrays, ["anger", "surprise"])
    assert scores["accuracy_shared_classes"] == pytest.approx(2 / 3)
    assert scores["balanced_accuracy_shared_classes"] == pytest.approx(0.75)


def test_benchmark_command_cross_end_to_end(prepared, bench_dir, tmp_path, capsys):
    from pipeline import cli

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    committed = tmp_path / "docs_results"
    argv = ["benchmark", "--data", str(spec), "--methods", "baseline", "--protocol", "cross",
            "--train-datasets", WIDE, "--test-datasets", CK, "--train-split", "train",
            "--epochs", "1", "--no-figures", "--out", str(bench_dir),
            "--results", str(committed)]
    capsys.readouterr()
    assert cli.main(argv) == 0
    (row,) = json.loads((bench_dir / "rows.json").read_text())
    assert row["fold"] == "wide_wild.train-to-ck_lab"
    kept = json.loads((committed / "baseline" / row["fold"] / "result.json").read_text())
    assert kept["cross_classes"]["left_out"] == {"contempt": 6}
    assert kept["cross_classes"]["scored"] == ["anger", "happiness", "surprise"]
    assert kept["test_images"] == _count(prepared, CK) - 6
    assert kept["num_examples"] == kept["test_images"]
    assert 0.0 <= kept["accuracy"] <= kept["accuracy_shared_classes"] <= 1.0
    assert "6 test examples left out (contempt 6" in (bench_dir / "results.md").read_text()
