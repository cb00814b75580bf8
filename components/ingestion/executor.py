"""The face-ingestion Beam pipeline and its TFX executor.

Stages (each a Beam transform, so the same code runs on the DirectRunner here
and on a distributed runner unchanged: no global state, every DoFn pickles)::

    Create(sources) -> ReadSources (one element per source, read through
        components.readers.read_source whatever its type: AU-table join, label
        set, max_per_source; rejected inputs go to the "quarantine" tagged output)
      -> Reshuffle (spread the samples of a big source over the workers)
      -> AlignFaces (FaceAligner built once per worker in setup(); no face ->
        quarantine "no_face", other failures -> "align_failed")
      [-> with split.kfold: FoldRecords -> ToList -> AssignFolds (one global
          StratifiedGroupKFold, components.ingestion.splits.assign_folds) ->
          SetFold (side input): every face gets its fold]
      -> AssignSplit (by subject or eval fold: components.ingestion.splits)
      -> Partition(train, eval) -> serialize -> WriteToTFRecord (GZIP)
    counts (CombineGlobally) -> counts.json ; quarantine (ToList) -> quarantine.json

:func:`ingest` runs it outside TFX; :class:`Executor` is the TFX executor of
:class:`~components.ingestion.component.FaceIngestion`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import apache_beam as beam
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_executor
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils

from components import contract, readers
from components.ingestion import splits as splits_lib
from components.ingestion.align import FaceAligner, NoFaceFound
from components.ingestion.spec import DataSpec, SourceSpec
from components.quarantine import Quarantine

log = logging.getLogger(__name__)

METRICS_NAMESPACE = "fer_mtl_ingestion"
SPLIT_NAMES = splits_lib.SPLITS                  # ("train", "eval")
FILE_PREFIX = "data_tfrecord"                    # like ExampleGen: Split-x/data_tfrecord-*.gz
QUARANTINE_FILE = "quarantine.json"
COUNTS_FILE = "counts.json"
QUARANTINE_TAG = "quarantine"
# Label kinds counted per dataset in counts.json ("labels").
LABEL_KINDS = ("emotion", "aus", "landmarks")
# ingest()'s runner when beam_args name none: Beam's in-process portable runner.
# (Beam 2.74's DirectRunner first tries to download the Prism runner binary from
# the internet, then falls back to this one; FnApiRunner honours
# --direct_running_mode / --direct_num_workers.)
DEFAULT_LOCAL_RUNNER = "FnApiRunner"


class EmptySplitError(ValueError):
    """Ingestion produced a train or eval split without examples."""


# ----------------------------------------------------------------------------- reading
def iter_source(source: SourceSpec, quarantine: Quarantine,
                max_samples: Optional[int] = None) -> Iterator[contract.FaceSample]:
    """Samples of one spec source, ready for alignment: read with its reader
    (:func:`components.readers.read_source`, AU table joined), domain set,
    label set applied, at most ``max_samples``.

    Raises ``EmptySourceError`` when the source yields no usable sample.
    """
    opts = dict(source.options)
    opts.pop("progress", None)
    au = source.au_table
    if au:
        opts.update(au_table=au.path, au_key=au.key, au_id_column=au.id_column,
                    au_intensity_max=au.intensity_max, au_missing=au.missing)
    samples = readers.read_source(source.reader, source.path, source.dataset, quarantine,
                                  **opts)
    mask = contract.label_set_mask(source.label_set) if source.label_set else None
    n = 0
    for sample in samples:
        if source.domain:
            sample.domain = source.domain
        if mask is not None and sample.emotion >= 0:
            if not mask[sample.emotion]:
                quarantine.add(sample.uid, "class_not_in_label_set",
                               f"{contract.EMOTIONS[sample.emotion]} is not in the label set "
                               f"{source.label_set}")
                continue
            sample.emotion_mask = mask.copy()
        yield sample
        n += 1
        if max_samples is not None and n >= max_samples:
            return
    if n == 0:
        why = quarantine.summary() if len(quarantine) else "nothing was read"
        raise readers.EmptySourceError(f"{source.reader} source {source.name!r} "
                                       f"({source.path or 'generated'}) has no usable "
                                       f"sample: {why}")


# ----------------------------------------------------------------------------- Beam DoFns
def _entry(source: str, reason: str, detail: str = "") -> Dict[str, str]:
    return {"source": str(source), "reason": reason, "detail": str(detail)}


class ReadSourceFn(beam.DoFn):
    """(index, source dict) -> (index, FaceSample); rejected inputs -> quarantine tag."""

    def __init__(self, max_per_source: Optional[int]):
        self._cap = max_per_source

    def process(self, element):
        index, source_dict = element
        source = SourceSpec.from_dict(source_dict, None, f"sources[{index}]")
        quarantine = Quarantine()
        read = beam.metrics.Metrics.counter(METRICS_NAMESPACE, f"read_{source.name}")
        rejected = beam.metrics.Metrics.counter(METRICS_NAMESPACE,
                                                f"rejected_at_read_{source.name}")
        n = flushed = 0
        for sample in iter_source(source, quarantine, self._cap):
            n += 1
            read.inc()
            if n % 5000 == 0:
                log.info("ingestion: source %s: %d samples read", source.name, n)
            yield index, sample
            while flushed < len(quarantine.entries):
                e = quarantine.entries[flushed]
                flushed += 1
                rejected.inc()
                yield beam.pvalue.TaggedOutput(QUARANTINE_TAG, _entry(e.source, e.reason, e.detail))
        for e in quarantine.entries[flushed:]:
            rejected.inc()
            yield beam.pvalue.TaggedOutput(QUARANTINE_TAG, _entry(e.source, e.reason, e.detail))
        log.info("ingestion: source %s (%s): %d samples read, %d inputs rejected",
                 source.name, source.reader, n, len(quarantine))


class AlignFacesFn(beam.DoFn):
    """(index, FaceSample) -> (FaceSample, method); failures -> quarantine tag.

    The :class:`FaceAligner` (and its OpenCV cascades) is created once per
    worker in :meth:`setup`, never pickled.
    """

    def __init__(self, detector: str, image_size: int, aligned: Sequence[bool]):
        self._detector = detector
        self._size = int(image_size)
        self._aligned = list(aligned)
        self._aligner = None

    def setup(self):
        self._aligner = FaceAligner(detector=self._detector, output_size=self._size)

    def process(self, element):
        index, sample = element
        try:
            out, method = self._aligner.align(sample, aligned=self._aligned[index])
        except NoFaceFound as err:
            beam.metrics.Metrics.counter(METRICS_NAMESPACE, "quarantined_no_face").inc()
            yield beam.pvalue.TaggedOutput(QUARANTINE_TAG, _entry(sample.uid, "no_face", err))
            return
        except Exception as err:  # noqa: BLE001 - one bad image must not stop the run
            beam.metrics.Metrics.counter(METRICS_NAMESPACE, "quarantined_align_failed").inc()
            yield beam.pvalue.TaggedOutput(QUARANTINE_TAG, _entry(
                sample.uid, "align_failed", f"{type(err).__name__}: {err}"))
            return
        beam.metrics.Metrics.counter(METRICS_NAMESPACE, f"aligned_{method}").inc()
        yield out, method


def _fold_record(element):
    return splits_lib.fold_record(element[0])


def _set_fold(element, folds: Dict[str, int]):
    sample, method = element
    fold = folds[splits_lib.split_key(sample)]
    beam.metrics.Metrics.counter(METRICS_NAMESPACE, f"fold_{fold}").inc()
    return dataclasses.replace(sample, fold=fold), method


def _assign_split(element, split_spec: Dict[str, Any]):
    sample, method = element
    kfold = split_spec["kfold"] or {}
    split = splits_lib.sample_split(
        sample, split_spec["eval_fraction"], split_spec["seed"], split_spec["use_source_split"],
        kfold.get("fold"))
    beam.metrics.Metrics.counter(METRICS_NAMESPACE, f"split_{split}").inc()
    return split, sample, method


def _partition(element, n_partitions):
    return SPLIT_NAMES.index(element[0])


def _serialize(element) -> bytes:
    return element[1].serialize()


def _count_record(element):
    split, sample, method = element
    emotion = contract.EMOTIONS[sample.emotion] if sample.emotion >= 0 else "(none)"
    labels = (sample.emotion >= 0, bool(sample.aus_mask.any()), sample.landmarks_mask > 0)
    return (split, sample.dataset, splits_lib.split_key(sample), method, sample.fold, emotion,
            labels)


def _new_fold() -> Dict[str, Any]:
    return {"examples": 0, "subjects": set(), "emotions": {}}


class CountFn(beam.CombineFn):
    """Examples per split, per dataset and split, per alignment method, the
    distinct split keys (subjects) per split, the examples of each dataset
    with each label kind, and per fold (when k-fold) the examples, subjects
    and emotions of each dataset."""

    def create_accumulator(self):
        return {"splits": {}, "datasets": {}, "methods": {}, "subjects": {}, "folds": {},
                "labels": {}}

    def add_input(self, acc, record):
        split, dataset, key, method, fold, emotion, labels = record
        per_l = acc["labels"].setdefault(dataset, dict.fromkeys(LABEL_KINDS, 0))
        for kind, has in zip(LABEL_KINDS, labels):
            per_l[kind] += int(has)
        if fold >= 0:
            per_f = acc["folds"].setdefault(dataset, {}).setdefault(fold, _new_fold())
            per_f["examples"] += 1
            per_f["subjects"].add(key)
            per_f["emotions"][emotion] = per_f["emotions"].get(emotion, 0) + 1
        acc["splits"][split] = acc["splits"].get(split, 0) + 1
        per = acc["datasets"].setdefault(dataset, {})
        per[split] = per.get(split, 0) + 1
        per_m = acc["methods"].setdefault(split, {})
        per_m[method] = per_m.get(method, 0) + 1
        acc["subjects"].setdefault(split, set()).add(key)
        return acc

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for acc in accs:
            for split, n in acc["splits"].items():
                out["splits"][split] = out["splits"].get(split, 0) + n
            for ds, per in acc["datasets"].items():
                o = out["datasets"].setdefault(ds, {})
                for split, n in per.items():
                    o[split] = o.get(split, 0) + n
            for split, per in acc["methods"].items():
                o = out["methods"].setdefault(split, {})
                for m, n in per.items():
                    o[m] = o.get(m, 0) + n
            for split, keys in acc["subjects"].items():
                out["subjects"].setdefault(split, set()).update(keys)
            for ds, per in acc["labels"].items():
                o = out["labels"].setdefault(ds, dict.fromkeys(LABEL_KINDS, 0))
                for kind, n in per.items():
                    o[kind] += n
            for ds, per in acc["folds"].items():
                for fold, f in per.items():
                    o = out["folds"].setdefault(ds, {}).setdefault(fold, _new_fold())
                    o["examples"] += f["examples"]
                    o["subjects"].update(f["subjects"])
                    for e, n in f["emotions"].items():
                        o["emotions"][e] = o["emotions"].get(e, 0) + n
        return out

    def extract_output(self, acc):
        return {"splits": acc["splits"], "datasets": acc["datasets"], "methods": acc["methods"],
                "subjects": {s: len(k) for s, k in acc["subjects"].items()},
                "labels": {ds: dict(per) for ds, per in sorted(acc["labels"].items())},
                "folds": {ds: {str(fold): {"examples": f["examples"],
                                           "subjects": len(f["subjects"]),
                                           "emotions": dict(sorted(f["emotions"].items()))}
                               for fold, f in sorted(per.items())}
                          for ds, per in sorted(acc["folds"].items())}}


def _write_json(obj, path: str) -> str:
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True))
    return path


def _write_quarantine(entries: List[Dict[str, str]], path: str) -> str:
    q = Quarantine()
    for e in sorted(entries, key=lambda e: (e["reason"], e["source"])):
        q.add(e["source"], e["reason"], e["detail"])
    return _write_json(q.to_dict(), path)  # the Quarantine.write format


def build_pipeline(pipeline: beam.Pipeline, spec: DataSpec, examples_uri: str,
                   report_dir: str) -> None:
    """Add the ingestion transforms to ``pipeline``: examples go to
    ``examples_uri/Split-{train,eval}/data_tfrecord-*.gz``, ``quarantine.json``
    and ``counts.json`` to ``report_dir``."""
    sources = [(i, s.to_dict()) for i, s in enumerate(spec.sources)]
    read = (pipeline
            | "CreateSources" >> beam.Create(sources, reshuffle=False)
            | "ReadSources" >> beam.ParDo(ReadSourceFn(spec.max_per_source)).with_outputs(
                QUARANTINE_TAG, main="samples"))
    aligned = (read.samples
               | "Reshuffle" >> beam.Reshuffle()
               | "AlignFaces" >> beam.ParDo(AlignFacesFn(
                   spec.detector, spec.image_size, [s.aligned for s in spec.sources])
               ).with_outputs(QUARANTINE_TAG, main="faces"))
    faces = aligned.faces
    if spec.split.kfold:
        # Folds need every subject at once: collect (population, key, emotion)
        # of all faces, assign the folds once, map them back as a side input.
        folds = (faces
                 | "FoldRecords" >> beam.Map(_fold_record)
                 | "CollectFoldRecords" >> beam.combiners.ToList()
                 | "AssignFolds" >> beam.Map(splits_lib.assign_folds, spec.split.kfold[0],
                                             spec.split.seed))
        faces = faces | "SetFold" >> beam.Map(_set_fold, beam.pvalue.AsSingleton(folds))
    with_split = faces | "AssignSplit" >> beam.Map(_assign_split, spec.split.to_dict())
    parts = with_split | "Partition" >> beam.Partition(_partition, len(SPLIT_NAMES))
    for name, part in zip(SPLIT_NAMES, parts):
        _ = (part
             | f"Serialize[{name}]" >> beam.Map(_serialize)
             | f"Write[{name}]" >> beam.io.WriteToTFRecord(
                 os.path.join(examples_uri, f"Split-{name}", FILE_PREFIX),
                 file_name_suffix=".gz",
                 compression_type=beam.io.filesystem.CompressionTypes.GZIP))
    _ = (with_split
         | "CountRecords" >> beam.Map(_count_record)
         | "Count" >> beam.CombineGlobally(CountFn())
         | "WriteCounts" >> beam.Map(_write_json, os.path.join(report_dir, COUNTS_FILE)))
    _ = ((read[QUARANTINE_TAG], aligned[QUARANTINE_TAG])
         | "MergeQuarantine" >> beam.Flatten()
         | "CollectQuarantine" >> beam.combiners.ToList()
         | "WriteQuarantine" >> beam.Map(_write_quarantine,
                                         os.path.join(report_dir, QUARANTINE_FILE)))


# ----------------------------------------------------------------------------- summary
def _read_json(path: str):
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def summarize(spec: DataSpec, report_dir: str) -> Dict[str, Any]:
    """Counts of a finished run (from ``counts.json`` / ``quarantine.json``)."""
    raw = _read_json(os.path.join(report_dir, COUNTS_FILE))
    quarantine = _read_json(os.path.join(report_dir, QUARANTINE_FILE))
    methods = collections.Counter()
    for per in raw["methods"].values():
        methods.update(per)
    counts = {
        "train": int(raw["splits"].get("train", 0)),
        "eval": int(raw["splits"].get("eval", 0)),
        "total": int(sum(raw["splits"].values())),
        "quarantined": int(quarantine["count"]),
        "no_eyes_fallback": int(methods.get("no_eyes_fallback", 0)),
        "by_dataset": {ds: {s: int(per.get(s, 0)) for s in SPLIT_NAMES}
                       for ds, per in sorted(raw["datasets"].items())},
        "by_reason": dict(sorted(quarantine["by_reason"].items())),
        "by_method": dict(sorted(methods.items())),
        "subjects": {s: int(raw["subjects"].get(s, 0)) for s in SPLIT_NAMES},
        "labels": raw.get("labels", {}),
        "folds": raw.get("folds", {}),
        "split": spec.split.describe(),
    }
    return counts


def check_splits(spec: DataSpec, counts: Dict[str, Any]) -> None:
    """Raise :class:`EmptySplitError` with a readable reason when a split is empty."""
    if counts["total"] == 0:
        reasons = ", ".join(f"{r}={n}" for r, n in counts["by_reason"].items()) or "none"
        raise EmptySplitError(f"no example survived ingestion: {counts['quarantined']} inputs "
                              f"quarantined ({reasons})")
    subjects = counts["subjects"]["train"] + counts["subjects"]["eval"]
    split = spec.split
    for name in SPLIT_NAMES:
        if counts[name]:
            continue
        if split.eval_fold is not None:
            k, fold = split.kfold
            hint = (f"{subjects} subjects, {k}-fold, fold {fold} — use fewer folds or add "
                    "subjects")
        elif split.use_source_split:
            hint = (f"{subjects} subjects, the sources' own splits put nothing in {name} and "
                    f"samples without one go by eval_fraction {split.eval_fraction:g} — "
                    f"check the sources' split folders or add subjects")
        elif name == "eval":
            hint = (f"{subjects} subjects, eval_fraction {split.eval_fraction:g} — add "
                    "subjects or raise eval_fraction")
        else:
            hint = (f"{subjects} subjects, eval_fraction {split.eval_fraction:g} — add "
                    "subjects or lower eval_fraction")
        raise EmptySplitError(f"{name} split is empty: {hint}")


def _log_counts(counts: Dict[str, Any]) -> None:
    log.info("ingestion: %d examples (train %d / eval %d; subjects %d / %d), %d quarantined %s, "
             "alignment %s", counts["total"], counts["train"], counts["eval"],
             counts["subjects"]["train"], counts["subjects"]["eval"], counts["quarantined"],
             counts["by_reason"], counts["by_method"])
    for ds, per in counts["by_dataset"].items():
        log.info("ingestion:   %s: train %d, eval %d", ds, per["train"], per["eval"])


def _log_metrics(result) -> None:
    try:
        metrics = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(
            METRICS_NAMESPACE))
        for c in sorted(metrics["counters"], key=lambda c: c.key.metric.name):
            log.info("ingestion metric %s = %s", c.key.metric.name, c.committed)
    except Exception:  # noqa: BLE001 - not every runner reports metrics
        pass


def ingest(spec: Union[DataSpec, dict, str], output_dir: str,
           beam_args: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run the ingestion pipeline outside TFX.

    Writes ``output_dir/examples/Split-{train,eval}/data_tfrecord-*.gz`` (GZIP
    contract tf.Examples) and ``output_dir/quarantine/{quarantine,counts}.json``.
    ``beam_args`` are Beam pipeline options; without ``--runner`` the pipeline
    runs in-process on :data:`DEFAULT_LOCAL_RUNNER`.

    Returns the counts: ``train``, ``eval``, ``total``, ``quarantined``,
    ``no_eyes_fallback``, ``by_dataset`` ({dataset: {train, eval}}),
    ``by_reason``, ``by_method``, ``subjects`` ({train, eval}), ``labels``
    ({dataset: examples with an emotion / AUs / landmarks}), ``folds``
    ({dataset: {fold: {examples, subjects, emotions}}}, empty without k-fold),
    ``split``, plus ``examples_dir`` and ``quarantine_path``.

    Raises:
      EmptySourceError: a source has no usable sample.
      EmptySplitError: train or eval ends up empty.
    """
    spec = DataSpec.load(spec)
    examples_uri = os.path.join(output_dir, "examples")
    report_dir = os.path.join(output_dir, "quarantine")
    args = list(beam_args or [])
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args.append(f"--runner={DEFAULT_LOCAL_RUNNER}")
    pipeline = beam.Pipeline(options=PipelineOptions(args))
    build_pipeline(pipeline, spec, examples_uri, report_dir)
    result = pipeline.run()
    result.wait_until_finish()
    _log_metrics(result)
    counts = summarize(spec, report_dir)
    _log_counts(counts)
    check_splits(spec, counts)
    counts["examples_dir"] = examples_uri
    counts["quarantine_path"] = os.path.join(report_dir, QUARANTINE_FILE)
    return counts


