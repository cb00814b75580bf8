"""`fermtl benchmark`: every method under one evaluation protocol, one table.

Steps (:func:`run_benchmark`):

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

3. **Runs.** Each (method, fold) is fitted by the training core
   (``models.training.fit``, as the TFX Trainer does) into
   ``OUT/runs/<method>/<fold>/``, resumable (Keras ``BackupAndRestore``). A
   finished fold whose ``result.json`` (there, or in the committed results
   folder) has the same settings and method-code fingerprints is reused; other
   fingerprints rerun it (``benchmarks/resume.py``). ``minutes`` sets a per-run CPU
   budget: a short calibration measures the method's training images/s and
   the epoch count is chosen to fit, so learning-rate schedules complete; a
   wall-clock guard stops a run that overshoots by a quarter. The score is
   ``models.training.evaluate`` (the accuracy the Evaluator's TFMA reports).
4. **Outputs.** Per run: ``result.json``, ``predictions.npz`` and figures
   (``benchmarks/run_figures.py``). Per benchmark: ``results.md`` /
   ``results.csv`` (``benchmarks/tables.py``), accuracy bars. With a results
   folder, each fold's ``result.json``, ``predictions.csv`` and confusion
   matrix are also written there as it finishes (to commit; no weights).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tfx import v1 as tfx

from components import contract
from components.ingestion import DataSpec
from components.ingestion import executor as ingestion_executor
from models import inputs, training
from models.metrics import emotion_metrics
from models.registry import get_method
from models.trainer_module import dataset_vocabulary
from pipeline import artifacts, figures
from pipeline.config import DEFAULT_BEAM_ARGS
from pipeline.pipeline import data_pipeline
from benchmarks import resume, run_figures
from benchmarks.ablation_table import fold_results
from benchmarks.tables import (BenchmarkError, git_commit, hardware, method_of,
                               resolve_methods, summarize, write_table)

log = logging.getLogger("fermtl.benchmark")

PROTOCOLS = ("holdout", "kfold", "kfold_val", "cross")
#: The protocols whose folds are FaceIngestion's ``fold`` (``split.kfold``).
KFOLD_PROTOCOLS = ("kfold", "kfold_val")
#: ``train_split`` / ``test_split`` of a cross fold: ``all`` = both splits.
CROSS_SPLITS = ("all", "train", "eval")
#: ``training.evaluate`` keys a result row keeps when present: SJMT's AU scores
#: (per AU and their means), trace-norm's landmark NME.
ROW_METRICS = ("au_mean_f1", "au_mean_accuracy", "au_accuracy", "au_f1", "landmark_nme",
               "landmark_nme_pupils", "num_landmark_examples")
#: Features kept per run for the t-SNE plot.
MAX_FEATURES = 2000


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


def _is_in(key: str, values: Sequence[int]):
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
    in_scored = _is_in("emotion", [contract.EMOTIONS.index(c) for c in scored])
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
    if not any(f.sizes["test_labelled"] for f in folds):
        raise BenchmarkError(f"{protocol}: no fold has an emotion-labelled test example")
    return folds


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
    folded = _is_in("dataset_id", [data.datasets.index(d) for d in fold_datasets])
    others = [d for d in data.datasets if d not in fold_datasets]

    def within(keep):
        return lambda e: tf.logical_and(folded(e), keep(e))

    for fold in folds:
        fold.train_keep, fold.test_keep = within(fold.train_keep), within(fold.test_keep)
        if fold.val_keep is not None:
            fold.val_keep = within(fold.val_keep)
        if others:
            fold.train_also = (("train",), lambda e: tf.logical_not(folded(e)))
            fold.side_tests = {f"{d}.eval": (("eval",), _is_in("dataset_id",
                                                             [data.datasets.index(d)]))
                               for d in others}


def _cross_fold(data: PreparedData, train_datasets: Sequence[str],
                test_datasets: Sequence[str], train_split: str, test_split: str) -> Fold:
    """The cross fold: named ``A-to-B``, a side restricted to one split getting
    ``.<split>`` (``fer2013.train-to-ckplus48``); its test side holds only the
    classes both sides label (:func:`cross_classes`)."""
    train_splits, test_splits = _split_names(train_split, "train"), _split_names(test_split,
                                                                                 "test")
    train_keep = _is_in("dataset_id", [data.datasets.index(d) for d in train_datasets])
    test_keep = _is_in("dataset_id", [data.datasets.index(d) for d in test_datasets])
    classes = cross_classes(data.examples(train_splits, train_keep),
                            data.examples(test_splits, test_keep), train_datasets, test_datasets)
    name = "-to-".join("+".join(names) + ("" if split == "all" else f".{split}")
                       for names, split in ((train_datasets, train_split),
                                            (test_datasets, test_split)))
    return Fold(name, train_splits, test_splits, train_keep=train_keep,
                test_keep=_scored_only(test_keep, classes["scored"]), classes=classes)


def shared_class_scores(arrays: Mapping[str, np.ndarray],
                        scored: Sequence[str]) -> Dict[str, float]:
    """``accuracy_shared_classes`` / ``balanced_accuracy_shared_classes``: the
    argmax over the ``scored`` classes only (``collect_predictions`` arrays)."""
    ids = [contract.EMOTIONS.index(c) for c in scored]
    prob = np.full_like(arrays["probabilities"], -np.inf)
    prob[:, ids] = arrays["probabilities"][:, ids]
    m = emotion_metrics(arrays["emotion"], prob)
    return {"accuracy_shared_classes": m["accuracy"],
            "balanced_accuracy_shared_classes": m["balanced_accuracy"]}


# --------------------------------------------------------------------------- #
# one run
# --------------------------------------------------------------------------- #
def calibrate_epochs(method_name: str, cfg: Dict[str, Any], train: tf.data.Dataset,
                     n_train: int, minutes: float, seed: int = 0, steps: int = 12,
                     max_epochs: Optional[int] = None) -> Dict[str, Any]:
    """Epochs that fit ``minutes`` of training: a throwaway model trains
    ``steps`` steps with the core, images/s is measured after the first
    (compiling) step."""
    batch = int(cfg.get("batch_size", 32))
    clock = training.TimeBudget(1e9, batch)
    training.fit(method_name, dict(cfg), train.take(batch * steps * 2),
                 plan=training.Plan(epochs=1, steps_per_epoch=steps, seed=seed,
                                    callbacks=[clock], post_fit=False))
    ips = clock.images_per_second
    epochs = max(1, int(minutes * 60.0 * ips / max(n_train, 1)))
    if max_epochs:
        epochs = min(epochs, int(max_epochs))
    return {"images_per_second": ips, "epochs": epochs}


class _Clock(keras.callbacks.Callback):
    """Cumulative training seconds of a run across resumes (``clock.json``)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.before = 0.0
        if os.path.exists(path):
            with open(path) as f:
                self.before = float(json.load(f)["seconds"])
        self.t0 = None

    def on_train_begin(self, logs=None):
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.save()

    def save(self) -> float:
        total = self.before + (time.perf_counter() - self.t0 if self.t0 else 0.0)
        with open(self.path, "w") as f:
            json.dump({"seconds": total}, f)
        return total


