"""The training core: the one place where a method is fitted and scored.

The TFX Trainer (``models/trainer_module.py``), ``fermtl benchmark``
(``benchmarks/protocols.py``), the benchmark scripts and the tests all call
:func:`fit` and :func:`evaluate`:

* data: sources of model-input examples (``models/inputs.py``: Transform's
  output through TFX's ``DataAccessor``, or contract examples decoded as
  Transform does), batched by ``inputs.batches`` (cache, full shuffle,
  same-face grouping, ``method.augment``, prefetch);
* :func:`distribution_strategy`: ``MirroredStrategy`` over the GPUs (or over
  logical CPUs with ``FERMTL_CPU_REPLICAS``);
* callbacks: the method's own, Keras ``BackupAndRestore`` (resume an
  interrupted fit, optimizer state and learning-rate schedule included),
  ``TensorBoard``, any extra ones; with ``Plan.select_best``,
  :class:`SelectBest` (Keras ``ModelCheckpoint(save_best_only=True)`` on the
  validation accuracy of every epoch): the fit returns the weights of the
  best validation epoch, not of the last one;
* the final metric: :func:`evaluate` -> ``models.metrics.emotion_metrics``
  (the accuracy the Evaluator's TFMA reports too) and ``au_metrics``.

:func:`train` is the same core for in-memory samples or contract TFRecords.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

from components import contract
from models import inputs, metrics, registry
from models.base import Method

CPU_REPLICAS_ENV = "FERMTL_CPU_REPLICAS"
#: BackupAndRestore's files inside a backup directory.
BACKUP_WEIGHTS = "latest.weights.h5"
BACKUP_STATE = "training_metadata.json"
#: The log key :class:`SelectBest` adds to every epoch: :func:`evaluate`'s
#: accuracy on the validation examples.
SELECTION_METRIC = "val_score_accuracy"
#: :class:`SelectBest`'s record inside its directory.
SELECTION_FILE = "selection.json"
#: The name of ``models.loss_model.LabelSetMask``'s variable.
LABEL_SET = "label_set"


def distribution_strategy() -> tf.distribute.Strategy:
    """``MirroredStrategy`` over all GPUs when there are any, else the default.

    With the environment variable ``FERMTL_CPU_REPLICAS=N`` (N > 1) and no GPU:
    ``MirroredStrategy`` over N logical CPU devices, so that the multi-replica
    code paths (loss scaling, cross-replica variable updates) can be tested on a
    CPU-only machine. The split must happen before TensorFlow initialises its
    devices, i.e. before any other TF call of the process; it raises otherwise.
    """
    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    n = int(os.environ.get(CPU_REPLICAS_ENV) or 0)
    if n > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        if len(tf.config.get_logical_device_configuration(cpu) or []) != n:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices[:n])
    return tf.distribute.get_strategy()


# --------------------------------------------------------------------------- #
# callbacks
# --------------------------------------------------------------------------- #
class TimeBudget(keras.callbacks.Callback):
    """Stops training after ``seconds`` of wall time and counts steps, so
    ``images_per_second`` is measured after the first (compiling) step."""

    def __init__(self, seconds: float, batch_size: int):
        super().__init__()
        self.seconds = seconds
        self.batch_size = batch_size
        self.steps = 0
        self.start = self.first_done = self.last_done = None

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        now = self.last_done = time.perf_counter()
        if self.first_done is None:
            self.first_done = now
        if now - self.start >= self.seconds:
            self.model.stop_training = True

    @property
    def images_per_second(self) -> float:
        """Training images per second between the end of the first step and
        the end of the last one (epoch-end callbacks included)."""
        if self.first_done is None or self.steps < 2:
            return float("nan")
        return (self.steps - 1) * self.batch_size / max(self.last_done - self.first_done, 1e-9)


class SelectBest(keras.callbacks.ModelCheckpoint):
    """Epoch selection on validation examples with Keras' own
    ``ModelCheckpoint(save_best_only=True)``: after every epoch ``score(model)``
    (:func:`evaluate`'s accuracy on the validation examples) is logged as
    :data:`SELECTION_METRIC` (so ``History``, TensorBoard and the progress bar
    see it), and the weights of an epoch that beats every earlier one go to
    ``directory/best-<epoch>.weights.h5``; ties keep the earlier epoch.

    ``directory/selection.json`` (:data:`SELECTION_FILE`, written after the
    weights) records every epoch's score and the selected epoch (1-based) and
    names its weights, so a fit resumed by ``BackupAndRestore`` keeps the best
    of the epochs before the interruption (``initial_value_threshold``) and
    :func:`fit` loads the recorded weights at the end."""

    def __init__(self, directory: str, score):
        self.directory = directory
        self.score = score
        self.record = read_selection(directory) or {"scores": {}, "epoch": None,
                                                    "accuracy": None, "weights": None}
        super().__init__(os.path.join(directory, "best-{epoch:04d}.weights.h5"),
                         monitor=SELECTION_METRIC, mode="max", save_best_only=True,
                         save_weights_only=True,
                         initial_value_threshold=self.record["accuracy"])

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        logs[SELECTION_METRIC] = float(self.score(self.model))
        before = self.best
        super().on_epoch_end(epoch, logs)
        self.record["scores"][str(epoch + 1)] = logs[SELECTION_METRIC]
        if self.best != before:
            self.record.update(epoch=epoch + 1, accuracy=float(self.best),
                               weights=os.path.basename(self.filepath.format(epoch=epoch + 1)))
        tmp = os.path.join(self.directory, SELECTION_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(self.record, f, indent=2)
        os.replace(tmp, os.path.join(self.directory, SELECTION_FILE))
        for name in os.listdir(self.directory):            # earlier bests, interrupted saves
            if name.startswith("best-") and name != self.record["weights"]:
                os.remove(os.path.join(self.directory, name))


def read_selection(directory: Optional[str]) -> Optional[Dict[str, Any]]:
    """:class:`SelectBest`'s record in ``directory`` (``None`` when none):
    ``scores`` (epoch -> validation accuracy), ``epoch`` (the selected one,
    1-based), ``accuracy`` (its score) and ``weights`` (its file)."""
    path = os.path.join(directory or "", SELECTION_FILE)
    if not directory or not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def restore(model: keras.Model, weights_path: str) -> None:
    """Load a ``.weights.h5`` into ``model``, optimizer state included (Keras 3
    files hold the optimizer's variables; they load only into a built
    optimizer, so build it first)."""
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(weights_path)


def load_pretrained(model: keras.Model, weights_path: str) -> None:
    """Load a pre-trained fit's ``.weights.h5`` into a newly built ``model`` of the
    same method and config, its optimizer's state left out: the fit that
    follows (a fine-tuning) starts a fresh optimizer and schedule. The label
    sets (``LabelSetMask``) start empty again, so the fine-tuned model answers
    over the classes its own training data labels (FER2013 -> CK+: no neutral).
    A file of another architecture raises (Keras' shape check)."""
    optimizers = {id(o): o for o in [getattr(model, "optimizer", None), *vars(model).values()]
                  if isinstance(o, keras.optimizers.Optimizer)}    # FERSNet has two
    model.load_weights(weights_path, objects_to_skip=list(optimizers.values()))
    for variable in model.weights:
        if variable.name == LABEL_SET:
            variable.assign(np.zeros(variable.shape, variable.dtype))


def epochs_done(backup_dir: Optional[str]) -> int:
    """Epochs a ``BackupAndRestore`` directory has recorded (0 when none)."""
    path = os.path.join(backup_dir or "", BACKUP_STATE)
    if not backup_dir or not tf.io.gfile.exists(path):
        return 0
    with tf.io.gfile.GFile(path) as f:
        return int(json.load(f)["epoch"])


# --------------------------------------------------------------------------- #
# fit / predict / evaluate
# --------------------------------------------------------------------------- #
@dataclasses.dataclass
class Plan:
    """How to fit: ``epochs`` (the total; a resumed fit runs the rest),
    ``batch_size`` (global; default the method config's), ``steps_per_epoch``
    (default one pass over the training examples), ``seed`` (Python, NumPy, TF
    and the shuffle), ``deterministic`` (TF op determinism: bit-identical
    reruns, slower), ``backup_dir`` (Keras ``BackupAndRestore``, kept after the
    fit so that a later call with more epochs continues), ``log_dir``
    (TensorBoard), ``validation_freq``, ``post_fit`` (run the method's
    ``post_fit`` hook, e.g. FERSNet's FES fine-tuning), ``verbose``,
    ``callbacks`` (added to the method's own), ``select_best`` (a directory:
    score the eval examples after every epoch and return the weights of the
    best one, :class:`SelectBest`; needs eval examples), ``initial_weights``
    (a ``.weights.h5`` of the same method and config, e.g. a pre-training fit:
    loaded into the built model before the fit, :func:`load_pretrained`)."""

    epochs: int = 10
    batch_size: Optional[int] = None
    steps_per_epoch: Optional[int] = None
    seed: int = 0
    deterministic: bool = False
    backup_dir: Optional[str] = None
    log_dir: Optional[str] = None
    validation_freq: int = 1
    post_fit: bool = True
    verbose: Union[int, str] = 0
    callbacks: Sequence[keras.callbacks.Callback] = ()
    select_best: Optional[str] = None
    initial_weights: Optional[str] = None


@dataclasses.dataclass
class Fitted:
    method: Method
    model: keras.Model
    cfg: Dict[str, Any]
    history: keras.callbacks.History
    steps_per_epoch: int
    num_train: int
    post_fit_history: Dict[str, List[float]] = dataclasses.field(default_factory=dict)
    #: With ``Plan.select_best``: :func:`read_selection`'s record of the fit.
    selection: Optional[Dict[str, Any]] = None


def fit(method: Union[str, Method], cfg: Dict[str, Any], train_examples: tf.data.Dataset,
        eval_examples: Optional[tf.data.Dataset] = None, plan: Optional[Plan] = None) -> Fitted:
    """Build ``method`` from ``cfg`` (with ``cfg["datasets"]`` set) and fit it.

    ``train_examples`` / ``eval_examples``: sources of single model-input
    examples (``models.inputs``). Sets ``cfg["schedule_steps"]`` (the planned
    optimizer steps, for learning-rate schedules) before building. With
    ``plan.select_best`` the model returned (and given to ``post_fit``) has
    the weights of the epoch with the best accuracy on ``eval_examples``.
    """
    method = registry.get_method(method) if isinstance(method, str) else method
    plan = plan or Plan()
    keras.utils.set_random_seed(int(plan.seed))
    if plan.deterministic:
        tf.config.experimental.enable_op_determinism()
    batch_size = int(plan.batch_size or cfg.get("batch_size", 32))
    train_examples = train_examples.cache()
    n_train = inputs.count(train_examples)
    steps = plan.steps_per_epoch or n_train // batch_size
    if steps < 1:
        raise ValueError(f"{n_train} training examples < batch_size {batch_size}")
    cfg["schedule_steps"] = int(plan.epochs) * int(steps)

    train_ds = inputs.batches(train_examples, batch_size, training=True, seed=plan.seed,
                              repeat=True, augment=lambda b: method.augment(b, cfg),
                              group_size=int(cfg.get("batch_group_size", 0)),
                              group_key=cfg.get("pair_within", "sequence"), cache=False,
                              shuffle_buffer=min(max(n_train, 1), inputs.MAX_SHUFFLE))
    eval_ds, eval_steps = None, None
    if eval_examples is not None:
        # With its step count given, Keras runs no extra, empty validation step at the
        # end of the data (that step adds a 0 to every logged mean: val_accuracy 6/7 on
        # a set the model gets all right).
        eval_examples = eval_examples.cache()      # the count's pass fills the cache
        eval_steps = max(1, math.ceil(inputs.count(eval_examples) / batch_size))
        eval_ds = inputs.batches(eval_examples, batch_size, cache=False)

    strategy = distribution_strategy()
    with strategy.scope():
        model = method.build(cfg)
        if plan.initial_weights:
            load_pretrained(model, plan.initial_weights)

    cbs: List[keras.callbacks.Callback] = list(method.callbacks(cfg, steps))
    if plan.select_best:      # before the backup: an epoch it records has been scored
        if eval_examples is None:
            raise ValueError("Plan.select_best needs eval_examples to select on")
        os.makedirs(plan.select_best, exist_ok=True)
        held_out = eval_examples                  # cached above
        cbs.append(SelectBest(plan.select_best, lambda m: evaluate(
            method, m, cfg, held_out, batch_size)["accuracy"]))
    if plan.backup_dir:
        cbs.append(keras.callbacks.BackupAndRestore(plan.backup_dir, delete_checkpoint=False))
    if plan.log_dir:
        cbs.append(keras.callbacks.TensorBoard(plan.log_dir, update_freq="epoch",
                                               profile_batch=0))
    cbs += list(plan.callbacks)
    history = model.fit(train_ds, epochs=int(plan.epochs), steps_per_epoch=steps,
                        validation_data=eval_ds, validation_steps=eval_steps,
                        validation_freq=plan.validation_freq,
                        callbacks=cbs, verbose=plan.verbose)
    fitted = Fitted(method, model, cfg, history, steps, n_train)
    if plan.select_best:
        fitted.selection = read_selection(plan.select_best)
        if fitted.selection and fitted.selection["weights"]:
            restore(model, os.path.join(plan.select_best, fitted.selection["weights"]))
    if plan.post_fit and history.history and hasattr(method, "post_fit"):
        post = method.post_fit(model, cfg, train_data=inputs.batches(train_examples, batch_size,
                                                                     cache=False))
        if post is not None:
            fitted.post_fit_history = dict(post.history)
    return fitted


def predict(method: Method, model: keras.Model, cfg: Dict[str, Any],
            examples: "Data", batch_size: int = 64):
    """Yield ``(batch, outputs)`` (numpy dicts) of the inference model over
    examples (:data:`Data`)."""
    examples = examples_of(examples, cfg)
    infer = method.inference_model(model, cfg)
    for batch in inputs.batches(examples, batch_size, cache=False):
        out = infer(batch["image"], training=False)
        yield ({k: np.asarray(v) for k, v in batch.items()},
               {k: np.asarray(v) for k, v in out.items()})


def evaluate(method: Method, model: keras.Model, cfg: Dict[str, Any],
             examples: "Data", batch_size: int = 64) -> Dict[str, Any]:
    """Metrics of the inference model on labelled examples:
    ``models.metrics.emotion_metrics`` (accuracy, balanced accuracy, per-class
    recall/precision, confusion matrix, count) plus, when the method predicts
    AUs and the examples have AU labels, ``models.metrics.au_metrics``, and when
    it predicts landmarks and the examples have them, ``landmark_nme`` /
    ``landmark_nme_pupils`` (``models.metrics.landmark_nme``, % of the
    inter-ocular / inter-pupil distance) and ``num_landmark_examples``."""
    y, prob, aus, aus_true, aus_mask = [], [], [], [], []
    lmk, lmk_true, lmk_mask = [], [], []
    for batch, out in predict(method, model, cfg, examples, batch_size):
        y.append(batch["emotion"])
        prob.append(out["probabilities"])
        if "aus" in out:
            aus.append(out["aus"])
            aus_true.append(batch["aus"])
            aus_mask.append(batch["aus_mask"])
        if "landmarks" in out:
            lmk.append(out["landmarks"])
            lmk_true.append(batch["landmarks"])
            lmk_mask.append(batch["landmarks_mask"])
    if not y:
        raise ValueError("evaluate: no examples")
    result = metrics.emotion_metrics(np.concatenate(y), np.concatenate(prob))
    if aus:
        au = metrics.au_metrics(np.concatenate(aus_true), np.concatenate(aus_mask),
                                np.concatenate(aus))
        if au:
            result.update(au)
    if lmk:
        true, pred, mask = (np.concatenate(v) for v in (lmk_true, lmk, lmk_mask))
        nme = metrics.landmark_nme(true, pred, mask)
        if nme is not None:
            result.update(landmark_nme=nme,
                          landmark_nme_pupils=metrics.landmark_nme(true, pred, mask, "pupils"),
                          num_landmark_examples=int((mask.reshape(-1) > 0).sum()))
    return result


# --------------------------------------------------------------------------- #
# the core on in-memory samples or contract TFRecords
# --------------------------------------------------------------------------- #
#: Samples, contract TFRecord path(s) / globs / directories, or a dataset of
#: single model-input examples (already decoded).
Data = Union[Sequence[contract.FaceSample], str, Sequence[str], tf.data.Dataset]


def _is_samples(data) -> bool:
    return (isinstance(data, (list, tuple)) and len(data) > 0
            and isinstance(data[0], contract.FaceSample))


def resolve_files(data) -> List[str]:
    """TFRecord paths from a path, a glob, a directory or a list of those."""
    items = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    files: List[str] = []
    for item in items:
        item = str(item)
        if tf.io.gfile.isdir(item):
            files += sorted(p for p in tf.io.gfile.glob(os.path.join(item, "*"))
                            if not tf.io.gfile.isdir(p))
        elif any(c in item for c in "*?["):
            files += sorted(tf.io.gfile.glob(item))
        else:
            files.append(item)
    if not files:
        raise ValueError(f"no TFRecord files in {data!r}")
    return files


def _records(data: Data, compression: Optional[str]) -> tf.data.Dataset:
    if _is_samples(data):
        return inputs.samples_records(data)
    files = resolve_files(data)
    if compression is None:
        compression = "GZIP" if all(f.endswith(".gz") for f in files) else ""
    return inputs.file_records(files, compression)


def dataset_names(data: Data, compression: Optional[str] = None) -> Tuple[str, ...]:
    """Sorted dataset names found in samples or contract TFRecord files."""
    if _is_samples(data):
        return tuple(sorted({s.dataset for s in data}))
    if isinstance(data, tf.data.Dataset):
        raise ValueError("a dataset of decoded examples has no dataset names: pass datasets")
    spec = {"dataset": tf.io.FixedLenFeature([], tf.string)}
    names = set()
    for batch in _records(data, compression).batch(1024).map(
            lambda s: tf.io.parse_example(s, spec)["dataset"]):
        names.update(x.decode() for x in batch.numpy())
    return tuple(sorted(names))


def examples_of(data: Data, cfg: Dict[str, Any],
                compression: Optional[str] = None) -> tf.data.Dataset:
    """Model-input examples of samples or contract TFRecords for ``cfg``
    (its ``image_size`` and ``datasets``); a dataset of examples is returned as is."""
    if isinstance(data, tf.data.Dataset):
        return data
    return inputs.raw_source(_records(data, compression), int(cfg["image_size"]),
                             cfg.get("datasets", ()))


def train(method_name: Union[str, Method], train_data: Data,
          eval_data: Optional[Data] = None, preset: str = "small",
          overrides: Optional[Dict[str, Any]] = None, epochs: int = 10,
          steps_per_epoch: Optional[int] = None, batch_size: Optional[int] = None,
          datasets: Optional[Sequence[str]] = None, log_dir: Optional[str] = None,
          checkpoint_dir: Optional[str] = None, verbose: Union[int, str] = 0,
          callbacks: Iterable[keras.callbacks.Callback] = (), seed: int = 0,
          compression: Optional[str] = None, validation_freq: int = 1,
          post_fit: bool = True):
    """:func:`fit` on :data:`Data` (for TFRecords GZIP is detected from
    ``.gz``, or pass ``compression``); returns ``(method, model, cfg, history)``.

    ``datasets`` fixes the order behind ``dataset_id`` (default: the sorted
    dataset names of the training data; stored in ``cfg["datasets"]``).
    ``checkpoint_dir`` is the ``BackupAndRestore`` directory: a later call
    resumes there (``epochs`` is the total, not the remainder).
    """
    method = registry.get_method(method_name) if isinstance(method_name, str) else method_name
    cfg = method.config(preset, **(overrides or {}))
    if datasets is None:
        datasets = cfg.get("datasets") or dataset_names(train_data, compression)
    cfg["datasets"] = list(datasets)
    fitted = fit(method, cfg, examples_of(train_data, cfg, compression),
                 examples_of(eval_data, cfg, compression) if eval_data is not None else None,
                 Plan(epochs=epochs, batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                      seed=seed, backup_dir=checkpoint_dir, log_dir=log_dir,
                      validation_freq=validation_freq, post_fit=post_fit, verbose=verbose,
                      callbacks=list(callbacks)))
    return fitted.method, fitted.model, fitted.cfg, fitted.history
