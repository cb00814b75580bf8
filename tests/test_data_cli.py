"""`fermtl data ...` run in-process through pipeline.cli.main."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from components import contract
from components.quarantine import Quarantine
from tests.conftest import write_image

SHEET_GREEN = (0, 220, 60)  # landmark dot colour on the contact sheet


@pytest.fixture
def fermtl():
    from pipeline import cli

    return cli.main


def test_help_lists_data_subcommands(fermtl, capsys):
    with pytest.raises(SystemExit) as exit_:
        fermtl(["--help"])
    assert exit_.value.code == 0
    assert "make, import and inspect datasets" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        fermtl(["data", "--help"])
    out = capsys.readouterr().out
    for sub in ("synth", "inspect", "import"):
        assert f"    {sub} " in out


def test_import_then_inspect(fermtl, fer_tree, tmp_path, capsys):
    au = tmp_path / "aus.csv"
    au.write_text("file,AU6,AU12\nTraining_3,4,5\nTraining_4,0,\nnobody,1,1\n")
    out = tmp_path / "records"
    rc = fermtl(["data", "import", "--reader", "class_folders", str(fer_tree),
                 "--dataset", "fer", "--out", str(out), "--au-table", str(au)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"wrote 7 samples to {out / 'fer.tfrecord'}" in printed
    assert "emotion: anger 3, happiness 3, sadness 1" in printed
    samples = {s.uid: s for s in contract.read_tfrecord(str(out / "fer.tfrecord"))}
    assert len(samples) == 7
    happy = samples["fer/train/happy/Training_3.jpg"]
    i6, i12 = contract.au_index(6), contract.au_index(12)
    assert (happy.aus[i6], happy.aus[i12], happy.split) == (pytest.approx(0.8), 1.0, "train")
    assert samples["fer/train/happy/Training_4.jpg"].aus_mask.tolist().count(1.0) == 1
    report = json.loads((out / "quarantine.json").read_text())
    assert report["by_reason"] == {"unknown_class": 2, "undecodable_image": 1,
                                   "empty_file": 1, "unmatched_au_row": 1}

    sheet_dir = tmp_path / "inspect"
    assert fermtl(["data", "inspect", str(out), "--out", str(sheet_dir)]) == 0
    printed = capsys.readouterr().out
    assert "quarantine: 5 inputs rejected" in printed
    assert "labels: emotion 7, AUs 2, landmarks 0" in printed
    counts = json.loads((sheet_dir / "counts.json").read_text())
    assert counts["kind"] == "tfrecord" and counts["n_samples"] == 7
    assert counts["counts"]["emotion"] == {"anger": 3, "happiness": 3, "sadness": 1}
    assert counts["counts"]["split"] == {"train": 4, "val": 2, "test": 1}
    assert counts["aus_labelled"] == {"AU6": 2, "AU12": 1}
    assert counts["quarantine"]["by_reason"]["unknown_class"] == 2
    # One row per class present (3 rows of 96 px tiles), no landmark dots.
    sheet = np.asarray(Image.open(sheet_dir / "contact_sheet.png").convert("RGB"))
    assert 3 * 96 < sheet.shape[0] < 4 * 96 + 120
    assert not (sheet == SHEET_GREEN).all(axis=-1).any()
    # A single TFRecord file: the quarantine.json beside it is picked up too.
    assert fermtl(["data", "inspect", str(out / "fer.tfrecord"), "--out", str(sheet_dir)]) == 0
    assert "quarantine: 5 inputs rejected" in capsys.readouterr().out


def test_inspect_raw_landmark_source_draws_landmarks(fermtl, tmp_path, capsys):
    root = tmp_path / "300w"
    points = np.random.default_rng(0).uniform(4, 28, (68, 2))
    for name in ("a", "b"):
        write_image(root / f"{name}.png", size=(32, 32))
        (root / f"{name}.pts").write_text(
            "version: 1\nn_points: 68\n{\n"
            + "\n".join(f"{x:.2f} {y:.2f}" for x, y in points) + "\n}\n")
    (root / "c.pts").write_text("1 2\n3 4\n")  # wrong point count, and no image
    write_image(root / "c.png")
    out = tmp_path / "sheet"
    assert fermtl(["data", "inspect", str(root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "source: " in printed and "(pts_landmarks)" in printed
    assert "wrong_point_count" in printed
    assert f"log: {out / 'inspect.log'}" in printed and (out / "inspect.log").is_file()
    counts = json.loads((out / "counts.json").read_text())
    assert (counts["n_samples"], counts["with_landmarks"], counts["with_emotion"]) == (2, 2, 0)
    assert counts["counts"]["emotion"] == {"(none)": 2}
    assert counts["quarantine"]["by_reason"] == {"wrong_point_count": 1}
    sheet = np.asarray(Image.open(out / "contact_sheet.png").convert("RGB"))
    assert (sheet == SHEET_GREEN).all(axis=-1).sum() > 68


def test_inspect_and_import_report_empty_source(fermtl, tmp_path, capsys):
    (tmp_path / "src" / "happy").mkdir(parents=True)
    (tmp_path / "src" / "happy" / "x.jpg").write_bytes(b"")
    assert fermtl(["data", "inspect", str(tmp_path / "src"),
                   "--out", str(tmp_path / "i")]) == 2
    assert "no usable sample" in capsys.readouterr().err
    out = tmp_path / "records"
    assert fermtl(["data", "import", "--reader", "class_folders", str(tmp_path / "src"),
                   "--dataset", "d", "--out", str(out)]) == 2
    assert not (out / "d.tfrecord").exists()
    assert Quarantine.read(str(out / "quarantine.json")).by_reason() == {"empty_file": 1}


def test_synth_then_inspect(fermtl, tmp_path, capsys):
    pytest.importorskip("components.synthetic")
    out = tmp_path / "synth"
    assert fermtl(["data", "synth", "--out", str(out), "--subjects", "2",
                   "--samples-per-emotion", "1", "--size", "32", "--seed", "3",
                   "--domains", "lab"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_samples"] == 2 * contract.NUM_EMOTIONS
    assert f"wrote {2 * contract.NUM_EMOTIONS} samples" in capsys.readouterr().out
    sheet_dir = tmp_path / "inspect"
    assert fermtl(["data", "inspect", str(out), "--out", str(sheet_dir)]) == 0
    counts = json.loads((sheet_dir / "counts.json").read_text())
    assert counts["counts"]["emotion"] == {e: 2 for e in contract.EMOTIONS}
    assert counts["counts"]["domain"] == {"lab": 16}
    assert counts["n_subjects"] == 2
