"""Data and folds of `fermtl benchmark` (:mod:`benchmarks.protocols` runs them).

1. **Data, once per data spec.** The pipeline's own data components
   (``pipeline.pipeline.data_pipeline``: FaceIngestion -> statistics, schema,
   validation -> Transform) run into ``OUT/data``, cached by ML Metadata: a
   later call with the same spec runs nothing, a method with another input
   size runs Transform alone. With ``kfold`` / ``kfold_val`` the spec gets
   ``split.kfold.k``, so FaceIngestion writes every example's fold
   (subject-disjoint, stratified by emotion); folds are filters on that one
   Transform output, never a re-ingestion.
2. **Folds** (:func:`make_folds`) — the protocol decides train/(validation/)test:

   * ``holdout``: the spec's own split (train -> eval), e.g. FER2013
     Training -> PublicTest;
   * ``kfold``: fold ``i`` tests the examples whose ``fold`` is ``i`` and
     trains on the rest;
   * ``kfold_val``: k-fold with a validation group (DDMTL's CK+ protocol, Sec.
     4.1: 8 groups, 6 train / 1 validation / 1 test): fold ``i`` tests group
     ``i``, validates on group ``(i + 1) % k`` and trains on the other
     ``k - 2``. The validation group selects the epoch: after every epoch the
     core scores it (``models.training.SelectBest``, Keras
     ``ModelCheckpoint(save_best_only=True)`` on ``evaluate``'s accuracy) and
     the run keeps the weights of the best validation epoch, which are the
     ones tested (and saved). The test group is seen by neither training nor
     selection. ``result.json`` records ``validation_group``,
     ``selected_epoch``, ``validation_accuracy`` and every epoch's
     ``validation_scores``;
   * ``fold_datasets`` (kfold / kfold_val, :func:`fold_only`): only these
     datasets are folded; the others train in every fold (their ``train``
     split) and their ``eval`` split is scored beside every fold
     (``side_scores``; SJMT's AU figure on those faces, which have no AU
     labels), e.g. CK+ folds beside FER2013;
   * ``cross``: train on the datasets ``train_datasets``, test on
     ``test_datasets`` (:func:`cross_classes`). ``train_split`` /
     ``test_split`` (``all``, the default: both splits; ``train``; ``eval``)
     restrict a side to one split of the spec, e.g. FER2013 Training only on
     the train side, or its PublicTest (``eval``) on the test side, so
     neither sees the other split. ``all`` is the default because a dataset
     without a split of its own (CK+) has an ``eval`` split that is only its
     fold 0. Only the classes both sides label are scored: the train side's
     label set is the union of its examples' ``emotion_mask`` (the contract's
     per-dataset label sets), and a test example of a class outside it
     (CK+'s contempt, for a FER2013-trained model) is left out of the test
     side, counted per class in the fold's description and in
     ``result.json`` (``cross_classes``); no class in common is an error.
     ``accuracy`` stays the model's own argmax (a FER2013 model that calls a
     CK+ face neutral is wrong); ``accuracy_shared_classes`` takes the argmax
     over the scored classes only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tfx import v1 as tfx

from components import contract
from components.ingestion import DataSpec
from components.ingestion import executor as ingestion_executor
from models import inputs
from models.metrics import emotion_metrics
from models.trainer_module import dataset_vocabulary
from pipeline import artifacts
from pipeline.config import DEFAULT_BEAM_ARGS
from pipeline.pipeline import data_pipeline
from benchmarks.tables import BenchmarkError

PROTOCOLS = ("holdout", "kfold", "kfold_val", "cross")
#: The protocols whose folds are FaceIngestion's ``fold`` (``split.kfold``).
KFOLD_PROTOCOLS = ("kfold", "kfold_val")
#: ``train_split`` / ``test_split`` of a cross fold: ``all`` = both splits.
CROSS_SPLITS = ("all", "train", "eval")


# --------------------------------------------------------------------------- #
# data, once per spec
# --------------------------------------------------------------------------- #
@dataclasses.dataclass
class PreparedData:
    """Transform's output for one input size, read as the Trainer reads it."""

    image_size: int
    tft_output: tft.TFTransformOutput
    accessor: Any
    files: Dict[str, List[str]]          # split -> file patterns
    datasets: List[str]                  # Transform's dataset vocabulary
    counts: Dict[str, Any]               # FaceIngestion's counts (quarantine included)
    spec_json: str = ""                  # the data spec it was made from

    def examples(self, splits: Sequence[str] = ("train", "eval"),
                 keep: Optional[Callable] = None) -> tf.data.Dataset:
        patterns = [p for s in splits for p in self.files[s]]
        return inputs.transformed_source(patterns, self.tft_output, self.accessor, keep)


