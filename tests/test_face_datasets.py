"""The real multi-task datasets' layouts on fixtures made here (never the shared
data): CK+48 class folders with subject and sequence from the file names, CK+'s
FACS table joined by sequence, 300-W crops with .pts landmarks, and the
too-small-to-be-a-face quarantine of every reader (and of `fermtl data import`)."""

from __future__ import annotations

import collections
import glob
import json
import logging
import os

import numpy as np
import pytest

from components import contract
from components.ingestion import splits
from components.quarantine import Quarantine
from components.readers import (EmptySourceError, join_au_table, read_class_folders,
                                read_fer2013_csv, read_jaffe, read_pts_landmarks, read_source,
                                read_synthetic, read_tfrecord)
from tests.conftest import write_image

E = contract.EMOTIONS.index
# CK+'s facs.csv header: 23 FACS codes, 6 of them (11, 16, 18, 21, 22, 27) not in the contract.
CK_AUS = (1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15, 16, 17, 18, 20, 21, 22, 23, 24, 25, 26, 27)
CK_CLASSES = ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")


def _ck_tree(root, n_subjects=3):
    """CK+48 layout: <class>/S<subject>_<sequence>_<frame>.png, the last 3 frames
    of each sequence, one sequence per (subject, class) for a few classes, and
    facs.csv (one 0/1 row per sequence) at the root. Returns {sequence: AU row}."""
    rows = {}
    rng = np.random.default_rng(0)
    for s in range(n_subjects):
        subject = f"S{100 + s:03d}"
        for q, cls in enumerate(CK_CLASSES[s % 3::3]):
            sequence = f"{subject}_{q + 1:03d}"
            for frame in (9, 10, 11):
                write_image(root / cls / f"{sequence}_{frame:08d}.png", size=(48, 48),
                            seed=s * 100 + q * 10 + frame)
            rows[sequence] = rng.integers(0, 2, len(CK_AUS))
    with open(root / "facs.csv", "w") as f:
        f.write("sequence," + ",".join(f"AU{a}" for a in CK_AUS) + "\n")
        for sequence, values in rows.items():
            f.write(sequence + "," + ",".join(str(v) for v in values) + "\n")
    return rows


# --- CK+ ---------------------------------------------------------------------------
def test_ck_class_folders_give_subject_sequence_and_the_seven_classes(tmp_path):
    _ck_tree(tmp_path / "ck")
    q = Quarantine()
    samples = list(read_source("class_folders", str(tmp_path / "ck"), "ckplus48", q,
                               au_table=str(tmp_path / "ck" / "facs.csv"), au_key="sequence"))
    one = next(s for s in samples if s.uid.endswith("S100_001_00000010.png"))
    assert (one.subject, one.sequence, one.emotion) == ("S100", "S100_001", E("anger"))
    assert {s.emotion for s in samples} == {contract.canonical_emotion(c) for c in CK_CLASSES}
    assert "contempt" in contract.EMOTIONS and E("contempt") in {s.emotion for s in samples}
    expected_mask = contract.label_set_mask(CK_CLASSES)  # 7 classes, no neutral
    assert all((s.emotion_mask == expected_mask).all() for s in samples)
    # facs.csv inside the tree is the AU table, not a stray input
    assert "no_class_folder" not in q.by_reason()


def test_facs_table_joins_by_sequence_and_reports_the_aus_the_contract_lacks(tmp_path):
    rows = _ck_tree(tmp_path / "ck")
    q = Quarantine()
    samples = list(read_source("class_folders", str(tmp_path / "ck"), "ckplus48", q,
                               au_table=str(tmp_path / "ck" / "facs.csv"), au_key="sequence"))
    known = [a for a in CK_AUS if a in contract.AUS]
    missing = [a for a in CK_AUS if a not in contract.AUS]  # 11, 16, 18, 21, 22, 27 today
    by_sequence = collections.defaultdict(list)
    for s in samples:
        by_sequence[s.sequence].append(s)
    assert set(by_sequence) == set(rows) and all(len(v) == 3 for v in by_sequence.values())
    for sequence, frames in by_sequence.items():
        row = dict(zip(CK_AUS, rows[sequence]))
        for s in frames:  # one row covers every frame of its sequence
            for au in known:
                assert s.aus[contract.au_index(au)] == row[au]
            assert s.aus_mask.sum() == len(known)
    # Every AU column the contract lacks is reported, by name, never dropped silently.
    reported = [e for e in q.entries if e.reason == "au_not_in_contract"]
    assert [e.detail.split("'")[1] for e in reported] == [f"AU{a}" for a in missing]
    assert all(e.source.endswith("facs.csv:1") for e in reported)
    assert len(q) == len(missing)


