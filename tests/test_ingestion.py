"""FaceIngestion: data spec, subject-disjoint splits, the Beam pipeline (ingest())
and the TFX component in a LocalDagRunner pipeline with StatisticsGen downstream.

Fixtures are made here (synthetic faces, blank and corrupt files); nothing is
read from shared datasets.
"""

import collections
import dataclasses
import glob
import json
import os

import numpy as np
import pytest

from components import contract, synthetic
from components.ingestion import splits
from components.ingestion.spec import DataSpec, SpecError

pytestmark = pytest.mark.timeout(300)

# In-process runner; Beam 2.74's DirectRunner would first try to download Prism.
BEAM_ARGS = ["--runner=FnApiRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1"]


def _png(path, pixels):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(contract.encode_png(pixels))


def _synth_spec(n_subjects=6, eval_fraction=0.34, seed=1, **extra):
    spec = {"sources": [{"reader": "synthetic", "aligned": True,
                         "options": {"n_subjects": n_subjects, "samples_per_emotion": 1,
                                     "size": 48, "domains": ["lab", "wild"]}}],
            "split": {"eval_fraction": eval_fraction, "seed": seed},
            "image_size": 48, "detector": "none"}
    spec.update(extra)
    return spec


def _read_split(examples_dir, split):
    files = sorted(glob.glob(os.path.join(examples_dir, f"Split-{split}", "data_tfrecord-*.gz")))
    assert files, f"no files for split {split}"
    return list(contract.read_tfrecord(files, compression="GZIP"))


# --- spec -----------------------------------------------------------------------
def test_spec_yaml_resolves_paths_and_round_trips_through_json(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "spec.yaml").write_text(
        "sources:\n"
        "  - reader: class_folders\n"
        "    path: data/faces\n"
        "    dataset: ckplus\n"
        "    label_set: [happy, Anger]\n"
        "    au_table: {path: aus.csv, key: stem}\n"
        "    aligned: true\n"
        "  - reader: synthetic\n"
        "    options: {n_subjects: 3, domains: [wild]}\n"
        "split: {eval_fraction: 0.25, seed: 4, kfold: {k: 5, fold: 2}}\n"
        "detector: none\n")
    spec = DataSpec.from_yaml(str(tmp_path / "spec.yaml"))
    src = spec.sources[0]
    assert src.path == str(tmp_path / "data" / "faces")
    assert src.au_table.path == str(tmp_path / "aus.csv")
    assert src.label_set == ["anger", "happiness"]  # canonical names, contract order
    assert spec.split.kfold == (5, 2)
    assert spec.dataset_names() == ["ckplus", "synth_wild"]
    assert spec.label_sets()["ckplus"] == ["anger", "happiness"]
    again = DataSpec.from_json(spec.to_json())
    assert again == spec
    assert DataSpec.load(spec.to_json()) == spec
    assert DataSpec.load(str(tmp_path / "spec.yaml")) == spec


