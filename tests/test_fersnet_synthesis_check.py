"""FERSNet's Table V check (benchmarks/fersnet_synthesis_check.py): the fakes of each
test face into every other expression, scored by a recogniser trained on real faces
only. The score is written from the paper's text (Sec. IV-C): the share of synthetic
faces the recogniser calls the target expression."""

from __future__ import annotations

import json

import numpy as np
import yaml

from benchmarks import fersnet_synthesis_check as C
from components import contract

A, H, S = (contract.EMOTIONS.index(e) for e in ("anger", "happiness", "surprise"))


def _mask(rows, classes=(A, H, S)):
    m = np.zeros((rows, contract.NUM_EMOTIONS), np.float32)
    m[:, list(classes)] = 1
    return m


def test_every_labelled_face_goes_once_into_every_other_expression_of_its_label_set():
    emotion = np.asarray([A, H, -1, S])
    jobs = C.synthesis_jobs(emotion, _mask(4))
    assert sorted(map(tuple, jobs.tolist())) == [(0, H), (0, S), (1, A), (1, S), (3, A), (3, H)]


def test_the_score_is_the_share_of_fakes_called_their_target():
    targets = np.asarray([H, S, A, S])
    sources = np.asarray([A, A, H, H])
    called = [H, A, A, S]                        # right, kept the source, right, right
    p = np.full((4, contract.NUM_EMOTIONS), 0.01)
    p[np.arange(4), called] = 0.9
    got = C.synthesis_accuracy(p, targets, sources, _mask(4))
    assert got["accuracy"] == 0.75 and got["source_kept"] == 0.25 and got["pairs"] == 4
    assert got["per_target"] == {"anger": 1.0, "happiness": 1.0, "surprise": 0.5}
    cm = np.asarray(got["confusion_matrix"])
    assert cm[S, A] == 1 and cm[S, S] == 1 and cm[H, H] == 1 and cm[A, A] == 1
    assert got["chance"] == 1 / 3


def test_the_check_trains_both_and_writes_the_fold(tmp_path):
    spec = {"sources": [{"reader": "synthetic", "dataset": "ck", "aligned": True,
                         "options": {"n_subjects": 6, "samples_per_emotion": 1, "size": 32,
                                     "seed": 0, "domains": ["lab"],
                                     "emotions": ["anger", "happiness", "surprise"]}}],
            "split": {"eval_fraction": 0.34, "seed": 0}, "image_size": 32, "detector": "none"}
    settings = {"methods": {
        # a named FERSNet variant (--fersnet), as the paper's-decoder run is
        "fersnet-v": {"method": "fersnet", "preset": "small", "epochs": 1,
                      "overrides": {"image_size": 32, "pair_within": "subject", "batch_size": 4,
                                    "residual_output": False}},
        "baseline": {"preset": "small", "epochs": 1,
                     "overrides": {"image_size": 32, "batch_size": 4}}}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "settings.yaml").write_text(yaml.safe_dump(settings))
    results = tmp_path / "results"
    assert C.main(["--data", str(tmp_path / "spec.yaml"), "--settings",
                   str(tmp_path / "settings.yaml"), "--k", "3", "--folds", "1",
                   "--out", str(tmp_path / "out"), "--results", str(results),
                   "--fersnet", "fersnet-v"]) == 0
    row = json.loads((results / "fold0" / "result.json").read_text())
    assert row["fersnet_run"] == "fersnet-v" and row["fersnet_overrides"]["residual_output"] is False
    assert row["pairs"] == 2 * row["test_faces"]          # 3 classes: two targets a face
    assert 0.0 <= row["accuracy"] <= 1.0 and row["chance"] == 1 / 3
    assert 0.0 <= row["recogniser_accuracy_real"] <= 1.0
    for name in row["figures"].values():
        assert (results / "fold0" / name).stat().st_size > 0
    assert "| fold0 |" in (results / "results.md").read_text()