def benchmark_spec(spec: DataSpec, protocol: str, k: int) -> DataSpec:
    """The spec the benchmark ingests: with ``kfold`` / ``kfold_val``,
    ``split.kfold`` = ``{k}`` (every example gets its fold; the train/eval
    split is left as it is). ``cross`` reads both splits of a folded dataset,
    so it drops the spec's eval fold too (``{k}`` of the spec's k): a cross and
    a k-fold benchmark of the same k on one spec share one ingestion (FER2013 +
    CK+: 36k faces)."""
    raw = json.loads(spec.to_json())
    if protocol in KFOLD_PROTOCOLS:
        raw["split"]["kfold"] = {"k": int(k)}
    elif protocol == "cross" and raw["split"].get("kfold"):
        raw["split"]["kfold"] = {"k": int(raw["split"]["kfold"]["k"])}
    return DataSpec.from_dict(raw)


def prepare_data(spec: DataSpec, data_dir: str, image_size: int,
                 beam_args: Optional[Sequence[str]] = None) -> PreparedData:
    """Run (or reuse) the data pipeline for ``spec`` at ``image_size``."""
    os.makedirs(data_dir, exist_ok=True)
    beam_args = list(beam_args or DEFAULT_BEAM_ARGS)
    tfx.orchestration.LocalDagRunner().run(
        data_pipeline("fermtl-benchmark-data", data_dir, spec, image_size, beam_args))
    metadata = os.path.join(data_dir, "metadata.sqlite")
    transform = artifacts.latest_outputs(metadata, "Transform")
    ingestion = artifacts.latest_outputs(metadata, "FaceIngestion")
    examples = transform["transformed_examples"]
    tft_output = tft.TFTransformOutput(transform["transform_graph"][0].uri)
    counts = ingestion_executor.summarize(spec, ingestion["quarantine"][0].uri)
    return PreparedData(
        image_size=int(image_size), tft_output=tft_output,
        accessor=artifacts.data_accessor(examples),
        files={s: artifacts.split_pattern(examples, s) for s in ("train", "eval")},
        datasets=dataset_vocabulary(tft_output), counts=counts, spec_json=spec.to_json())


# --------------------------------------------------------------------------- #
# folds
# --------------------------------------------------------------------------- #
@dataclasses.dataclass
class Fold:
    """A train/test pair of example selections on :class:`PreparedData`, and
    with ``val_keep`` a validation selection (of ``test_splits``) that picks
    the epoch; ``validation_group``: its k-fold group."""

    name: str
    train_splits: Sequence[str]
    test_splits: Sequence[str]
    train_keep: Optional[Callable] = None
    test_keep: Optional[Callable] = None
    sizes: Dict[str, Any] = dataclasses.field(default_factory=dict)
    protocol: str = ""
    #: cross: the classes each side labels, those scored, the test examples left out
    classes: Dict[str, Any] = dataclasses.field(default_factory=dict)
    val_keep: Optional[Callable] = None
    validation_group: Optional[int] = None
    #: (splits, keep) of examples that train in every fold besides the folded ones
    train_also: Optional[Tuple[Sequence[str], Callable]] = None
    #: name -> (splits, keep): scored in every fold beside the test side
    side_tests: Dict[str, Tuple[Sequence[str], Callable]] = dataclasses.field(
        default_factory=dict)

    def train(self, data: PreparedData) -> tf.data.Dataset:
        examples = data.examples(self.train_splits, self.train_keep)
        if self.train_also is not None:
            examples = examples.concatenate(data.examples(*self.train_also))
        return examples

    def side(self, data: PreparedData, name: str) -> tf.data.Dataset:
        return data.examples(*self.side_tests[name])

    def test(self, data: PreparedData) -> tf.data.Dataset:
        return data.examples(self.test_splits, self.test_keep)

    def validation(self, data: PreparedData) -> Optional[tf.data.Dataset]:
        return None if self.val_keep is None else data.examples(self.test_splits, self.val_keep)

    def describe(self) -> str:
        s = self.sizes
        parts = [("train", "train"), ("validation", "val"), ("test", "test")]
        text = f"{self.name}: " + ", ".join(
            f"{word} {s.get(key, '?')} ({s.get(key + '_subjects', '?')} subjects)"
            for word, key in parts if key != "val" or self.val_keep is not None)
        left = self.classes.get("left_out") or {}
        if left:
            text += (f", {sum(left.values())} test examples left out ("
                     + ", ".join(f"{c} {n}" for c, n in left.items())
                     + ": classes the train side never labels)")
        return text


