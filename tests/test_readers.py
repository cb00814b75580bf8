"""Readers on tiny fixtures: every format, every bad-input case, the registry."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from components import contract
from components.quarantine import Quarantine
from components.readers import (READERS, EmptySourceError, detect_reader, join_au_table,
                                parse_pts, read_au_table, read_class_folders,
                                read_fer2013_csv, read_jaffe, read_pts_landmarks,
                                read_source, sample_key)
from tests.conftest import write_image, write_truncated

E = contract.EMOTIONS.index


def by_uid(samples):
    return {s.uid: s for s in samples}


def sources(quarantine, reason):
    return sorted(e.source for e in quarantine.entries if e.reason == reason)


# --- class folders -------------------------------------------------------------

def test_class_folders_fer_layout(fer_tree):
    q = Quarantine()
    samples = by_uid(read_class_folders(fer_tree, "fer2013", q))
    assert sorted(samples) == [
        "fer2013/test/angry/PrivateTest_7.jpg",
        "fer2013/train/angry/Training_1.jpg", "fer2013/train/angry/Training_2.jpg",
        "fer2013/train/happy/Training_3.jpg", "fer2013/train/happy/Training_4.jpg",
        "fer2013/val/happy/PublicTest_6.jpg", "fer2013/val/sad/PublicTest_5.jpg"]
    s = samples["fer2013/val/sad/PublicTest_5.jpg"]
    assert (s.emotion, s.split, s.subject, s.domain) == (E("sadness"), "val", "", "fer2013")
    assert samples["fer2013/test/angry/PrivateTest_7.jpg"].split == "test"
    assert samples["fer2013/train/happy/Training_3.jpg"].emotion == E("happiness")
    # Label set: the union of the known classes found anywhere in the tree.
    expected_mask = contract.label_set_mask(["anger", "happiness", "sadness"])
    for sample in samples.values():
        np.testing.assert_array_equal(sample.emotion_mask, expected_mask)
    # Every bad input is in the quarantine with its reason.
    assert q.by_reason() == {"unknown_class": 2, "undecodable_image": 1, "empty_file": 1}
    assert [p.rsplit("/", 2)[-2] for p in sources(q, "unknown_class")] == ["weird", "weird"]
    assert sources(q, "undecodable_image")[0].endswith("train/angry/broken.png")


def test_class_folders_keeps_original_pixels(tmp_path):
    rgb = write_image(tmp_path / "ck/happy/S010_004_00000017.png", size=(23, 17), mode="RGB")
    q = Quarantine()
    [s] = read_class_folders(tmp_path / "ck", "ck", q)
    pixels = s.pixels()
    assert pixels.shape == (17, 23)  # no resizing
    expected = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
    np.testing.assert_array_equal(pixels, expected)


def test_class_folders_16bit_image_and_progress_bar(tmp_path, capsys):
    deep = np.tile(np.array([[0, 257 * 100], [65535, 257 * 7]], np.uint16), (8, 8))
    Image.fromarray(deep).save(tmp_path / "neutral.png")  # 16-bit grayscale PNG
    (tmp_path / "d" / "neutral").mkdir(parents=True)
    (tmp_path / "neutral.png").rename(tmp_path / "d" / "neutral" / "a.png")
    [s] = read_class_folders(tmp_path / "d", "d", Quarantine(), progress=True)
    np.testing.assert_array_equal(s.pixels(), np.tile([[0, 100], [255, 7]], (8, 8)))
    assert "d images" in capsys.readouterr().err  # the tqdm bar went to stderr


def test_class_folders_ck_layout_subjects_and_synonyms(tmp_path):
    root = tmp_path / "CK+48"
    names = {"anger": "S005_001_00000011.png", "Contempt": "S138_008_00000007.png",
             "happy": "S010_006_00000015.png", "sadness": "S011_002_00000021.png"}
    for folder, name in names.items():
        write_image(root / folder / name)
    q = Quarantine()
    samples = {s.subject: s for s in read_class_folders(root, "ckplus", q)}
    assert {k: (v.emotion, v.split) for k, v in samples.items()} == {
        "S005": (E("anger"), ""), "S138": (E("contempt"), ""),
        "S010": (E("happiness"), ""), "S011": (E("sadness"), "")}
    assert samples["S005"].uid == "ckplus/anger/S005_001_00000011.png"
    np.testing.assert_array_equal(
        samples["S005"].emotion_mask,
        contract.label_set_mask(["anger", "contempt", "happiness", "sadness"]))
    assert len(q) == 0


@pytest.mark.parametrize("folder,emotion", [
    ("angry", "anger"), ("Anger", "anger"), ("disgusted", "disgust"), ("fearful", "fear"),
    ("happy", "happiness"), ("sad", "sadness"), ("surprised", "surprise"),
    ("neutral", "neutral"), ("contempt", "contempt")])
def test_class_folder_synonyms(tmp_path, folder, emotion):
    write_image(tmp_path / "d" / folder / "a.png")
    [s] = read_class_folders(tmp_path / "d", "d", Quarantine())
    assert s.emotion == E(emotion)


@pytest.mark.parametrize("split_folder,split", [
    ("train", "train"), ("Training", "train"), ("val", "val"), ("validation", "val"),
    ("PublicTest", "val"), ("test", "test"), ("PrivateTest", "test")])
def test_class_folders_split_mapping(tmp_path, split_folder, split):
    write_image(tmp_path / "d" / split_folder / "happy" / "a.png")
    [s] = read_class_folders(tmp_path / "d", "d", Quarantine())
    assert (s.split, s.emotion) == (split, E("happiness"))


def test_class_folders_root_named_like_a_split(tmp_path):
    # ../fer2013/val pointed at directly: its class folders are the val split.
    write_image(tmp_path / "fer2013" / "val" / "angry" / "PublicTest_1.jpg")
    [s] = read_class_folders(tmp_path / "fer2013" / "val", "fer2013", Quarantine())
    assert (s.split, s.uid) == ("val", "fer2013/angry/PublicTest_1.jpg")


def test_class_folders_explicit_label_set_and_stray_files(tmp_path):
    root = tmp_path / "d"
    write_image(root / "happy" / "a.png")
    write_image(root / "fear" / "b.png")
    write_image(root / "stray.png")
    (root / "happy" / "notes.txt").write_text("not an image")
    (root / "happy" / ".DS_Store").write_bytes(b"\0")  # hidden: not an input
    q = Quarantine()
    [s] = read_class_folders(root, "d", q, label_set=["happy", "sad", "neutral"])
    np.testing.assert_array_equal(s.emotion_mask,
                                  contract.label_set_mask(["happiness", "sadness", "neutral"]))
    assert q.by_reason() == {"class_not_in_label_set": 1, "no_class_folder": 1,
                             "unsupported_file": 1}


def test_class_folders_empty_source(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptySourceError, match="no input was found"):
        list(read_class_folders(tmp_path / "empty", "d", Quarantine()))
    # Only bad files: they are quarantined and the error says so.
    (tmp_path / "bad" / "happy").mkdir(parents=True)
    (tmp_path / "bad" / "happy" / "x.png").write_bytes(b"")
    q = Quarantine()
    with pytest.raises(EmptySourceError, match=r"all 1 inputs were rejected \(empty_file=1\)"):
        list(read_class_folders(tmp_path / "bad", "d", q))
    assert q.by_reason() == {"empty_file": 1}
    with pytest.raises(EmptySourceError, match="not a directory"):
        read_class_folders(tmp_path / "missing", "d", Quarantine())


# --- FER2013 CSV ---------------------------------------------------------------

def _pixels(values):
    return " ".join(str(v) for v in values)


def test_fer2013_csv(tmp_path):
    rng = np.random.default_rng(1)
    good = rng.integers(0, 256, 2304)
    rows = [
        f"0,{_pixels(good)},Training",                      # line 2
        f"3,{_pixels(good[::-1])},PublicTest",              # line 3
        f"6,{_pixels(good)},PrivateTest",                   # line 4
        f"2,{_pixels(good[:2000])},Training",               # line 5 short
        f"2,{_pixels(list(good) + [1])},Training",          # line 6 long
        f"2,{_pixels(good[:2303])} 12.5,Training",          # line 7 non-integer
        f"2,{_pixels(good[:2303])} 256,Training",           # line 8 out of range
        f"7,{_pixels(good)},Training",                      # line 9 emotion index 7
        f"x,{_pixels(good)},Training",                      # line 10 emotion not a number
        f"1,{_pixels(good)},Holdout",                       # line 11 unknown usage
        f"1,{_pixels(good)}",                               # line 12 missing cell
    ]
    path = tmp_path / "fer2013.csv"
    path.write_text("emotion,pixels,Usage\n" + "\n".join(rows) + "\n")
    q = Quarantine()
    samples = list(read_fer2013_csv(path, "fer2013", q))
    assert [(s.emotion, s.split, s.uid) for s in samples] == [
        (E("anger"), "train", "fer2013/fer2013.csv/2"),
        (E("happiness"), "val", "fer2013/fer2013.csv/3"),
        (E("neutral"), "test", "fer2013/fer2013.csv/4")]
    np.testing.assert_array_equal(samples[0].pixels(), good.reshape(48, 48))
    np.testing.assert_array_equal(samples[1].pixels(), good[::-1].reshape(48, 48))
    np.testing.assert_array_equal(samples[0].emotion_mask, contract.label_set_mask(contract.BASIC7))
    assert {e.source.rsplit(":", 1)[1]: e.reason for e in q.entries} == {
        "5": "short_pixel_row", "6": "long_pixel_row", "7": "non_integer_pixel",
        "8": "pixel_out_of_range", "9": "bad_emotion_index", "10": "bad_emotion_index",
        "11": "unknown_usage", "12": "malformed_row"}


def test_fer2013_csv_without_usage_and_errors(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("emotion,pixels\n4," + _pixels([7] * 2304) + "\n")
    [s] = read_fer2013_csv(path, "kaggle", Quarantine())
    assert (s.emotion, s.split) == (E("sadness"), "")
    bad_header = tmp_path / "other.csv"
    bad_header.write_text("id,AU12\na,1\n")
    with pytest.raises(EmptySourceError, match="no 'pixels' column"):
        read_fer2013_csv(bad_header, "x", Quarantine())
    header_only = tmp_path / "header.csv"
    header_only.write_text("emotion,pixels,Usage\n")
    with pytest.raises(EmptySourceError, match="no input was found"):
        list(read_fer2013_csv(header_only, "x", Quarantine()))


# --- JAFFE ---------------------------------------------------------------------

def test_jaffe(tmp_path):
    root = tmp_path / "jaffe"
    for name in ["KA.AN1.39.tiff", "KM.NE2.3.tiff", "YM.SU1.58.tiff", "UY.DI3.80.tiff"]:
        write_image(root / name, size=(16, 16))
    write_image(root / "portrait.tiff")            # no JAFFE name
    write_image(root / "KA.XX1.40.tiff")           # unknown expression code
    write_truncated(root / "NA.HA1.20.tiff")
    q = Quarantine()
    samples = {s.uid: s for s in read_jaffe(root, "jaffe", q)}
    assert {uid: (s.subject, s.emotion) for uid, s in samples.items()} == {
        "jaffe/KA.AN1.39.tiff": ("KA", E("anger")), "jaffe/KM.NE2.3.tiff": ("KM", E("neutral")),
        "jaffe/YM.SU1.58.tiff": ("YM", E("surprise")), "jaffe/UY.DI3.80.tiff": ("UY", E("disgust"))}
    np.testing.assert_array_equal(samples["jaffe/KA.AN1.39.tiff"].emotion_mask,
                                  contract.label_set_mask(contract.BASIC7))
    assert q.by_reason() == {"bad_file_name": 1, "unknown_class": 1, "undecodable_image": 1}


# --- 300-W .pts ----------------------------------------------------------------

def _points(n=68, seed=0):
    return np.random.default_rng(seed).uniform(5, 35, (n, 2)).round(3)


def _pts_text(points, header=True, declared=None):
    rows = "\n".join(f"{x:.3f} {y:.3f}" for x, y in points)
    if not header:
        return rows + "\n"
    n = len(points) if declared is None else declared
    return f"version: 1\nn_points:  {n}\n{{\n{rows}\n}}\n"


def test_parse_pts_with_and_without_header():
    pts = _points()
    for text in (_pts_text(pts), _pts_text(pts, header=False)):
        points, _ = parse_pts(text)
        np.testing.assert_allclose(points, pts, atol=1e-3)
    assert parse_pts(_pts_text(pts))[1] == 68
    assert parse_pts(_pts_text(pts, header=False))[1] is None
    with pytest.raises(ValueError, match="non-numeric"):
        parse_pts("1 2\nx y\n")


def test_pts_landmarks(tmp_path):
    root = tmp_path / "300w"
    pts = _points()
    write_image(root / "trainset" / "a.png", size=(40, 20))
    (root / "trainset" / "a.pts").write_text(_pts_text(pts))
    write_image(root / "b.jpg", size=(50, 50))
    (root / "b.pts").write_text(_pts_text(pts, header=False))
    # Bad: 67 points; header says 68 but 67 rows; garbage; no image; no .pts.
    write_image(root / "c.png")
    (root / "c.pts").write_text(_pts_text(_points(67), header=False))
    write_image(root / "d.png")
    (root / "d.pts").write_text(_pts_text(_points(67), declared=68))
    write_image(root / "e.png")
    (root / "e.pts").write_text("version: 1\nn_points: 68\n{\nabc def\n}\n")
    (root / "f.pts").write_text(_pts_text(pts))
    write_image(root / "g.png")
    q = Quarantine()
    samples = by_uid(read_pts_landmarks(root, "300w", q))
    assert sorted(samples) == ["300w/b.jpg", "300w/trainset/a.png"]
    a = samples["300w/trainset/a.png"]
    np.testing.assert_allclose(a.landmarks, pts / [40, 20], atol=1e-5)  # x / width, y / height
    np.testing.assert_allclose(samples["300w/b.jpg"].landmarks, pts / 50, atol=1e-5)
    assert (a.landmarks_mask, a.emotion, a.split, samples["300w/b.jpg"].split) == \
        (1.0, -1, "train", "")
    assert not a.emotion_mask.any()
    assert q.by_reason() == {"wrong_point_count": 2, "unparsable_landmarks": 1,
                             "missing_image": 1, "missing_landmarks": 1}
    assert [p.rsplit("/", 1)[1] for p in sources(q, "wrong_point_count")] == ["c.pts", "d.pts"]


def test_pts_landmarks_empty_source(tmp_path):
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "x.pts").write_text(_pts_text(_points()))
    q = Quarantine()
    with pytest.raises(EmptySourceError, match=r"missing_image=1"):
        list(read_pts_landmarks(tmp_path / "lm", "lm", q))


# --- AU table ------------------------------------------------------------------

def _samples(*stems, dataset="ck"):
    img = contract.encode_png(np.zeros((4, 4), np.uint8))
    return [contract.FaceSample(image=img, dataset=dataset, uid=f"{dataset}/happy/{s}.png",
                                emotion=E("happiness")) for s in stems]


def test_au_table_intensity_scaling_and_missing(tmp_path):
    path = tmp_path / "aus.csv"
    path.write_text("file,AU1,au2,AU4_r,12,frame\n"
                    "s1,0,5,2.5,,7\n"      # intensities -> auto scale 5; AU12 blank
                    "s2,1,0,0,4,8\n")
    q = Quarantine()
    table = read_au_table(path, q)
    assert table.intensity_max == 5.0 and table.ignored_columns == ["frame"]
    i = contract.au_index
    np.testing.assert_allclose(table.aus["s1"][[i(1), i(2), i(4), i(12)]], [0, 1, 0.5, 0])
    np.testing.assert_array_equal(table.masks["s1"][[i(1), i(2), i(4), i(12), i(6)]],
                                  [1, 1, 1, 0, 0])
    np.testing.assert_allclose(table.aus["s2"][i(12)], 0.8)
    assert len(q) == 0


def test_au_table_bad_rows(tmp_path):
    path = tmp_path / "aus.csv"
    path.write_text("id,AU6,AU12\n"
                    "a,1,0\n"        # line 2 ok
                    "b,3,0\n"        # line 3: above intensity_max 1
                    "c,-1,0\n"       # line 4: negative
                    "d,yes,0\n"      # line 5: non-numeric
                    "a,0,0\n"        # line 6: duplicate id
                    ",1,1\n")        # line 7: blank id
    q = Quarantine()
    table = read_au_table(path, q, intensity_max=1)
    assert sorted(table.aus) == ["a"]
    assert {e.source.rsplit(":", 1)[1]: e.reason for e in q.entries} == {
        "3": "au_out_of_range", "4": "au_out_of_range", "5": "non_numeric_au",
        "6": "duplicate_id", "7": "missing_id"}
    # With "auto" the 3 switches the table to the 0-5 scale, and 7 is out of range.
    path.write_text("id,AU6\na,3\nb,7\n")
    q = Quarantine()
    table = read_au_table(path, q)
    assert (table.intensity_max, sorted(table.aus), q.by_reason()) == \
        (5.0, ["a"], {"au_out_of_range": 1})
    with pytest.raises(ValueError, match="both hold AU12"):
        path.write_text("id,AU12_r,AU12_c\na,1,1\n")
        read_au_table(path, Quarantine())


def test_join_au_table(tmp_path):
    path = tmp_path / "aus.csv"
    path.write_text("name,subject,AU12,AU25\n"
                    "S005_001.png,S005,1,\n"           # matched by stem, AU25 unknown
                    "S010_002,S010,0,1\n"              # matched
                    "S999_001,S999,1,1\n")             # no such sample
    q = Quarantine()
    samples = _samples("S005_001", "S010_002", "S011_003")
    joined = {s.uid: s for s in join_au_table(samples, path, q, id_column="name")}
    i12, i25 = contract.au_index("AU12"), contract.au_index("AU25")
    a, b, c = (joined[f"ck/happy/{s}.png"] for s in ("S005_001", "S010_002", "S011_003"))
    assert (a.aus[i12], a.aus_mask[i12], a.aus_mask[i25]) == (1.0, 1.0, 0.0)
    assert (b.aus[i25], b.aus_mask.sum()) == (1.0, 2.0)
    assert not c.aus_mask.any() and not c.aus.any()  # no row: zero mask
    assert [(e.reason, e.source.rsplit(":", 1)[1]) for e in q.entries] == \
        [("unmatched_au_row", "4")]


def test_join_keys(tmp_path):
    [s] = _samples("KA.AN1.39", dataset="jaffe")
    assert sample_key(s, "stem") == "KA.AN1.39"
    assert sample_key(s, "path") == "happy/KA.AN1.39.png"
    assert sample_key(s, "uid") == "jaffe/happy/KA.AN1.39.png"
    path = tmp_path / "aus.csv"
    path.write_text("path,AU1\nhappy/KA.AN1.39.png,1\n")
    [joined] = join_au_table([s], path, Quarantine(), key="path")
    assert joined.aus_mask[contract.au_index(1)] == 1.0
    with pytest.raises(ValueError, match="unknown join key"):
        join_au_table([s], path, Quarantine(), key="name")


# --- registry ------------------------------------------------------------------

def test_registry_and_read_source(fer_tree, tmp_path):
    assert sorted(READERS) == ["class_folders", "fer2013_csv", "jaffe", "pts_landmarks",
                              "synthetic", "tfrecord"]
    au = tmp_path / "aus.csv"
    au.write_text("id,AU12\nTraining_3,1\nTraining_4,0\n")
    q = Quarantine()
    samples = by_uid(read_source("class_folders", str(fer_tree), "fer", q, domain="wild",
                                 au_table=str(au)))
    assert len(samples) == 7 and {s.domain for s in samples.values()} == {"wild"}
    assert samples["fer/train/happy/Training_3.jpg"].aus_mask.sum() == 1.0
    assert samples["fer/train/happy/Training_4.jpg"].aus_mask.sum() == 1.0
    assert samples["fer/train/angry/Training_1.jpg"].aus_mask.sum() == 0.0
    with pytest.raises(ValueError, match="unknown reader"):
        read_source("dicom", str(fer_tree), "fer", Quarantine())
    with pytest.raises(ValueError, match="unexpected keyword"):
        read_source("jaffe", str(fer_tree), "fer", Quarantine(), label_set=["happy"])


def test_detect_reader(fer_tree, tmp_path):
    assert detect_reader(fer_tree) == "class_folders"
    csv_path = tmp_path / "f.csv"
    csv_path.write_text("emotion,pixels,Usage\n")
    assert detect_reader(csv_path) == "fer2013_csv"
    write_image(tmp_path / "jaffe" / "KA.AN1.39.tiff")
    assert detect_reader(tmp_path / "jaffe") == "jaffe"
    (tmp_path / "lm" / "01_Indoor").mkdir(parents=True)
    (tmp_path / "lm" / "01_Indoor" / "a.pts").write_text("1 2\n")
    assert detect_reader(tmp_path / "lm") == "pts_landmarks"
    write_image(tmp_path / "misc" / "photo.png")
    with pytest.raises(ValueError, match="cannot tell"):
        detect_reader(tmp_path / "misc")


def test_tfrecord_and_synthetic_are_readers_like_the_others(tmp_path):
    """The ingestion reads every source through read_source: synthetic faces
    (no path, named <dataset>_<domain>) and contract TFRecords (recorded names
    kept unless a dataset is given)."""
    from components import readers

    q = Quarantine()
    synth = list(read_source("synthetic", None, "toy", q, n_subjects=1, samples_per_emotion=1,
                             emotions=["happiness"], domains=["lab", "wild"], size=24))
    assert sorted(s.dataset for s in synth) == ["toy_lab", "toy_wild"]
    assert readers.dataset_names("synthetic", None, "toy", {"domains": ["wild"]}) == ["toy_wild"]
    assert {"n_subjects", "size", "progress"} <= set(readers.reader_options("synthetic"))
    with pytest.raises(ValueError, match="synthetic"):
        read_source("synthetic", None, "toy", q, n_subjectz=1)

    path = tmp_path / "faces.tfrecord"
    contract.write_tfrecord(synth, str(path))
    kept = list(read_source("tfrecord", str(path), None, q))
    assert [s.dataset for s in kept] == [s.dataset for s in synth]
    assert readers.dataset_names("tfrecord", str(path), None, {}) == ["toy_lab", "toy_wild"]
    renamed = list(read_source("tfrecord", str(path), "faces", q))
    assert {s.dataset for s in renamed} == {"faces"}
    assert readers.reader_options("tfrecord") == ("compression", "progress")
    assert len(q) == 0