def _features(outputs: Mapping[str, np.ndarray]) -> Optional[np.ndarray]:
    for key in ("embedding", "features", "logits"):
        if key in outputs:
            return outputs[key].reshape(len(outputs[key]), -1)
    return None


def collect_predictions(method, model, cfg, examples: tf.data.Dataset,
                        max_features: int = MAX_FEATURES, seed: int = 0,
                        max_faces: int = 64) -> Dict[str, np.ndarray]:
    """Arrays of the inference model over labelled examples for figures:
    ``emotion`` (truth), ``probabilities``, ``aus`` (when predicted),
    ``dataset_id``, ``features`` (embedding, else logits) of at most
    ``max_features`` rows drawn at random (``feature_index``: their rows), so a
    test set stored class by class still shows every class, and the first
    ``max_faces`` images (``faces``)."""
    cols: Dict[str, List[np.ndarray]] = {}
    batches = list(training.predict(method, model, cfg, examples))
    n = sum(len(b["emotion"]) for b, _ in batches)
    picked = np.zeros(n, bool)
    picked[np.random.default_rng(seed).permutation(n)[:max_features]] = True
    start = 0
    for batch, out in batches:
        rows = np.arange(start, start + len(batch["emotion"]))
        start = rows[-1] + 1
        cols.setdefault("emotion", []).append(batch["emotion"])
        cols.setdefault("dataset_id", []).append(batch["dataset_id"])
        cols.setdefault("probabilities", []).append(out["probabilities"])
        if start - len(rows) < max_faces:
            cols.setdefault("faces", []).append(batch["image"][:max_faces - rows[0]])
            cols.setdefault("face_emotion", []).append(batch["emotion"][:max_faces - rows[0]])
        feats = _features(out)
        if feats is not None:
            cols.setdefault("features", []).append(feats[picked[rows]])
            cols.setdefault("feature_index", []).append(rows[picked[rows]])
        if "aus" in out:
            cols.setdefault("aus", []).append(out["aus"])
    return {k: np.concatenate(v) for k, v in cols.items()}