# ----------------------------------------------------------------------------- TFX executor
def _property_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in text)


def record_counts(examples, quarantine_artifact, counts: Dict[str, Any]) -> None:
    """Counts as custom properties: ``num_train``, ``num_eval``, ``num_quarantined``,
    ``num_no_eyes_fallback``, ``num_<dataset>_<split>``, ``num_subjects_<split>``
    and the whole dict as JSON in ``counts``."""
    props = {"num_train": counts["train"], "num_eval": counts["eval"],
             "num_quarantined": counts["quarantined"],
             "num_no_eyes_fallback": counts["no_eyes_fallback"]}
    for split in SPLIT_NAMES:
        props[f"num_subjects_{split}"] = counts["subjects"][split]
    for ds, per in counts["by_dataset"].items():
        for split, n in per.items():
            props[_property_name(f"num_{ds}_{split}")] = n
    for artifact in (examples, quarantine_artifact):
        if artifact is None:
            continue
        for k, v in props.items():
            artifact.set_int_custom_property(k, int(v))
        artifact.set_string_custom_property("counts", json.dumps(counts, sort_keys=True))
    if quarantine_artifact is not None:
        for reason, n in counts["by_reason"].items():
            quarantine_artifact.set_int_custom_property(_property_name(f"num_{reason}"), int(n))


