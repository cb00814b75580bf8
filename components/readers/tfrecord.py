"""Reader for contract TFRecords (``fermtl data import`` output, an earlier
ingestion's examples, ``fermtl data synth``): a file, a folder (every file
under it) or a glob. Compression ``auto`` is GZIP for ``*.gz`` files.

The samples keep the dataset names recorded in the files unless ``dataset`` is
given, which renames them (:func:`recorded_dataset_names` lists the recorded
ones).
"""

from __future__ import annotations

import os
from typing import Iterator, List, Optional

from components import contract
from components.quarantine import Quarantine
from components.readers import _common

COMPRESSIONS = ("auto", "GZIP", "ZLIB")


def _tf():
    # TensorFlow is imported on first use only: importing components.readers
    # (the CLI's --help, the spec checks) must stay fast.
    import tensorflow as tf

    return tf


def tfrecord_files(path: str) -> List[str]:
    """The files of a TFRecord source: the file, every non-hidden file under a
    folder, or a glob's matches (sorted)."""
    tf = _tf()
    if tf.io.gfile.isdir(path):
        files = []
        for root, _, names in tf.io.gfile.walk(path):
            files += [os.path.join(root, n) for n in names if not n.startswith(".")]
        return sorted(files)
    if any(ch in path for ch in "*?["):
        return sorted(tf.io.gfile.glob(path))
    return [path] if tf.io.gfile.exists(path) else []


def _compression(path: str, compression: Optional[str]) -> str:
    if compression in (None, "", "auto"):
        return "GZIP" if path.endswith(".gz") else ""
    if compression not in COMPRESSIONS:
        raise ValueError(f"tfrecord: compression one of {COMPRESSIONS}, got {compression!r}")
    return compression


def _records(path: str, quarantine: Quarantine,
             compression: Optional[str]) -> Iterator[contract.FaceSample]:
    tf = _tf()
    files = tfrecord_files(path)
    if not files:
        raise _common.EmptySourceError(f"tfrecord: no file at {path!r}")
    for f in files:
        i = 0
        try:
            for raw in tf.data.TFRecordDataset(f, compression_type=_compression(f, compression)):
                where = f"{f}:{i}"
                i += 1
                try:
                    sample = contract.FaceSample.from_example(raw.numpy())
                except Exception as err:  # noqa: BLE001 - any malformed record
                    quarantine.add(where, "bad_record", f"{type(err).__name__}: {err}")
                    continue
                yield sample
        except tf.errors.OpError as err:
            quarantine.add(f"{f}:{i}", "corrupt_tfrecord",
                           f"{type(err).__name__}: {err.message.splitlines()[0]}")


def read_tfrecord(path, dataset: Optional[str], quarantine: Quarantine, *,
                  compression: Optional[str] = None,
                  progress: bool = False) -> Iterator[contract.FaceSample]:
    """Contract samples from TFRecord file(s).

    Rejected input goes to ``quarantine``: ``bad_record`` (a record that is no
    contract example), ``corrupt_tfrecord`` (a file that stops parsing there),
    ``image_too_small`` (a face under :data:`_common.MIN_FACE_SIZE` pixels).

    Raises:
      EmptySourceError: no file, or no usable record.
    """
    def samples():
        for sample in _common.progress(_records(str(path), quarantine, compression), progress,
                                       desc="records", unit="record"):
            width, height = _common.encoded_size(sample.image)
            if _common.too_small(width, height, sample.uid, quarantine):
                continue
            if dataset:
                sample.dataset = dataset
            yield sample

    return _common.non_empty(samples(), "tfrecord", path, quarantine)


def recorded_dataset_names(path: str, compression: Optional[str] = None) -> List[str]:
    """Dataset names recorded in contract TFRecords, in order of appearance."""
    names: List[str] = []
    for s in _records(str(path), Quarantine(), compression):
        if s.dataset not in names:
            names.append(s.dataset)
    return names