def run_one(method_name: str, fold: Fold, data: PreparedData, run_dir: str,
            preset: str = "small", overrides: Optional[Mapping[str, Any]] = None,
            epochs: Optional[int] = None, minutes: Optional[float] = None, seed: int = 0,
            figures_on: bool = True, provenance: Optional[Mapping[str, str]] = None,
            redo_figures: bool = False, results_dir: Optional[str] = None,
            run_name: Optional[str] = None) -> Dict[str, Any]:
    """Fit, evaluate and plot one method on one fold; returns its result row.

    ``run_name``: a variant's name (default the method's): the committed
    folder is ``results_dir/<run_name>/<fold>`` and the row's ``run``.

    ``epochs``: the epoch count (default: the preset's, or calibrated from
    ``minutes`` when given). ``results_dir``: the committed results folder;
    the finished fold's copy goes to ``results_dir/<run_name>/<fold>``
    (:func:`benchmarks.resume.publish`).

    A ``result.json`` in ``run_dir`` or in the committed folder made with the
    same settings and method code (:func:`benchmarks.resume.fingerprint`) is
    reused (``redo_figures``: the model is rebuilt from ``run_dir``'s weights
    and the figures redrawn); one with other fingerprints is rerun, and a
    stopped run of the same fingerprints resumes from ``run_dir/checkpoints``.
    """
    overrides = dict(overrides or {})
    run_name = run_name or method_name
    fp = resume.fingerprint(method_name, resume.run_settings(
        method_name, fold, data, preset, overrides, epochs, minutes, seed))
    result_path = os.path.join(run_dir, "result.json")
    committed = os.path.join(results_dir, run_name, fold.name) if results_dir else None
    found_row, found, why = resume.reusable(
        [result_path] + ([os.path.join(committed, "result.json")] if committed else []), fp)
    if found_row is not None:
        log.info("%s/%s: finished earlier with the same settings and method code, reusing %s",
                 run_name, fold.name, found)
        return dict(_reuse(found_row, found == result_path, fold, data, run_dir, committed,
                           redo_figures), run=run_name)
    if why:
        log.info("%s/%s: rerunning, %s: %s", run_name, fold.name, found, why)
    resume.start_run(run_dir, fp)
    row = dict(train_fold(method_name, fold, data, run_dir, preset, overrides, epochs, minutes,
                          seed, figures_on),
               run=run_name, **dict(provenance or {}),
               **{k: fp[k] for k in ("settings_fingerprint", "code_fingerprint", "code_digest",
                                     "settings", "code_files")})
    with open(result_path, "w") as f:
        json.dump(row, f, indent=2, default=float)
    if committed:
        resume.publish(row, run_dir, committed, data.datasets)
    log.info("%s/%s: accuracy %.4f (balanced %.4f), %.0f s", run_name, fold.name,
             row["accuracy"], row["balanced_accuracy"], row["train_seconds"])
    return row


