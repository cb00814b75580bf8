"""Pre-train on one dataset, fine-tune on the folds of another (issue 17: FER2013 ->
CK+ folds, the analogue of the trace-norm paper's LSEMSW -> CK+ transfer, Sec. 5.3).

A run's ``pretrain`` setting (``fermtl benchmark --settings``)::

    methods:
      baseline: {preset: small, minutes: 1.5, pretrain: {datasets: [fer2013], minutes: 10}}

* **the pre-training** fits the method on the ``train`` split of ``datasets`` (the
  same config as the fine-tuning, so every weight has a home) with its own budget
  (``minutes`` or ``epochs``), and is scored on their ``eval`` split (FER2013
  PublicTest). It is one run per benchmark run name, shared by every fold, in
  ``OUT/pretrain/<run>/``, resumable and reused like a fold
  (:func:`benchmarks.protocols.run_one`; not committed: its weights are the point);
* **each fold** starts from its weights (``models.training.Plan.initial_weights``,
  a fresh optimizer) and trains on the fold's training examples less the
  pre-training datasets (:func:`finetune_fold`): with ``--fold-datasets ckplus48``
  on the FER2013 + CK+ spec, the CK+ training folds only. The fold's settings
  fingerprint holds the pre-training's settings, so changing them reruns it;
  its ``result.json`` has the pre-training's own score under ``pretrain``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional

import tensorflow as tf

from benchmarks.folds import Fold, PreparedData, is_in, measure_fold
from benchmarks.tables import BenchmarkError

#: Keys of a ``pretrain`` setting.
PRETRAIN_KEYS = ("datasets", "minutes", "epochs")
#: The pre-training's fold name (its folder under ``OUT/pretrain/<run>/``).
PRETRAIN_FOLD = "pretrain"


def check_setting(where: str, setting: Any) -> Dict[str, Any]:
    """A ``pretrain`` setting, validated: ``datasets`` (a non-empty list of names)
    and one of ``minutes`` / ``epochs``. Raises :class:`BenchmarkError` naming
    ``where`` (the settings file's key) otherwise."""
    if not isinstance(setting, Mapping):
        raise BenchmarkError(f"{where}: a mapping with {', '.join(PRETRAIN_KEYS)}, "
                             f"got {setting!r}")
    bad = sorted(set(setting) - set(PRETRAIN_KEYS))
    if bad:
        raise BenchmarkError(f"{where}: unknown keys {bad} (known: {', '.join(PRETRAIN_KEYS)})")
    datasets = setting.get("datasets")
    if (not isinstance(datasets, list) or not datasets
            or not all(isinstance(d, str) and d for d in datasets)):
        raise BenchmarkError(f"{where}.datasets: a non-empty list of dataset names, "
                             f"got {datasets!r}")
    budget = [k for k in ("minutes", "epochs") if setting.get(k) is not None]
    if len(budget) != 1:
        raise BenchmarkError(f"{where}: give the pre-training one budget, minutes or epochs "
                             f"(got {budget or 'neither'})")
    value = setting[budget[0]]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise BenchmarkError(f"{where}.{budget[0]}: a positive number, got {value!r}")
    return {"datasets": list(datasets), "minutes": setting.get("minutes"),
            "epochs": setting.get("epochs")}


def _dataset_ids(data: PreparedData, datasets: List[str]) -> List[int]:
    missing = sorted(set(datasets) - set(data.datasets))
    if missing:
        raise BenchmarkError(f"pretrain: datasets {missing} are not in the data "
                             f"{sorted(data.datasets)}")
    return [data.datasets.index(d) for d in datasets]


def pretrain_fold(data: PreparedData, datasets: List[str]) -> Fold:
    """The pre-training's fold: ``datasets``' ``train`` split, scored on their
    ``eval`` split."""
    keep = is_in("dataset_id", _dataset_ids(data, datasets))
    fold = Fold(PRETRAIN_FOLD, ("train",), ("eval",), train_keep=keep, test_keep=keep)
    measure_fold(data, fold, "pretrain")
    return fold


def finetune_fold(fold: Fold, data: PreparedData, datasets: List[str]) -> Fold:
    """``fold`` with the pre-training ``datasets`` left out of its training
    examples (its test, validation and side tests unchanged), measured anew."""
    pretrained = is_in("dataset_id", _dataset_ids(data, datasets))

    def without(keep):
        return lambda e: tf.logical_and(tf.logical_not(pretrained(e)),
                                        True if keep is None else keep(e))

    also = fold.train_also
    tuned = dataclasses.replace(
        fold, train_keep=without(fold.train_keep),
        train_also=None if also is None else (also[0], without(also[1])),
        sizes={}, side_tests=dict(fold.side_tests))
    try:
        measure_fold(data, tuned, fold.protocol)
    except BenchmarkError as exc:
        raise BenchmarkError(f"pretrain on {datasets}: {exc} (nothing left to fine-tune "
                             "on once the pre-training datasets are out)") from None
    return tuned


@dataclasses.dataclass
class Pretrain:
    """A run's pre-training: its setting, its fold and its run folder."""

    datasets: List[str]
    minutes: Optional[float]
    epochs: Optional[int]
    fold: Fold
    run_dir: str

    def settings(self) -> Dict[str, Any]:
        """What goes into each fine-tuned fold's settings fingerprint."""
        return {"datasets": list(self.datasets),
                "minutes": None if self.minutes is None else float(self.minutes),
                "epochs": None if self.epochs is None else int(self.epochs),
                "fold_members": {k: self.fold.sizes[k] for k in sorted(self.fold.sizes)}}


def summary(row: Mapping[str, Any], datasets: List[str]) -> Dict[str, Any]:
    """The pre-training's row as a fine-tuned fold's ``result.json`` keeps it."""
    return {"datasets": list(datasets), "test": "+".join(datasets) + ".eval",
            **{k: row[k] for k in ("accuracy", "balanced_accuracy", "epochs", "train_seconds",
                                   "train_images", "test_images", "settings_fingerprint")
               if k in row}}
