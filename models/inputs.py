"""``tf.data`` pipelines from contract examples to model-input dicts.

Used outside TFX (tests, benchmarks, ``fermtl benchmark``); inside TFX the
Transform graph produces the same dicts (see ``models/preprocessing.py``).
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence

import tensorflow as tf

from components import contract
from models import preprocessing


def face_key(subject_id: tf.Tensor, sequence_id: tf.Tensor) -> tf.Tensor:
    """Grouping key of a record: its sequence when known, else its subject, else -1."""
    return tf.where(sequence_id >= 0, sequence_id, subject_id)


def _raw_face_key(serialized: tf.Tensor) -> tf.Tensor:
    spec = contract.parse_spec()
    parsed = tf.io.parse_single_example(serialized, {k: spec[k] for k in ("subject", "sequence")})
    return face_key(preprocessing.subject_id(parsed["subject"]),
                    preprocessing.sequence_id(parsed["subject"], parsed["sequence"]))


def group_by_face(records: tf.data.Dataset, key_fn: Callable, group_size: int) -> tf.data.Dataset:
    """Reorder a stream of single records into runs of ``group_size`` records
    of the same face (:func:`face_key`), so that batches cut from it hold
    pairs for methods that pair samples inside a batch (FERSNet's ``L_rec``).

    Runs are emitted as they fill, so a shuffled stream stays shuffled. Records
    without a key (-1) form runs among themselves (no pairs; nothing dropped);
    an incomplete run waits for the next pass over a repeated stream, or is
    emitted at the end of a finite one.
    """
    if group_size <= 1:
        return records
    return records.group_by_window(
        key_func=lambda r: tf.cast(key_fn(r), tf.int64),
        reduce_func=lambda _, window: window.batch(group_size),
        window_size=group_size).unbatch()


def _pipeline(serialized: tf.data.Dataset, image_size: int, batch_size: int,
              datasets: Sequence[str], training: bool, shuffle_buffer: int, seed: int,
              augment: Optional[Callable], repeat: bool, group_size: int = 0) -> tf.data.Dataset:
    ds = serialized
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if training:
        ds = group_by_face(ds, _raw_face_key, group_size)
    spec = contract.parse_spec()
    ds = ds.batch(batch_size, drop_remainder=training)
    ds = ds.map(lambda s: preprocessing.to_model_inputs(
        tf.io.parse_example(s, spec), image_size, datasets),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
    if training and augment is not None:
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def dataset_from_files(files, image_size: int, batch_size: int = 32,
                       datasets: Sequence[str] = (), training: bool = False,
                       compression: Optional[str] = None, shuffle_buffer: int = 2048,
                       seed: int = 0, augment: Optional[Callable] = None,
                       repeat: bool = False, group_size: int = 0) -> tf.data.Dataset:
    """Batches of model inputs from contract TFRecord ``files`` (``compression``
    ``"GZIP"`` for TFX outputs). ``training`` shuffles, groups runs of
    ``group_size`` same-face records when > 1 (:func:`group_by_face`), drops
    the last partial batch and applies ``augment`` (a batch-dict -> batch-dict
    function)."""
    if isinstance(files, str):
        files = [files]
    raw = tf.data.TFRecordDataset(list(files), compression_type=compression or "")
    return _pipeline(raw, image_size, batch_size, datasets, training, shuffle_buffer, seed,
                     augment, repeat, group_size)


def dataset_from_samples(samples: Iterable[contract.FaceSample], image_size: int,
                         batch_size: int = 32, datasets: Sequence[str] = (),
                         training: bool = False, seed: int = 0,
                         augment: Optional[Callable] = None,
                         repeat: bool = False, group_size: int = 0) -> tf.data.Dataset:
    """Same as :func:`dataset_from_files` for in-memory samples (tests, benchmarks)."""
    serialized = [s.serialize() for s in samples]
    if not serialized:
        raise ValueError("dataset_from_samples: no samples")
    raw = tf.data.Dataset.from_tensor_slices(serialized)
    return _pipeline(raw, image_size, batch_size, datasets, training, len(serialized), seed,
                     augment, repeat, group_size)