def test_kfold_spec_with_k_alone_or_with_an_eval_fold():
    alone = DataSpec.from_dict(_synth_spec(split={"kfold": {"k": 10}, "seed": 2}))
    assert alone.split.kfold == (10, None) and alone.split.eval_fold is None
    assert alone.split.to_dict()["kfold"] == {"k": 10}
    assert "10-fold" in alone.split.describe() and "eval_fraction" in alone.split.describe()
    both = DataSpec.from_dict(_synth_spec(split={"kfold": [5, 1], "use_source_split": True}))
    assert both.split.kfold == (5, 1) and both.split.to_dict()["kfold"] == {"k": 5, "fold": 1}
    assert "sources' own splits, else eval = fold 1" in both.split.describe()
    for spec in (alone, both):
        assert DataSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize("patch, field", [
    ({"sources": []}, "sources"),
    ({"sources": [{"reader": "nope", "path": "x", "dataset": "d"}]}, "sources[0].reader"),
    ({"sources": [{"reader": "class_folders", "dataset": "d"}]}, "sources[0].path"),
    ({"sources": [{"reader": "jaffe", "path": "x"}]}, "sources[0].dataset"),
    ({"sources": [{"reader": "class_folders", "path": "x", "dataset": "d",
                   "label_set": ["smirk"]}]}, "sources[0].label_set"),
    ({"sources": [{"reader": "synthetic", "options": {"n_subject": 3}}]},
     "sources[0].options"),
    ({"sources": [{"reader": "jaffe", "path": "x", "dataset": "d",
                   "options": {"label_set": ["anger"]}}]}, "sources[0].options.label_set"),
    ({"split": {"eval_fraction": 1.5}}, "split.eval_fraction"),
    ({"split": {"kfold": {"k": 3, "fold": 3}}}, "split.kfold.fold"),
    ({"split": {"kfold": {"fold": 0}}}, "split.kfold"),
    ({"split": {"kfold": {"k": 1}}}, "split.kfold.k"),
    ({"split": {"kfold": {"k": 3, "folds": 1}}}, "split.kfold"),
    ({"detector": "dlib"}, "detector"),
    ({"image_size": 4}, "image_size"),
    ({"max_per_source": 0}, "max_per_source"),
    ({"colour": True}, "data spec"),
])
def test_spec_errors_name_the_field(patch, field):
    raw = _synth_spec()
    raw.update(patch)
    with pytest.raises(SpecError) as err:
        DataSpec.from_dict(raw)
    assert str(err.value).startswith(field), str(err.value)


# --- splits ---------------------------------------------------------------------
def _samples(n_subjects, per_subject, dataset="d"):
    return [contract.FaceSample(image=b"x", dataset=dataset, uid=f"{dataset}/{s}_{i}",
                                subject=f"s{s}")
            for s in range(n_subjects) for i in range(per_subject)]


def test_split_key_is_subject_else_uid():
    a = contract.FaceSample(image=b"x", dataset="ck", uid="ck/1", subject="S005")
    b = contract.FaceSample(image=b"x", dataset="fer", uid="fer/2")
    assert splits.split_key(a) == "ck/subject:S005"
    assert splits.split_key(b) == "fer/uid:fer/2"


def test_one_person_rendered_in_two_domains_is_one_subject():
    """The synthetic source writes the same people to synth_lab and synth_wild:
    they must land on one side of every split and in one fold."""
    lab = contract.FaceSample(image=b"x", dataset="synth_lab", domain="lab", uid="l1",
                              subject="synth_s0003")
    wild = contract.FaceSample(image=b"x", dataset="synth_wild", domain="wild", uid="w1",
                               subject="synth_s0003")
    other = contract.FaceSample(image=b"x", dataset="ck_wild", domain="lab", uid="c1",
                                subject="synth_s0003")
    assert splits.split_key(lab) == splits.split_key(wild) == "synth/subject:synth_s0003"
    assert splits.split_key(other) == "ck_wild/subject:synth_s0003"   # not a domain suffix


def test_eval_fraction_is_about_right_and_stable():
    keys = [f"d/subject:{i}" for i in range(4000)]
    got = [splits.assign_split(k, 0.2, seed=7) for k in keys]
    assert abs(got.count("eval") / len(keys) - 0.2) < 0.03
    assert got == [splits.assign_split(k, 0.2, seed=7) for k in keys]  # deterministic
    other = [splits.assign_split(k, 0.2, seed=8) for k in keys]
    assert other != got  # the seed matters
    # known value: the hash is stable across processes and Python versions
    assert splits.unit_interval("d/subject:0", 0) == pytest.approx(
        int.from_bytes(__import__("hashlib").sha256(b"split\x000\x00d/subject:0").digest()[:8],
                       "big") / 2 ** 64)