class Executor(base_beam_executor.BaseBeamExecutor):
    """TFX executor of FaceIngestion: builds :func:`build_pipeline` in the Beam
    pipeline TFX configures (``beam_pipeline_args``), then marks the Examples
    artifact like ExampleGen does (split names, tf.Example payload, GZIP
    TFRecords, span / version) and records the counts."""

    def Do(self, input_dict, output_dict, exec_properties):  # noqa: N802 - TFX API
        self._log_startup(input_dict, output_dict, exec_properties)
        spec = DataSpec.load(exec_properties["data_spec"])
        examples = artifact_utils.get_single_instance(output_dict["examples"])
        report = artifact_utils.get_single_instance(output_dict["quarantine"])
        examples.split_names = artifact_utils.encode_split_names(list(SPLIT_NAMES))

        log.info("ingestion: %d source(s) %s, detector %s, image_size %d, split %s",
                 len(spec.sources), [s.name for s in spec.sources], spec.detector,
                 spec.image_size, spec.split.describe())
        with self._make_beam_pipeline() as pipeline:
            build_pipeline(pipeline, spec, examples.uri, report.uri)

        counts = summarize(spec, report.uri)
        _log_counts(counts)
        record_counts(examples, report, counts)
        check_splits(spec, counts)

        examples_utils.set_payload_format(examples, example_gen_pb2.FORMAT_TF_EXAMPLE)
        examples_utils.set_file_format(examples, "tfrecords_gzip")
        examples.span = int(exec_properties.get("span") or 0)
        examples.version = int(exec_properties.get("version") or 0)
        examples.set_string_custom_property("data_spec", spec.to_json())