def _sizes(examples: tf.data.Dataset) -> Dict[str, Any]:
    """Examples, distinct subjects (unknown subjects count one each),
    emotion-labelled examples of a selection, and ``members``: a digest of its
    sorted (dataset, subject, emotion) triples (benchmarks/resume.py)."""
    keys = ("dataset_id", "subject_id", "emotion")
    cols: Dict[str, List[np.ndarray]] = {k: [] for k in keys}
    for b in examples.map(lambda e: {k: e[k] for k in keys}).batch(4096):
        for k in keys:
            cols[k].append(b[k].numpy().astype(np.int64).reshape(-1))
    dataset, sid, emotion = (np.concatenate(cols[k]) if cols[k] else np.zeros(0, np.int64)
                             for k in keys)
    triples = np.stack([dataset, sid, emotion], 1)
    triples = triples[np.lexsort(triples.T[::-1])]
    return {"n": len(sid), "labelled": int((emotion >= 0).sum()),
            "subjects": len(set(sid[sid >= 0].tolist())) + int((sid < 0).sum()),
            "members": hashlib.sha256(triples.tobytes()).hexdigest()[:16]}


def is_in(key: str, values: Sequence[int]):
    ids = tf.constant(list(values), tf.int64)
    return lambda e: tf.reduce_any(tf.equal(tf.cast(e[key], tf.int64), ids))


def _split_names(split: str, side: str) -> tuple:
    """The spec splits a cross side reads: ``all`` -> both."""
    if split not in CROSS_SPLITS:
        raise BenchmarkError(f"cross: {side} split {split!r}; choose from {CROSS_SPLITS}")
    return ("train", "eval") if split == "all" else (split,)


def _label_sets(examples: tf.data.Dataset):
    """``(label set [8] bool, examples per class [8])`` of a selection: the
    union of its examples' ``emotion_mask`` (the classes its datasets label)."""
    labelled = np.zeros(contract.NUM_EMOTIONS, bool)
    counts = np.zeros(contract.NUM_EMOTIONS, np.int64)
    for b in examples.map(lambda e: {"emotion": e["emotion"],
                                     "emotion_mask": e["emotion_mask"]}).batch(4096):
        labelled |= (b["emotion_mask"].numpy() > 0).any(0)
        y = b["emotion"].numpy().astype(np.int64).reshape(-1)
        counts += np.bincount(y[y >= 0], minlength=contract.NUM_EMOTIONS)
    return labelled, counts


def _class_names(mask) -> List[str]:
    return [e for e, m in zip(contract.EMOTIONS, mask) if m]


def cross_classes(train: tf.data.Dataset, test: tf.data.Dataset, train_names: Sequence[str],
                  test_names: Sequence[str]) -> Dict[str, Any]:
    """What a cross fold scores: ``train_label_set`` / ``test_label_set`` (the
    classes each side's datasets label), ``scored`` (both), ``left_out`` (class
    -> test examples of a class the train side never labels) and ``reason``.
    Raises :class:`BenchmarkError` when the two sides share no class."""
    train_set, _ = _label_sets(train)
    test_set, test_counts = _label_sets(test)
    scored = train_set & test_set
    if not scored.any():
        raise BenchmarkError(
            f"cross: the train side ({'+'.join(train_names)}) labels "
            f"{_class_names(train_set)} and the test side ({'+'.join(test_names)}) labels "
            f"{_class_names(test_set)}: no class in common, nothing to score")
    left = {e: int(n) for e, n, t in zip(contract.EMOTIONS, test_counts, train_set)
            if n and not t}
    return {"train_label_set": _class_names(train_set),
            "test_label_set": _class_names(test_set), "scored": _class_names(scored),
            "left_out": left,
            "reason": "test examples of classes the train datasets never label are left out"}


def _scored_only(keep: Callable, scored: Sequence[str]) -> Callable:
    """``keep``, less the labelled examples of a class not in ``scored``."""
    in_scored = is_in("emotion", [contract.EMOTIONS.index(c) for c in scored])
    return lambda e: tf.logical_and(keep(e), tf.logical_or(
        tf.less(tf.cast(e["emotion"], tf.int64), 0), in_scored(e)))