def _ck_like(n_subjects=40, seed=0):
    """CK+-like samples: each subject 1-3 sequences of distinct emotions, 3
    frames each, plus 4 subjects without emotion (-1)."""
    rng = np.random.default_rng(seed)
    out = []
    for s in range(n_subjects):
        emotions = rng.choice([0, 1, 2, 3, 4, 5, 7], size=rng.integers(1, 4), replace=False)
        for q, emotion in enumerate(emotions):
            out += [contract.FaceSample(image=b"x", dataset="ck", uid=f"ck/S{s:03d}_{q}_{f}",
                                        subject=f"S{s:03d}", emotion=int(emotion),
                                        sequence=f"S{s:03d}_{q:03d}") for f in range(3)]
    out += [contract.FaceSample(image=b"x", dataset="ck", uid=f"ck/U{s}", subject=f"U{s}")
            for s in range(4)]
    return out


def _fold_balance(samples, fold_of, k):
    """(spread of subjects per fold, largest per-emotion spread of images per fold)."""
    subjects = collections.Counter(fold_of[key] for key in {splits.split_key(s) for s in samples})
    per_emotion = collections.defaultdict(collections.Counter)
    for s in samples:
        per_emotion[s.emotion][fold_of[splits.split_key(s)]] += 1
    spread = max(max(c[f] for f in range(k)) - min(c[f] for f in range(k))
                 for c in per_emotion.values())
    return max(subjects.values()) - min(subjects[f] for f in range(k)), spread


def test_folds_are_balanced_stratified_and_subject_disjoint():
    samples, k = _ck_like(), 5
    records = [splits.fold_record(s) for s in samples]
    fold_of = splits.assign_folds(records, k, seed=0)
    keys = {splits.split_key(s) for s in samples}
    assert set(fold_of) == keys and set(fold_of.values()) == set(range(k))  # one fold per subject
    subject_spread, emotion_spread = _fold_balance(samples, fold_of, k)
    # 44 subjects: 8 or 9 (or 10) per fold; every emotion within two sequences
    # (6 frames) across folds, the unlabelled stratum (-1) included.
    assert subject_spread <= 2 and emotion_spread <= 6
    # The per-key hash (assign_fold) is subject-disjoint but balances neither.
    hashed = {key: splits.assign_fold(key, k, seed=0) for key in keys}
    assert _fold_balance(samples, hashed, k)[0] > 2 and _fold_balance(samples, hashed, k)[1] > 6
    # Deterministic: the order of the records does not matter, the seed does.
    shuffled = list(records)
    np.random.default_rng(1).shuffle(shuffled)
    assert splits.assign_folds(shuffled, k, seed=0) == fold_of
    assert splits.assign_folds(records, k, seed=1) != fold_of
    # eval = one fold, the rest train
    for f in range(k):
        tagged = [dataclasses.replace(s, fold=fold_of[splits.split_key(s)]) for s in samples]
        ev = {s.uid for s in tagged if splits.sample_split(s, eval_fold=f) == "eval"}
        assert ev == {s.uid for s in samples if fold_of[splits.split_key(s)] == f}
    with pytest.raises(ValueError, match="no fold assigned"):
        splits.sample_split(samples[0], eval_fold=0)


def test_folds_are_per_dataset_and_need_k_subjects():
    """Each dataset of a mix is divided on its own: adding a second dataset
    does not move the first one's folds."""
    ck = [splits.fold_record(s) for s in _ck_like()]
    other = [splits.fold_record(s) for s in _samples(12, 2, dataset="fer")]
    alone, mixed = splits.assign_folds(ck, 4, 3), splits.assign_folds(ck + other, 4, 3)
    assert {key: mixed[key] for key in alone} == alone
    assert {mixed[r[1]] for r in other} == set(range(4))
    with pytest.raises(ValueError, match="fer: 12 subjects .* cannot fill 20 folds"):
        splits.assign_folds(other, 20)


def test_source_split_is_kept_when_asked():
    s = contract.FaceSample(image=b"x", dataset="fer", uid="fer/1", split="test")
    t = contract.FaceSample(image=b"x", dataset="fer", uid="fer/2", split="train")
    assert splits.sample_split(s, use_source_split=True) == "eval"
    assert splits.sample_split(t, 0.99, use_source_split=True) == "train"