def test_an_image_whose_sequence_has_no_facs_row_is_counted(tmp_path, caplog):
    _ck_tree(tmp_path / "ck")
    write_image(tmp_path / "ck" / "happy" / "S900_004_00000012.png", size=(48, 48))
    table = str(tmp_path / "ck" / "facs.csv")

    def read(missing):
        q = Quarantine()
        with caplog.at_level(logging.WARNING, logger="components.readers.au_table"):
            samples = list(join_au_table(read_class_folders(tmp_path / "ck", "ck", q,
                                                            exclude=["facs.csv"]),
                                         table, q, key="sequence", missing=missing))
        return samples, q

    kept, q = read("keep")
    [orphan] = [s for s in kept if s.sequence == "S900_004"]
    assert not orphan.aus_mask.any() and orphan.emotion == E("happiness")
    assert f"1 of {len(kept)} samples have no row (by sequence)" in caplog.text
    assert "ck/happy/S900_004_00000012.png" in caplog.text
    assert "no_au_row" not in q.by_reason()
    dropped, q = read("quarantine")
    assert len(dropped) == len(kept) - 1
    assert [e.source for e in q.entries if e.reason == "no_au_row"] == [orphan.uid]


def test_ck_spec_ingests_with_balanced_folds_and_aus(tmp_path):
    """A CK+48-like spec end to end: k-fold over subjects, AUs by sequence,
    every example with its fold, eval = the chosen fold."""
    from components.ingestion import ingest

    n_images = 3 * len(_ck_tree(tmp_path / "ck", n_subjects=12))
    spec = {"sources": [{"reader": "class_folders", "path": str(tmp_path / "ck"),
                         "dataset": "ckplus48", "aligned": True,
                         "au_table": {"path": str(tmp_path / "ck" / "facs.csv"),
                                      "key": "sequence"}}],
            "split": {"kfold": {"k": 4, "fold": 2}, "seed": 0},
            "image_size": 48, "detector": "none"}
    counts = ingest(spec, str(tmp_path / "out"), beam_args=[
        "--runner=FnApiRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1"])
    examples = {}
    for split in ("train", "eval"):
        files = glob.glob(str(tmp_path / "out" / "examples" / f"Split-{split}" / "*.gz"))
        examples[split] = list(contract.read_tfrecord(files, compression="GZIP"))
    assert {s.fold for s in examples["eval"]} == {2}
    assert 2 not in {s.fold for s in examples["train"]}
    per_fold = [counts["folds"]["ckplus48"][str(f)] for f in range(4)]
    assert sum(f["subjects"] for f in per_fold) == 12
    assert max(f["subjects"] for f in per_fold) - min(f["subjects"] for f in per_fold) <= 1
    assert counts["labels"]["ckplus48"] == {"emotion": n_images, "aus": n_images,
                                            "landmarks": 0}
    lacking = len(set(CK_AUS) - set(contract.AUS))
    assert counts["by_reason"] == ({"au_not_in_contract": lacking} if lacking else {})
    subjects = collections.defaultdict(set)
    for s in examples["train"] + examples["eval"]:
        subjects[s.subject].add(s.fold)
    assert all(len(f) == 1 for f in subjects.values())


# --- 300-W -------------------------------------------------------------------------
def _pts(path, points):
    lines = ["version: 1", f"n_points: {len(points)}", "{"]
    lines += [f"{x:.3f} {y:.3f}" for x, y in points] + ["}"]
    path.write_text("\n".join(lines) + "\n")