def make_folds(data: PreparedData, protocol: str, k: int = 10,
               train_datasets: Sequence[str] = (),
               test_datasets: Sequence[str] = (), train_split: str = "all",
               test_split: str = "all", fold_datasets: Sequence[str] = ()) -> List[Fold]:
    """The folds of ``protocol`` on prepared data (see the module docstring).

    ``fold_datasets`` (kfold / kfold_val): only these datasets are folded
    (:func:`fold_only`); the others train in every fold and are scored beside.

    Raises :class:`BenchmarkError` when a fold would be empty or a named
    dataset is absent.
    """
    both = ("train", "eval")
    if protocol not in PROTOCOLS:
        raise BenchmarkError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")
    if protocol != "cross" and (train_split, test_split) != ("all", "all"):
        raise BenchmarkError(f"{protocol}: train_split / test_split are for cross only")
    if protocol == "holdout":
        folds = [Fold("holdout", ("train",), ("eval",))]
    elif protocol == "kfold":
        if int(k) < 2:
            raise BenchmarkError(f"kfold needs k >= 2, got {k}")
        folds = [Fold(f"fold{i}", both, both,
                      train_keep=(lambda e, i=i: tf.not_equal(e["fold"], i)),
                      test_keep=(lambda e, i=i: tf.equal(e["fold"], i))) for i in range(int(k))]
    elif protocol == "kfold_val":
        if int(k) < 3:
            raise BenchmarkError(f"kfold_val needs k >= 3 (train, validation, test), got {k}")
        folds = [Fold(f"fold{i}", both, both,
                      train_keep=(lambda e, i=i, v=v: tf.logical_and(
                          tf.not_equal(e["fold"], i), tf.not_equal(e["fold"], v))),
                      test_keep=(lambda e, i=i: tf.equal(e["fold"], i)),
                      val_keep=(lambda e, v=v: tf.equal(e["fold"], v)), validation_group=v)
                 for i, v in ((i, (i + 1) % int(k)) for i in range(int(k)))]
    else:
        folds = []
    if fold_datasets:
        if protocol not in KFOLD_PROTOCOLS:
            raise BenchmarkError(f"{protocol}: fold_datasets is for {KFOLD_PROTOCOLS} only")
        fold_only(data, folds, fold_datasets)
    if protocol == "cross":
        present = data.datasets
        if not train_datasets or not test_datasets:
            raise BenchmarkError("cross needs train_datasets and test_datasets "
                                 f"(datasets in the data: {sorted(present)})")
        missing = sorted((set(train_datasets) | set(test_datasets)) - set(present))
        if missing:
            raise BenchmarkError(f"cross: datasets {missing} are not in the data "
                                 f"{sorted(present)}")
        shared = sorted(set(train_datasets) & set(test_datasets))
        if shared:
            raise BenchmarkError(f"cross: {shared} is both a train and a test dataset")
        folds = [_cross_fold(data, train_datasets, test_datasets, train_split, test_split)]
    for fold in folds:
        measure_fold(data, fold, protocol)
    if not any(f.sizes["test_labelled"] for f in folds):
        raise BenchmarkError(f"{protocol}: no fold has an emotion-labelled test example")
    return folds


def measure_fold(data: PreparedData, fold: Fold, protocol: str) -> None:
    """Set ``fold.protocol`` and ``fold.sizes`` (examples, subjects and members of
    each side, benchmarks/resume.py); raises :class:`BenchmarkError` on an
    empty side or a validation group without an emotion label."""
    sides = {"train": _sizes(fold.train(data)), "test": _sizes(fold.test(data))}
    if fold.val_keep is not None:
        sides["val"] = _sizes(fold.validation(data))
    for name in fold.side_tests:
        sides[f"side:{name}"] = _sizes(fold.side(data, name))
    fold.protocol = protocol
    fold.sizes = {"test_labelled": sides["test"]["labelled"]}
    for side, got in sides.items():
        fold.sizes.update({side: got["n"], f"{side}_subjects": got["subjects"],
                           f"{side}_members": got["members"]})
    empty = [side for side, got in sides.items() if not got["n"]]
    if empty:
        raise BenchmarkError(
            f"{protocol}: {fold.name} has an empty {empty[0]} side"
            + (" - use fewer folds or add subjects" if protocol in KFOLD_PROTOCOLS else ""))
    if "val" in sides and not sides["val"]["labelled"]:
        raise BenchmarkError(f"{protocol}: {fold.name}'s validation group "
                             f"{fold.validation_group} has no emotion-labelled example")