def train_fold(method_name: str, fold: Fold, data: PreparedData, run_dir: str, preset: str,
               overrides: Mapping[str, Any], epochs: Optional[int], minutes: Optional[float],
               seed: int, figures_on: bool) -> Dict[str, Any]:
    """The work of :func:`run_one`: fit (resuming from ``run_dir/checkpoints``),
    save the weights, config and ``predictions.npz``, evaluate, draw the figures;
    returns the row's numbers."""
    method = get_method(method_name)
    cfg = method.config(preset, **overrides)
    cfg["datasets"] = list(data.datasets)
    train_examples, test_examples = fold.train(data), fold.test(data)
    val_examples = fold.validation(data)
    plan_path = os.path.join(run_dir, "plan.json")
    if os.path.exists(plan_path):
        with open(plan_path) as f:
            plan = json.load(f)
    else:
        plan = {"epochs": int(epochs or cfg.get("epochs", 10)), "calibrated_images_per_s": None}
        if minutes and not epochs:
            cal = calibrate_epochs(method_name, cfg, train_examples, fold.sizes["train"],
                                   minutes, seed)
            plan = {"epochs": cal["epochs"], "calibrated_images_per_s": cal["images_per_second"]}
        plan["minutes"] = minutes
        with open(plan_path, "w") as f:
            json.dump(plan, f)
    log.info("%s/%s (%s): %d epochs%s — %s", method_name, fold.name, preset, plan["epochs"],
             f" to fit {minutes:g} min" if minutes else "", fold.describe())

    clock = _Clock(os.path.join(run_dir, "clock.json"))
    callbacks: List[keras.callbacks.Callback] = [clock]
    budget = None
    if minutes:
        budget = training.TimeBudget(max(minutes * 60.0 * 1.25 - clock.before, 1.0),
                                     int(cfg.get("batch_size", 32)))
        callbacks.append(budget)
    fitted = training.fit(method, cfg, train_examples, val_examples, plan=training.Plan(
        epochs=plan["epochs"], seed=seed, backup_dir=os.path.join(run_dir, "checkpoints"),
        callbacks=callbacks, verbose=2,
        select_best=None if val_examples is None else os.path.join(run_dir, "selection")))
    model = fitted.model
    train_s = clock.save() if fitted.history.history else clock.before
    model.save_weights(os.path.join(run_dir, "final.weights.h5"))
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, default=str)

    metrics = training.evaluate(method, model, cfg, test_examples)
    arrays = collect_predictions(method, model, cfg, test_examples)
    np.savez_compressed(os.path.join(run_dir, "predictions.npz"), **arrays)
    row: Dict[str, Any] = {
        "method": method_name, "preset": preset, "protocol": fold.protocol, "fold": fold.name,
        "overrides": dict(overrides), "image_size": int(cfg["image_size"]),
        "params": int(model.count_params()), "epochs": plan["epochs"],
        "stopped_by_budget": bool(budget is not None and model.stop_training),
        "train_seconds": round(float(train_s), 1),
        "train_images": fold.sizes["train"], "test_images": fold.sizes["test"],
        "images_per_second": (None if budget is None or np.isnan(budget.images_per_second)
                              else round(float(budget.images_per_second), 1)),
        **{k: metrics[k] for k in ("accuracy", "balanced_accuracy", "per_class_recall",
                                   "confusion_matrix", "num_examples")},
        **{k: metrics[k] for k in ROW_METRICS if metrics.get(k) is not None},
    }
    if fold.classes:
        row["cross_classes"] = dict(fold.classes)
        row.update(shared_class_scores(arrays, fold.classes["scored"]))
    if fitted.selection is not None:
        sel = fitted.selection
        row.update(validation_group=fold.validation_group, validation_images=fold.sizes["val"],
                   selected_epoch=sel["epoch"], validation_accuracy=sel["accuracy"],
                   validation_scores=[round(sel["scores"][e], 4)
                                      for e in sorted(sel["scores"], key=int)])
        log.info("%s/%s: epoch %s of %d selected on validation group %d (accuracy %s)",
                 method_name, fold.name, sel["epoch"], len(sel["scores"]),
                 fold.validation_group, sel["accuracy"])
    figures_of = {}
    for name in fold.side_tests:
        side_examples = fold.side(data, name)
        scores = training.evaluate(method, model, cfg, side_examples)
        row.setdefault("side_scores", {})[name] = {
            k: scores[k] for k in ("accuracy", "balanced_accuracy", "per_class_recall",
                                   "num_examples") + ROW_METRICS if scores.get(k) is not None}
        log.info("%s/%s: side test %s accuracy %.4f", method_name, fold.name, name,
                 scores["accuracy"])
        if figures_on and "aus" in arrays:
            figures_of.update(run_figures.draw_side_aus(
                method_name, fold.name, name,
                collect_predictions(method, model, cfg, side_examples), run_dir))
    if figures_on:
        row["figures"] = dict(run_figures.draw(method_name, method, model, cfg, fold.name,
                                               arrays, run_dir), **figures_of)
    return row