def test_300w_crops_give_landmarks_in_the_crop_and_no_emotion(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "helen_train"
    points = {}
    for name in ("100032540_1", "100040721_1", "100040721_2"):
        write_image(root / f"{name}.jpg", size=(128, 128), seed=len(points))
        points[name] = rng.uniform(20, 108, (68, 2))
        _pts(root / f"{name}.pts", points[name])
    q = Quarantine()
    samples = {s.uid: s for s in read_pts_landmarks(root, "helen", q)}
    assert sorted(samples) == [f"helen/{n}.jpg" for n in sorted(points)] and len(q) == 0
    for name, pts in points.items():
        s = samples[f"helen/{name}.jpg"]
        np.testing.assert_allclose(s.landmarks, pts / 128.0, atol=1e-5)  # [0, 1] of the crop
        assert s.landmarks_mask == 1.0 and s.pixels().shape == (128, 128)
        assert s.emotion == -1 and not s.emotion_mask.any() and not s.aus_mask.any()
        assert s.subject == "" and s.split == ""
    # No subject: each crop is its own split key (the hold-out is image-level).
    assert len({splits.split_key(s) for s in samples.values()}) == 3


# --- too small to be a face: every reader ------------------------------------------
def _too_small(q):
    return [e for e in q.entries if e.reason == "image_too_small"]


def test_class_folders_jaffe_and_pts_quarantine_a_tiny_image(tmp_path):
    write_image(tmp_path / "cf" / "happy" / "ok.png", size=(16, 16))
    write_image(tmp_path / "cf" / "happy" / "dot.png", size=(1, 1))
    write_image(tmp_path / "cf" / "sad" / "strip.png", size=(200, 15))
    q = Quarantine()
    assert [s.uid for s in read_class_folders(tmp_path / "cf", "cf", q)] == ["cf/happy/ok.png"]
    assert sorted(os.path.basename(e.source) for e in _too_small(q)) == ["dot.png", "strip.png"]
    assert "1x1 px" in _too_small(q)[0].detail

    write_image(tmp_path / "jaffe" / "KA.HA1.29.tiff", size=(32, 32))
    write_image(tmp_path / "jaffe" / "KA.SA1.30.tiff", size=(8, 8))
    q = Quarantine()
    assert len(list(read_jaffe(tmp_path / "jaffe", "jaffe", q))) == 1
    assert [os.path.basename(e.source) for e in _too_small(q)] == ["KA.SA1.30.tiff"]

    for name, size in (("big", (64, 64)), ("tiny", (12, 12))):
        write_image(tmp_path / "lm" / f"{name}.png", size=size)
        _pts(tmp_path / "lm" / f"{name}.pts", np.full((68, 2), 5.0))
    q = Quarantine()
    assert [s.uid for s in read_pts_landmarks(tmp_path / "lm", "lm", q)] == ["lm/big.png"]
    assert [os.path.basename(e.source) for e in _too_small(q)] == ["tiny.png"]


def test_fer2013_csv_and_tfrecord_quarantine_tiny_faces_synthetic_refuses_them(tmp_path):
    csv_path = tmp_path / "fer.csv"
    csv_path.write_text("emotion,pixels,Usage\n3," + " ".join(["7"] * 64) + ",Training\n")
    q = Quarantine()
    with pytest.raises(EmptySourceError, match="image_too_small=1"):
        list(read_fer2013_csv(csv_path, "fer", q, image_size=8))
    assert _too_small(q)[0].source.endswith("fer.csv:2")

    big = contract.FaceSample(image=contract.encode_png(np.zeros((20, 20), np.uint8)),
                              dataset="d", uid="d/big")
    tiny = contract.FaceSample(image=contract.encode_png(np.zeros((1, 1), np.uint8)),
                               dataset="d", uid="d/tiny")
    contract.write_tfrecord([big, tiny], str(tmp_path / "faces.tfrecord"))
    q = Quarantine()
    assert [s.uid for s in read_tfrecord(str(tmp_path / "faces.tfrecord"), None, q)] == ["d/big"]
    assert [e.source for e in _too_small(q)] == ["d/tiny"]

    # The generator itself refuses faces under 24 px: nothing to quarantine.
    with pytest.raises(ValueError, match="size 8 outside"):
        list(read_synthetic(None, "s", Quarantine(), n_subjects=1, samples_per_emotion=1,
                            size=8, emotions=["happiness"], domains=["lab"]))


def test_data_import_quarantines_a_one_pixel_png(tmp_path, capsys):
    from pipeline import cli

    write_image(tmp_path / "faces" / "happy" / "face.png", size=(48, 48))
    write_image(tmp_path / "faces" / "happy" / "pixel.png", size=(1, 1))
    rc = cli.main(["data", "import", "--reader", "class_folders", str(tmp_path / "faces"),
                   "--dataset", "faces", "--out", str(tmp_path / "out")])
    assert rc == 0
    assert "wrote 1 samples" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "quarantine.json").read_text())
    assert report["by_reason"] == {"image_too_small": 1}
    assert report["entries"][0]["source"].endswith("pixel.png")


