"""`fermtl evaluate MODEL DATA` scores a pushed model on a class folder with
the Evaluator's TFMA slices and metrics and writes the pipeline's report; its
accuracy is the one serving_examples gives on the ingested faces. `fermtl
export` through the command line."""

import glob
import json
import os

import numpy as np
import pytest

from components import contract
from tests.serving_helpers import export_tiny


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    base = tmp_path_factory.mktemp("evaluate") / "fer"
    export_tiny(base / "1")
    return base


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory):
    import cv2

    from components import synthetic

    root = tmp_path_factory.mktemp("faces") / "mini"
    for s in synthetic.generate(n_subjects=2, samples_per_emotion=1, domains=("lab",),
                                emotions=("anger", "happiness", "surprise"), size=48, seed=4):
        folder = root / contract.EMOTIONS[s.emotion]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{s.uid.replace('/', '_')}.png"), s.pixels())
    return root


def test_evaluate_class_folder(pushed, class_folder, tmp_path):
    import tensorflow as tf

    from pipeline.evaluate import evaluate

    result = evaluate(str(pushed), str(class_folder), str(tmp_path / "eval"))
    assert result["counts"]["total"] == 6 and result["examples"] == 6
    rows = json.load(open(tmp_path / "eval" / "metrics.json"))
    slices = {r["slice"] for r in rows}
    assert {"overall", "emotion=anger", "emotion=happiness", "emotion=surprise",
            "dataset=mini"} <= slices
    report = open(result["report"]).read()
    assert "## Metrics per slice" in report and "confusion_matrix.png" in report
    assert os.path.exists(tmp_path / "eval" / "confusion_matrix.png")

    files = glob.glob(str(tmp_path / "eval" / "data" / "examples" / "Split-*" / "*"))
    samples = list(contract.read_tfrecord(files, compression="GZIP"))
    fn = tf.saved_model.load(str(pushed / "1")).signatures["serving_examples"]
    probs = fn(examples=tf.constant([s.serialize() for s in samples]))["probabilities"].numpy()
    want = float(np.mean(probs.argmax(-1) == [s.emotion for s in samples]))
    assert result["accuracy"] == pytest.approx(want, abs=1e-6)


def test_export_command(pushed, tmp_path, capsys):
    from pipeline.cli import main

    assert main(["export", str(pushed), "--out", str(tmp_path / "m.tflite")]) == 0
    assert "input 'pixels' float32 [1, 32, 32, 1]" in capsys.readouterr().out
    assert (tmp_path / "m.tflite").stat().st_size > 1000