def _reuse(row: Dict[str, Any], in_run_dir: bool, fold: Fold, data: PreparedData,
           run_dir: str, committed: Optional[str], redo_figures: bool) -> Dict[str, Any]:
    """A finished fold's row: figures redrawn when asked (needs ``run_dir``'s
    weights of that run), the committed copy refreshed from ``run_dir``."""
    if redo_figures and in_run_dir:
        row = redo_run_figures(row, fold, data, run_dir)
    elif redo_figures:
        log.warning("%s/%s: the result is the committed one; %s has no weights of it, "
                    "figures not redrawn", row["method"], fold.name, run_dir)
    if not in_run_dir:
        return resume.committed_row(row, committed)
    if committed:
        resume.publish(row, run_dir, committed, data.datasets)
    return row


def load_run_model(run_dir: str, datasets: Optional[Sequence[str]] = None):
    """``(method, model, cfg)`` of a finished run, rebuilt from its
    ``config.json`` (or ``result.json``'s preset + overrides, with ``datasets``)
    and ``final.weights.h5`` — e.g. to export or time it later."""
    cfg_path = os.path.join(run_dir, "config.json")
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            saved = json.load(f)
        method = get_method(saved["method"])
        cfg = method.config(saved["preset"])
        cfg.update(saved)
    else:
        with open(os.path.join(run_dir, "result.json")) as f:
            row = json.load(f)
        if not datasets:
            raise BenchmarkError(f"{run_dir}: no config.json; pass the run's training datasets")
        method = get_method(row["method"])
        cfg = method.config(row["preset"], **row.get("overrides", {}))
        cfg["datasets"] = list(datasets)
        # Only the weights matter here; a schedule needs a length to be built.
        cfg.setdefault("schedule_steps", 1)
    model = method.build(cfg)
    training.restore(model, os.path.join(run_dir, "final.weights.h5"))
    return method, model, cfg


def redo_run_figures(row: Dict[str, Any], fold: Fold, data: PreparedData,
                     run_dir: str) -> Dict[str, Any]:
    """Redraw a finished run's figures from its saved weights (the numbers stay)."""
    method, model, cfg = load_run_model(run_dir, data.datasets)
    arrays = collect_predictions(method, model, cfg, fold.test(data))
    np.savez_compressed(os.path.join(run_dir, "predictions.npz"), **arrays)
    row = dict(row, figures=run_figures.draw(row["method"], method, model, cfg, fold.name,
                                             arrays, run_dir))
    with open(os.path.join(run_dir, "result.json"), "w") as f:
        json.dump(row, f, indent=2, default=float)
    return row