# --- reading one source (stage 1, without Beam) ----------------------------------------
def test_tfrecord_source_with_label_set_au_table_domain_and_cap(tmp_path):
    from components.ingestion.executor import iter_source
    from components.ingestion.spec import SourceSpec
    from components.quarantine import Quarantine

    samples = list(synthetic.generate(n_subjects=2, samples_per_emotion=1, domains=("lab",),
                                      emotions=("happiness", "sadness", "fear"), size=32))
    contract.write_tfrecord(samples, str(tmp_path / "a.tfrecord"))
    (tmp_path / "aus.csv").write_text(f"uid,AU12\n{samples[0].uid},0.25\n")
    source = SourceSpec.from_dict(
        {"reader": "tfrecord", "path": "a.tfrecord", "dataset": "renamed", "domain": "studio",
         "label_set": ["happiness", "sadness"], "au_table": {"path": "aus.csv", "key": "uid"}},
        str(tmp_path), "sources[0]")
    q = Quarantine()
    got = list(iter_source(source, q))
    assert len(got) == 4 and {s.dataset for s in got} == {"renamed"}
    assert {s.domain for s in got} == {"studio"}
    assert all(s.emotion_mask.sum() == 2 for s in got)
    assert got[0].aus[contract.au_index(12)] == pytest.approx(0.25)
    assert q.by_reason() == {"class_not_in_label_set": 2}
    assert len(list(iter_source(source, Quarantine(), max_samples=3))) == 3
    assert source.dataset_names() == ["renamed"]
    source.dataset = None
    assert source.dataset_names() == ["synth_lab"]  # read from the files


