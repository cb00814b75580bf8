"""Accuracy over each test face's own dataset's classes (issue 17): a model trained
on FER2013 + CK+ may call a CK+ face neutral, a class CK+ never labels; the
own-label score takes the argmax over CK+'s classes for CK+ faces and over
FER2013's for FER2013 faces (benchmarks/folds.py ``own_label_scores``), and
``python -m benchmarks.own_labels`` adds it to folds committed before."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from benchmarks import own_labels, tables
from benchmarks.folds import own_label_scores
from components import contract

E = contract.EMOTIONS
CK = contract.label_set_mask(["anger", "contempt", "disgust", "fear", "happiness", "sadness",
                              "surprise"])
FER = contract.label_set_mask(contract.BASIC7)


def _probs(**p):
    row = np.full(len(E), 0.01)
    for name, v in p.items():
        row[E.index(name)] = v
    return row


# truth, probabilities, the dataset's label set. By hand: the model's argmax is right
# for face 0 only; over the own labels faces 0, 1 (neutral is not a CK+ class) and
# 2 (contempt is not a FER2013 class) are right, face 3 stays wrong.
FACES = [("happiness", _probs(happiness=0.9, neutral=0.05), CK),
         ("anger", _probs(neutral=0.6, anger=0.3), CK),
         ("sadness", _probs(contempt=0.5, sadness=0.4), FER),
         ("fear", _probs(surprise=0.7, fear=0.2), CK)]


def _arrays(faces=FACES):
    return {"emotion": np.asarray([E.index(t) for t, _, _ in faces]),
            "probabilities": np.stack([p for _, p, _ in faces]),
            "emotion_mask": np.stack([m for _, _, m in faces])}


def test_own_label_accuracy_is_the_argmax_over_each_faces_own_classes():
    scores = own_label_scores(_arrays())
    assert scores["accuracy_own_labels"] == pytest.approx(3 / 4)
    # recalls: happiness 1, anger 1, sadness 1, fear 0
    assert scores["balanced_accuracy_own_labels"] == pytest.approx(3 / 4)


def test_no_own_label_score_when_every_dataset_labels_every_class():
    full = np.ones(len(E), np.float32)
    assert own_label_scores(_arrays([(t, p, full) for t, p, _ in FACES])) == {}


def _committed_fold(folder, faces=FACES):
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({"method": "sjmt", "accuracy": 0.25}))
    with open(folder / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "dataset", "emotion", "predicted"] + [f"p_{e}" for e in E])
        for i, (truth, p, mask) in enumerate(faces):
            w.writerow([i, "ck" if mask is CK else "fer", truth, E[int(p.argmax())]]
                       + [f"{v:.4f}" for v in p])


def test_backfill_adds_the_score_from_predictions_csv_once(tmp_path):
    _committed_fold(tmp_path / "sjmt" / "fold0")
    masks = {"ck": CK, "fer": FER}
    assert own_labels.backfill(str(tmp_path), masks) == [
        str(tmp_path / "sjmt" / "fold0" / "result.json")]
    row = json.loads((tmp_path / "sjmt" / "fold0" / "result.json").read_text())
    assert row["accuracy_own_labels"] == pytest.approx(3 / 4)
    assert row["accuracy"] == 0.25 and row["own_labels_from"] == "predictions.csv"
    assert own_labels.backfill(str(tmp_path), masks) == []          # already there


def test_backfill_without_a_label_set_is_an_error(tmp_path):
    _committed_fold(tmp_path / "sjmt" / "fold0")
    with pytest.raises(tables.BenchmarkError, match=r"no label set for \['fer'\]"):
        own_labels.backfill(str(tmp_path), {"ck": CK})


def test_the_table_shows_the_own_label_mean_when_every_fold_has_it(tmp_path):
    recall = {e: None for e in E}
    row = {"method": "sjmt", "preset": "small", "image_size": 48, "params": 1, "epochs": 1,
           "train_seconds": 6.0, "accuracy": 0.5, "balanced_accuracy": 0.5,
           "per_class_recall": recall}
    rows = [dict(row, fold="fold0", accuracy_own_labels=0.6),
            dict(row, fold="fold1", accuracy_own_labels=0.8)]
    md = open(tables.write_table(rows, str(tmp_path))["markdown"]).read()
    assert "| own-label acc. |" in md and "| 50.0% ± 0.0% | 50.0% | 70.0% |" in md
    md = open(tables.write_table(rows[:1] + [row], str(tmp_path))["markdown"]).read()
    assert "own-label acc." not in md          # a fold without it: no column
