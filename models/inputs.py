"""The one input pipeline: examples -> batches of model-input dicts.

Two kinds of *source* produce the same per-example model-input dicts
(``models/preprocessing.py``):

* :func:`transformed_source` — TF Transform's output, read through TFX's
  ``DataAccessor`` with the transformed schema (the Trainer, ``fermtl
  benchmark``);
* :func:`raw_source` — contract examples (in-memory ``FaceSample`` lists or
  contract TFRecords), decoded by the same ``preprocessing.to_model_inputs``
  that Transform runs (tests, benchmark scripts).

:func:`batches` turns either into training or evaluation batches: an optional
example filter (a benchmark fold), an in-memory cache of the decoded examples,
a full shuffle, same-face grouping, batching, augmentation and prefetch.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence

import tensorflow as tf
from tfx_bsl.public import tfxio

from components import contract
from models import preprocessing

#: Examples decoded per parse call before they are split into single examples.
PARSE_BATCH = 256
#: Largest shuffle buffer (examples); below it a training stream is shuffled whole.
MAX_SHUFFLE = 100_000
#: Model-input keys that are scalars per example.
SCALAR_KEYS = ("emotion", "dataset_id", "subject_id", "sequence_id", "fold")

Keep = Optional[Callable[[dict], tf.Tensor]]


#: What :func:`group_by_face` keeps together: ``"sequence"`` (the capture
#: sequence when known, else the subject) or ``"subject"``.
GROUP_KEYS = ("sequence", "subject")


def face_key(subject_id: tf.Tensor, sequence_id: tf.Tensor) -> tf.Tensor:
    """Grouping key of an example: its sequence when known, else its subject, else -1."""
    return tf.where(sequence_id >= 0, sequence_id, subject_id)


def group_key_fn(group_key: str) -> Callable:
    """The example -> key function of ``group_key`` (one of :data:`GROUP_KEYS`)."""
    if group_key == "sequence":
        return lambda e: face_key(e["subject_id"], e["sequence_id"])
    if group_key == "subject":
        return lambda e: e["subject_id"]
    raise ValueError(f"group_key must be one of {GROUP_KEYS}, got {group_key!r}")


def group_by_face(examples: tf.data.Dataset, key_fn: Callable, group_size: int) -> tf.data.Dataset:
    """Reorder a stream of single examples into runs of ``group_size`` examples
    of the same face (:func:`face_key`), so that batches cut from it hold
    pairs for methods that pair samples inside a batch (FERSNet's ``L_rec``).

    Runs are emitted as they fill, so a shuffled stream stays shuffled. Examples
    without a key (-1) form runs among themselves (no pairs; nothing dropped);
    an incomplete run waits for the next pass over a repeated stream, or is
    emitted at the end of a finite one.
    """
    if group_size <= 1:
        return examples
    return examples.group_by_window(
        key_func=lambda r: tf.cast(key_fn(r), tf.int64),
        reduce_func=lambda _, window: window.batch(group_size),
        window_size=group_size).unbatch()


def _squeeze_scalars(batch: dict) -> dict:
    """Scalars come back as ``[B, 1]`` from TFT's fixed-length specs; the
    model-input contract is ``[B]``."""
    return {k: (tf.reshape(v, [-1]) if k in SCALAR_KEYS and v.shape.rank == 2 else v)
            for k, v in batch.items()}


# --------------------------------------------------------------------------- #
# sources: unbatched model-input dicts
# --------------------------------------------------------------------------- #
def transformed_source(file_patterns: Sequence[str], tft_output, data_accessor,
                       keep: Keep = None) -> tf.data.Dataset:
    """Single model-input examples from Transform's output files.

    ``data_accessor``: the Trainer's ``fn_args.data_accessor`` (or one made by
    :func:`pipeline.artifacts.data_accessor` outside the Trainer); it parses the
    records with ``tft_output``'s transformed schema. ``keep``: optional
    predicate on an example (e.g. a benchmark fold). Order is the files'
    (deterministic); :func:`batches` shuffles.
    """
    if isinstance(file_patterns, str):
        file_patterns = [file_patterns]
    ds = data_accessor.tf_dataset_factory(
        list(file_patterns),
        tfxio.TensorFlowDatasetOptions(batch_size=PARSE_BATCH, shuffle=False, num_epochs=1),
        tft_output.transformed_metadata.schema)
    shapes = {k: f.shape for k, f in tft_output.transformed_feature_spec().items()
              if k not in SCALAR_KEYS and getattr(f, "shape", None)}
    ds = ds.map(_squeeze_scalars).unbatch().map(
        lambda e: {k: (tf.ensure_shape(v, shapes[k]) if k in shapes else v)
                   for k, v in e.items()})
    return ds.filter(keep) if keep is not None else ds


def raw_source(records: tf.data.Dataset, image_size: int, datasets: Sequence[str] = (),
               keep: Keep = None) -> tf.data.Dataset:
    """Single model-input examples from serialized contract ``tf.Example``\\ s,
    decoded as Transform does (``preprocessing.to_model_inputs``; ``datasets``
    is the vocabulary behind ``dataset_id``)."""
    spec = contract.parse_spec()
    ds = records.batch(PARSE_BATCH).map(
        lambda s: preprocessing.to_model_inputs(tf.io.parse_example(s, spec), image_size,
                                                datasets),
        num_parallel_calls=tf.data.AUTOTUNE).unbatch()
    return ds.filter(keep) if keep is not None else ds


def samples_records(samples: Iterable[contract.FaceSample]) -> tf.data.Dataset:
    """Serialized contract examples of in-memory samples."""
    serialized = [s.serialize() for s in samples]
    if not serialized:
        raise ValueError("no samples")
    return tf.data.Dataset.from_tensor_slices(serialized)


def file_records(files: Sequence[str], compression: Optional[str] = None) -> tf.data.Dataset:
    """Serialized examples of TFRecord ``files`` (``compression`` ``"GZIP"`` or None)."""
    return tf.data.TFRecordDataset(list(files), compression_type=compression or "")


# --------------------------------------------------------------------------- #
# batches
# --------------------------------------------------------------------------- #
def count(examples: tf.data.Dataset) -> int:
    """Number of elements of a finite dataset (one pass)."""
    return int(examples.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))


def batches(examples: tf.data.Dataset, batch_size: int, training: bool = False,
            seed: int = 0, repeat: bool = False, augment: Optional[Callable] = None,
            group_size: int = 0, cache: bool = True,
            shuffle_buffer: int = MAX_SHUFFLE, group_key: str = "sequence") -> tf.data.Dataset:
    """Batches of a source's examples.

    ``cache`` keeps the decoded examples in memory after the first pass, so
    later epochs cost no parsing. ``training`` shuffles (buffer
    ``shuffle_buffer``, i.e. the whole set below :data:`MAX_SHUFFLE`, with
    ``seed``), puts runs of ``group_size`` examples of the same ``group_key``
    together when > 1 (:func:`group_by_face`), drops the last partial batch and applies
    ``augment`` (a batch-dict -> batch-dict function).
    """
    ds = examples.cache() if cache else examples
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if training:
        ds = group_by_face(ds, group_key_fn(group_key), group_size)
    ds = ds.batch(batch_size, drop_remainder=training)
    if training and augment is not None:
        # Sequential, so that stateful random ops draw in order: a seeded fit is
        # reproducible (prefetch still overlaps it with the training step).
        ds = ds.map(augment)
    return ds.prefetch(tf.data.AUTOTUNE)


def dataset_from_samples(samples: Iterable[contract.FaceSample], image_size: int,
                         batch_size: int = 32, datasets: Sequence[str] = (),
                         training: bool = False, seed: int = 0,
                         augment: Optional[Callable] = None,
                         repeat: bool = False, group_size: int = 0) -> tf.data.Dataset:
    """:func:`batches` of in-memory samples (tests, benchmark scripts)."""
    return batches(raw_source(samples_records(samples), image_size, datasets), batch_size,
                   training=training, seed=seed, repeat=repeat, augment=augment,
                   group_size=group_size)


def dataset_from_files(files, image_size: int, batch_size: int = 32,
                       datasets: Sequence[str] = (), training: bool = False,
                       compression: Optional[str] = None, seed: int = 0,
                       augment: Optional[Callable] = None, repeat: bool = False,
                       group_size: int = 0) -> tf.data.Dataset:
    """:func:`batches` of contract TFRecord ``files`` (``compression`` ``"GZIP"``
    for TFX outputs)."""
    if isinstance(files, str):
        files = [files]
    return batches(raw_source(file_records(files, compression), image_size, datasets),
                   batch_size, training=training, seed=seed, repeat=repeat, augment=augment,
                   group_size=group_size)