# --- the shipped data specs (parsed only: nothing under shared/ is read) --------------
@pytest.mark.parametrize("name, k, eval_fold, datasets", [
    ("ckplus48", 10, 0, ["ckplus48"]),
    ("helen_train", 5, 0, ["helen"]),
    ("fer2013_ckplus48", 10, 0, ["fer2013", "ckplus48"]),
    ("ckplus48_helen", 5, 0, ["ckplus48", "helen"]),
    ("ckplus48_last_frame", 5, 0, ["ckplus48"]),
])
def test_data_specs_of_the_real_datasets_load(name, k, eval_fold, datasets):
    from components.ingestion.spec import DataSpec

    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "..", "pipeline", "configs", "data", f"{name}.yaml")
    spec = DataSpec.from_yaml(path)
    assert spec.split.kfold == (k, eval_fold) and spec.dataset_names() == datasets
    shared = os.path.normpath(os.path.join(os.path.dirname(path), "../../../../shared/datasets"))
    for source in spec.sources:
        assert source.path.startswith(shared + os.sep) and source.aligned
        if source.dataset == "ckplus48":
            assert source.au_table.key == "sequence" and len(source.label_set) == 7
            assert source.au_table.path == os.path.join(source.path, "facs.csv")


def test_last_frames_keeps_the_last_frame_of_each_sequence(tmp_path):
    """The trace-norm protocol's "last frame" cut of CK+48 (3 frames a sequence)."""
    _ck_tree(tmp_path / "ck")
    write_image(tmp_path / "ck" / "happy" / "odd_name.png", size=(48, 48))
    q = Quarantine()
    samples = list(read_class_folders(tmp_path / "ck", "ck", q, exclude="facs.csv",
                                      last_frames=1))
    assert sorted(s.uid.rsplit("_", 1)[1] for s in samples) == ["00000011.png"] * 7
    assert len({s.sequence for s in samples}) == 7
    assert q.by_reason() == {"not_in_last_frames": 14, "no_sequence_frame": 1}
    two = list(read_class_folders(tmp_path / "ck", "ck", Quarantine(), exclude="facs.csv",
                                  last_frames=2))
    assert len(two) == 14 and {s.uid[-6:-4] for s in two} == {"10", "11"}
    with pytest.raises(ValueError, match="last_frames"):
        list(read_class_folders(tmp_path / "ck", "ck", Quarantine(), last_frames=0))


def test_inspect_a_data_spec_reads_as_ingestion_does(tmp_path):
    """``fermtl data inspect spec.yaml``: every source as FaceIngestion reads it
    (the AU table joined by sequence, the table not counted as an input)."""
    from components import inspect

    n_images = 3 * len(_ck_tree(tmp_path / "ck", n_subjects=2))
    spec = tmp_path / "ck.yaml"
    spec.write_text(json.dumps({
        "sources": [{"reader": "class_folders", "path": str(tmp_path / "ck"),
                     "dataset": "ckplus48", "aligned": True,
                     "au_table": {"path": str(tmp_path / "ck" / "facs.csv"), "key": "sequence"}}],
        "image_size": 48, "detector": "none"}))
    report = inspect.inspect(str(spec), out_dir=str(tmp_path / "out"))
    d = report.to_dict()
    assert report.n_samples == n_images and d["kind"] == "data spec"
    assert d["with_aus"] == n_images and d["n_subjects"] == 2
    assert "no_class_folder" not in d["quarantine"]["by_reason"]