def fold_only(data: PreparedData, folds: Sequence[Fold], fold_datasets: Sequence[str]) -> None:
    """Restrict k folds to ``fold_datasets`` (e.g. CK+ beside FER2013): fold
    ``i`` tests (and validates on) only their examples of group ``i``; every
    other dataset trains in every fold from its ``train`` split and its
    ``eval`` split is a side test, scored in every fold (``<dataset>.eval``,
    ``result.json``'s ``side_scores``). Edits ``folds`` in place."""
    missing = sorted(set(fold_datasets) - set(data.datasets))
    if missing:
        raise BenchmarkError(f"fold_datasets {missing} are not in the data "
                             f"{sorted(data.datasets)}")
    folded = is_in("dataset_id", [data.datasets.index(d) for d in fold_datasets])
    others = [d for d in data.datasets if d not in fold_datasets]

    def within(keep):
        return lambda e: tf.logical_and(folded(e), keep(e))

    for fold in folds:
        fold.train_keep, fold.test_keep = within(fold.train_keep), within(fold.test_keep)
        if fold.val_keep is not None:
            fold.val_keep = within(fold.val_keep)
        if others:
            fold.train_also = (("train",), lambda e: tf.logical_not(folded(e)))
            fold.side_tests = {f"{d}.eval": (("eval",), is_in("dataset_id",
                                                             [data.datasets.index(d)]))
                               for d in others}


def _cross_fold(data: PreparedData, train_datasets: Sequence[str],
                test_datasets: Sequence[str], train_split: str, test_split: str) -> Fold:
    """The cross fold: named ``A-to-B``, a side restricted to one split getting
    ``.<split>`` (``fer2013.train-to-ckplus48``); its test side holds only the
    classes both sides label (:func:`cross_classes`)."""
    train_splits, test_splits = _split_names(train_split, "train"), _split_names(test_split,
                                                                                 "test")
    train_keep = is_in("dataset_id", [data.datasets.index(d) for d in train_datasets])
    test_keep = is_in("dataset_id", [data.datasets.index(d) for d in test_datasets])
    classes = cross_classes(data.examples(train_splits, train_keep),
                            data.examples(test_splits, test_keep), train_datasets, test_datasets)
    name = "-to-".join("+".join(names) + ("" if split == "all" else f".{split}")
                       for names, split in ((train_datasets, train_split),
                                            (test_datasets, test_split)))
    return Fold(name, train_splits, test_splits, train_keep=train_keep,
                test_keep=_scored_only(test_keep, classes["scored"]), classes=classes)


def _allowed_class_scores(arrays: Mapping[str, np.ndarray], allowed: np.ndarray,
                          suffix: str) -> Dict[str, float]:
    """``accuracy_<suffix>`` / ``balanced_accuracy_<suffix>``: the argmax over the
    classes ``allowed`` (``[classes]`` or ``[examples, classes]`` booleans)."""
    prob = np.where(allowed, arrays["probabilities"], -np.inf)
    m = emotion_metrics(arrays["emotion"], prob)
    return {f"accuracy_{suffix}": m["accuracy"],
            f"balanced_accuracy_{suffix}": m["balanced_accuracy"]}


def shared_class_scores(arrays: Mapping[str, np.ndarray],
                        scored: Sequence[str]) -> Dict[str, float]:
    """``accuracy_shared_classes`` / ``balanced_accuracy_shared_classes``: the
    argmax over the ``scored`` classes only (``collect_predictions`` arrays)."""
    return _allowed_class_scores(arrays, contract.label_set_mask(scored) > 0, "shared_classes")


def own_label_scores(arrays: Mapping[str, np.ndarray]) -> Dict[str, float]:
    """``accuracy_own_labels`` / ``balanced_accuracy_own_labels``: each test
    example's argmax over the classes its own dataset labels (its
    ``emotion_mask``), so a model trained with FER2013 cannot call a CK+ face
    neutral, a class CK+ never labels. Empty when every example's dataset labels
    every class (the score would equal ``accuracy``)."""
    allowed = np.asarray(arrays["emotion_mask"]) > 0
    labelled = allowed.any(1)
    if allowed[labelled].all():
        return {}
    return _allowed_class_scores(arrays, allowed, "own_labels")


def add_data_arguments(parser, k: int = 5) -> None:
    """``--data --protocol --k --image-size --out`` of a script that reads a finished
    benchmark's data (``benchmarks/mean_shape_nme.py``, ``landmark_figure.py``)."""
    parser.add_argument("--data", required=True, help="the benchmark's data spec")
    parser.add_argument("--protocol", default="kfold", choices=PROTOCOLS)
    parser.add_argument("--k", type=int, default=k)
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--out", required=True, help="the benchmark's output folder")


def benchmark_folds(args) -> Tuple[PreparedData, List[Fold]]:
    """The prepared data and folds of :func:`add_data_arguments`' arguments (the
    benchmark's data in ``OUT/data``, cached: seconds)."""
    spec = benchmark_spec(DataSpec.load(args.data), args.protocol, args.k)
    data = prepare_data(spec, os.path.join(args.out, "data"), args.image_size)
    return data, make_folds(data, args.protocol, args.k)