# --- the Beam pipeline ------------------------------------------------------------
@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    """One ingest() over three sources: synthetic (aligned), class folders with a
    corrupt image and an unknown class (aligned), and an unaligned camera-like
    folder of upscaled rendered faces and blank images (Haar detection)."""
    from components.ingestion import ingest

    root = tmp_path_factory.mktemp("ingest")
    folders = root / "folders"
    faces = list(synthetic.generate(n_subjects=4, samples_per_emotion=1, domains=("lab",),
                                    emotions=("happiness", "sadness"), size=48, seed=5,
                                    subject_offset=50))
    for s in faces:
        cls = "happy" if s.emotion == contract.EMOTIONS.index("happiness") else "sad"
        _png(str(folders / cls / f"{s.uid}.png"), s.pixels())
    (folders / "happy" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    _png(str(folders / "smirk" / "odd.png"), faces[0].pixels())

    camera = root / "camera"
    for s in synthetic.generate(n_subjects=2, samples_per_emotion=1, domains=("lab",),
                                emotions=("neutral",), size=128, seed=6, subject_offset=70):
        _png(str(camera / "neutral" / f"{s.uid}.png"), s.pixels())
    for i in range(3):
        _png(str(camera / "neutral" / f"blank_{i}.png"), np.full((160, 160), 90 + 40 * i,
                                                                  np.uint8))
    spec = _synth_spec(n_subjects=6, eval_fraction=0.34, seed=1, detector="haar")
    spec["sources"] += [
        {"reader": "class_folders", "path": "folders", "dataset": "folders", "aligned": True,
         "domain": "lab"},
        {"reader": "class_folders", "path": "camera", "dataset": "camera", "aligned": False},
    ]
    spec = DataSpec.from_dict(spec, base_dir=str(root))
    counts = ingest(spec, str(root / "out"), beam_args=BEAM_ARGS)
    return spec, counts, root / "out"


def test_ingest_writes_subject_disjoint_splits_that_parse(mixed_run):
    import tensorflow as tf

    spec, counts, out = mixed_run
    train = _read_split(out / "examples", "train")
    ev = _read_split(out / "examples", "eval")
    assert len(train) == counts["train"] and len(ev) == counts["eval"]
    assert {splits.split_key(s) for s in train}.isdisjoint({splits.split_key(s) for s in ev})
    assert counts["subjects"]["train"] == len({splits.split_key(s) for s in train})
    # every record fits the contract's parse spec, images at image_size
    files = glob.glob(str(out / "examples" / "Split-*" / "*.gz"))
    for raw in tf.data.TFRecordDataset(files, compression_type="GZIP").take(20):
        parsed = tf.io.parse_single_example(raw, contract.feature_spec())
        assert tf.io.decode_png(parsed["image"]).shape == (48, 48, 1)
    # synthetic landmarks survive (aligned: only resized)
    synth = [s for s in train + ev if s.dataset.startswith("synth")]
    assert all(s.landmarks_mask == 1.0 for s in synth)
    assert {s.dataset for s in train + ev} == {"synth_lab", "synth_wild", "folders", "camera"}


def test_ingest_counts_add_up(mixed_run):
    spec, counts, out = mixed_run
    n_synth = 6 * 2 * len(contract.EMOTIONS)
    assert counts["total"] == counts["train"] + counts["eval"] == n_synth + 8 + 2
    for ds, expected in (("synth_lab", n_synth // 2), ("folders", 8), ("camera", 2)):
        assert sum(counts["by_dataset"][ds].values()) == expected
    assert sum(counts["by_method"].values()) == counts["total"]
    assert counts["by_method"]["resized"] == n_synth + 8
    # the two rendered camera faces went through Haar face + eye detection
    assert counts["by_method"].get("eyes", 0) + counts["no_eyes_fallback"] == 2
    assert counts["quarantined"] == sum(counts["by_reason"].values()) == 1 + 1 + 3


def test_quarantine_has_every_rejected_input_with_its_reason(mixed_run):
    from components.quarantine import Quarantine

    spec, counts, out = mixed_run
    q = Quarantine.read(counts["quarantine_path"])
    assert q.by_reason() == {"undecodable_image": 1, "unknown_class": 1, "no_face": 3}
    by_reason = collections.defaultdict(list)
    for e in q.entries:
        by_reason[e.reason].append(e.source)
    assert by_reason["undecodable_image"][0].endswith("broken.jpg")
    assert by_reason["unknown_class"][0].endswith("odd.png")
    assert sorted(os.path.basename(s) for s in by_reason["no_face"]) == [
        f"blank_{i}.png" for i in range(3)]
    assert counts["by_reason"] == q.by_reason()


@pytest.mark.parametrize("kfold", [{"k": 3}, {"k": 3, "fold": 1}])
def test_ingest_writes_the_folds_of_assign_folds_on_every_example(tmp_path, kfold):
    """The Beam path (collect, assign once, side input) writes the folds that
    calling assign_folds on the same samples gives; with ``fold`` eval is that
    fold, without it eval_fraction decides and every example still has a fold."""
    from components.ingestion import ingest

    spec = _synth_spec(n_subjects=7, eval_fraction=0.3, seed=4)
    spec["split"]["kfold"] = kfold
    spec["sources"][0]["options"]["emotions"] = ["happiness", "sadness", "fear"]
    counts = ingest(spec, str(tmp_path / "out"), beam_args=BEAM_ARGS)
    train = _read_split(tmp_path / "out" / "examples", "train")
    ev = _read_split(tmp_path / "out" / "examples", "eval")
    expected = splits.assign_folds([splits.fold_record(s) for s in train + ev], 3, seed=4)
    assert all(s.fold == expected[splits.split_key(s)] for s in train + ev)
    assert {s.fold for s in train + ev} == {0, 1, 2}
    if "fold" in kfold:
        assert {s.fold for s in ev} == {1} and 1 not in {s.fold for s in train}
    else:
        assert {s.fold for s in ev} != {1}  # eval by subject hash, not by fold
        assert [s.uid for s in ev] and all(
            splits.assign_split(splits.split_key(s), 0.3, 4) == "eval" for s in ev)
    per_fold = counts["folds"]["synth_lab"]
    assert sum(f["examples"] for f in per_fold.values()) == len(train + ev) // 2
    assert sum(f["subjects"] for f in per_fold.values()) == 7
    assert "3-fold" in counts["split"]


def test_records_without_fold_read_as_minus_one():
    import tensorflow as tf

    sample = contract.FaceSample(image=contract.encode_png(np.zeros((16, 16), np.uint8)),
                                 dataset="d", uid="d/1", fold=2)
    old = sample.to_example()
    del old.features.feature["fold"]
    assert contract.FaceSample.from_example(old.SerializeToString()).fold == -1
    assert contract.FaceSample.from_example(sample.serialize()).fold == 2
    parsed = tf.io.parse_example(tf.constant([old.SerializeToString(), sample.serialize()]),
                                 contract.parse_spec())
    assert parsed["fold"].numpy().tolist() == [-1, 2]
    with pytest.raises(contract.ContractError, match="fold"):
        contract.FaceSample(image=b"x", dataset="d", uid="d/1", fold=-2)


def test_empty_eval_split_is_a_readable_error(tmp_path):
    from components.ingestion import EmptySplitError, ingest

    spec = _synth_spec(n_subjects=3, eval_fraction=0.01, seed=0)
    spec["sources"][0]["options"]["domains"] = ["lab"]
    with pytest.raises(EmptySplitError, match=r"eval split is empty: 3 subjects, "
                                              r"eval_fraction 0.01 — add subjects"):
        ingest(spec, str(tmp_path / "out"), beam_args=BEAM_ARGS)


def test_empty_source_is_an_error(tmp_path):
    from components.ingestion import ingest
    from components.readers import EmptySourceError

    (tmp_path / "empty").mkdir()
    spec = _synth_spec(n_subjects=2)
    spec["sources"].append({"reader": "class_folders", "path": str(tmp_path / "empty"),
                            "dataset": "nothing", "aligned": True})
    with pytest.raises(EmptySourceError, match="no usable sample"):
        ingest(spec, str(tmp_path / "out"), beam_args=BEAM_ARGS)


# --- the TFX component ------------------------------------------------------------
@pytest.mark.slow   # 23 s; tests/test_pipeline.py runs FaceIngestion + StatisticsGen in CI
def test_component_runs_in_a_tfx_pipeline_with_statistics_gen(tmp_path):
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2
    from tfx import v1 as tfx

    from components.ingestion import FaceIngestion

    root = tmp_path / "root"
    spec = _synth_spec(n_subjects=5, eval_fraction=0.4, seed=2, max_per_source=50)
    ingestion = FaceIngestion(data_spec=json.dumps(spec))
    statistics = tfx.components.StatisticsGen(examples=ingestion.outputs["examples"])
    metadata = str(tmp_path / "metadata.sqlite")
    tfx.orchestration.LocalDagRunner().run(tfx.dsl.Pipeline(
        pipeline_name="ingestion-test", pipeline_root=str(root),
        components=[ingestion, statistics], enable_cache=False,
        metadata_connection_config=tfx.orchestration.metadata
        .sqlite_metadata_connection_config(metadata),
        beam_pipeline_args=BEAM_ARGS))

    for split in ("train", "eval"):
        assert glob.glob(str(root / "StatisticsGen" / "statistics" / "*" / f"Split-{split}"
                             / "FeatureStats.pb"))

    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = metadata
    store = metadata_store.MetadataStore(cfg)
    [examples] = store.get_artifacts_by_type("Examples")
    props = examples.custom_properties
    assert props["payload_format"].string_value == "FORMAT_TF_EXAMPLE"
    assert examples.properties["split_names"].string_value == '["train", "eval"]'
    assert examples.properties["span"].int_value == 0
    n_train, n_eval = props["num_train"].int_value, props["num_eval"].int_value
    assert n_train + n_eval == 50 and n_train > 0 and n_eval > 0
    assert props["num_quarantined"].int_value == 0
    [report] = store.get_artifacts_by_type("components.QuarantineReport")
    with open(os.path.join(report.uri, "quarantine.json")) as f:
        assert json.load(f)["count"] == 0
    assert report.custom_properties["num_train"].int_value == n_train
