"""``tf.data`` pipelines from contract examples to model-input dicts.

Used outside TFX (tests, benchmarks, ``fermtl benchmark``); inside TFX the
Transform graph produces the same dicts (see ``models/preprocessing.py``).
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence

import tensorflow as tf

from components import contract
from models import preprocessing


def _pipeline(serialized: tf.data.Dataset, image_size: int, batch_size: int,
              datasets: Sequence[str], training: bool, shuffle_buffer: int, seed: int,
              augment: Optional[Callable], repeat: bool) -> tf.data.Dataset:
    ds = serialized
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    spec = contract.feature_spec()
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
                       repeat: bool = False) -> tf.data.Dataset:
    """Batches of model inputs from contract TFRecord ``files`` (``compression``
    ``"GZIP"`` for TFX outputs). ``training`` shuffles, drops the last partial
    batch and applies ``augment`` (a batch-dict -> batch-dict function)."""
    if isinstance(files, str):
        files = [files]
    raw = tf.data.TFRecordDataset(list(files), compression_type=compression or "")
    return _pipeline(raw, image_size, batch_size, datasets, training, shuffle_buffer, seed,
                     augment, repeat)


def dataset_from_samples(samples: Iterable[contract.FaceSample], image_size: int,
                         batch_size: int = 32, datasets: Sequence[str] = (),
                         training: bool = False, seed: int = 0,
                         augment: Optional[Callable] = None,
                         repeat: bool = False) -> tf.data.Dataset:
    """Same as :func:`dataset_from_files` for in-memory samples (tests, benchmarks)."""
    serialized = [s.serialize() for s in samples]
    if not serialized:
        raise ValueError("dataset_from_samples: no samples")
    raw = tf.data.Dataset.from_tensor_slices(serialized)
    return _pipeline(raw, image_size, batch_size, datasets, training, len(serialized), seed,
                     augment, repeat)