# --------------------------------------------------------------------------- #
# the whole benchmark
# --------------------------------------------------------------------------- #
def run_benchmark(spec, out_dir: str, methods="all", protocol: str = "holdout", k: int = 10,
                  train_datasets: Sequence[str] = (), test_datasets: Sequence[str] = (),
                  train_split: str = "all", test_split: str = "all",
                  fold_datasets: Sequence[str] = (),
                  method_settings: Optional[Mapping[str, Mapping[str, Any]]] = None,
                  preset: str = "small", epochs: Optional[int] = None,
                  minutes: Optional[float] = None, seed: int = 0, folds_limit: Optional[int] = None,
                  beam_args: Optional[Sequence[str]] = None, figures_on: bool = True,
                  seed_reported: Optional[Mapping[str, str]] = None,
                  redo_figures: bool = False,
                  results_dir: Optional[str] = None) -> Dict[str, Any]:
    """Run the benchmark; returns ``{"rows", "table", "figures"}``.

    ``method_settings``: run name -> ``{"method", "preset", "overrides", "epochs",
    "minutes"}`` overriding the common ``preset`` / ``epochs`` / ``minutes``
    (a run name other than a method's is a variant: ``method`` names what it
    trains; ``methods`` may name it).
    ``folds_limit`` runs only the first N folds (quick looks at k-fold).
    ``train_split`` / ``test_split``: cross only, ``all`` / ``train`` / ``eval``
    (:func:`make_folds`). ``fold_datasets``: kfold / kfold_val only, the
    datasets folded (:func:`fold_only`).
    ``results_dir``: the committed results folder (e.g. ``docs/results/...``):
    every fold's ``result.json``, ``predictions.csv`` and confusion matrix go
    to ``results_dir/<method>/<fold>/`` as it finishes, the table of every
    fold committed there (this run's and earlier ones') to
    ``results_dir/results.md``; a fold found there with the same settings and
    method code is not rerun.
    """
    if protocol not in PROTOCOLS:
        raise BenchmarkError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")
    names = resolve_methods(methods, runs=list(method_settings or {}))
    spec = benchmark_spec(DataSpec.load(spec), protocol, k)
    settings = {n: dict((method_settings or {}).get(n, {})) for n in names}
    method_names = {n: method_of(n, settings[n]) for n in names}
    sizes = {n: int(get_method(method_names[n]).config(
        settings[n].get("preset", preset), **(settings[n].get("overrides") or {}))["image_size"])
        for n in names}
    prepared: Dict[int, PreparedData] = {}
    folds_of: Dict[int, List[Fold]] = {}
    for size in sorted(set(sizes.values())):
        log.info("data: %d source(s) at %d px", len(spec.sources), size)
        prepared[size] = prepare_data(spec, os.path.join(out_dir, "data"), size, beam_args)
        folds_of[size] = make_folds(prepared[size], protocol, k, train_datasets, test_datasets,
                                    train_split=train_split, test_split=test_split,
                                    fold_datasets=fold_datasets)
        if folds_limit:
            folds_of[size] = folds_of[size][:int(folds_limit)]
    first = folds_of[min(folds_of)]
    counts = prepared[min(prepared)].counts
    log.info("%s: %d fold(s): %s", protocol, len(first), "; ".join(f.describe() for f in first))
    provenance = {"hardware": hardware(), "commit": git_commit(), "protocol": protocol}
    rows = []
    total = len(names) * len(first)
    for i, name in enumerate(names):
        setting, size = settings[name], sizes[name]
        for j, fold in enumerate(folds_of[size]):
            log.info("[%d/%d] %s on %s", i * len(first) + j + 1, total, name, fold.name)
            rows.append(run_one(
                method_names[name], fold, prepared[size],
                os.path.join(out_dir, "runs", name, fold.name),
                preset=setting.get("preset", preset), overrides=setting.get("overrides", {}),
                epochs=setting.get("epochs", epochs), minutes=setting.get("minutes", minutes),
                seed=seed, figures_on=figures_on, provenance=provenance,
                redo_figures=redo_figures and figures_on, results_dir=results_dir,
                run_name=name))
    notes = [f"Protocol: {protocol} ({'; '.join(f.describe() for f in first)}).",
             f"Data: {counts.get('total', '?')} faces after ingestion, "
             f"{counts.get('quarantined', 0)} inputs quarantined."]
    table = write_table(rows, out_dir, title=f"fermtl benchmark — {protocol}",
                        seed_reported=seed_reported, notes=notes)
    if results_dir:
        # the committed table holds every committed fold, not only this run's
        committed = [r for folds in fold_results(results_dir).values() for r in folds.values()]
        write_table(committed, results_dir, title=f"fermtl benchmark — {protocol}",
                    seed_reported=seed_reported, notes=notes)
    extra = {}
    if figures_on:
        extra["accuracy"] = figures.accuracy_bars(summarize(rows),
                                                  os.path.join(out_dir, "accuracy.png"))
    with open(os.path.join(out_dir, "rows.json"), "w") as f:
        json.dump(rows, f, indent=2, default=float)
    return {"rows": rows, "table": table, "figures": extra}
