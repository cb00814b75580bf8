"""Training infrastructure shared by the methods.

* :class:`LossModel` — a ``keras.Model`` wrapping a functional ``net``
  (``image -> dict``) whose ``fit`` consumes batches of model-input dicts
  (``models/preprocessing.py``) and whose loss reads the masks in the batch.
  Subclasses implement :meth:`LossModel.compute_batch_loss`.
* :class:`LabelSetMask` — remembers the union of the emotion label sets seen
  in training and restricts inference outputs to it (an emotion no training
  dataset labels never gets a gradient, so its score is meaningless).
* :func:`train` / :func:`evaluate` — the loop used by the TFX Trainer module,
  the CLI benchmark and ``benchmarks/bench_methods.py``: data from
  ``models.inputs`` (with ``method.augment``), ``MirroredStrategy`` when GPUs
  exist, the method's callbacks, TensorBoard, weight checkpoints with resume.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import keras
import tensorflow as tf

from components import contract
from models import inputs as model_inputs
from models.base import Method


# --------------------------------------------------------------------------- #
# Model building blocks
# --------------------------------------------------------------------------- #
def replica_scaled(loss: tf.Tensor) -> tf.Tensor:
    """``loss / num_replicas``: optimizers sum gradients across replicas."""
    n = tf.distribute.get_strategy().num_replicas_in_sync
    return loss / tf.cast(n, loss.dtype) if n > 1 else loss


def masked_mean(values: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """``sum(values * weights) / max(sum(weights), 1)`` (0 when nothing is labelled)."""
    weights = tf.cast(weights, values.dtype)
    return tf.reduce_sum(values * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)


@keras.saving.register_keras_serializable(package="fermtl")
class LabelSetMask(keras.layers.Layer):
    """Restricts emotion outputs ``[B, n]`` to the labels seen in training.

    Holds a non-trainable 0/1 vector ``label_set`` (saved with the weights),
    grown by :meth:`update` with each training batch's ``emotion_mask``. In
    ``call``, outputs outside the set become ``fill`` (``-1e9`` for logits
    before a softmax, ``0`` for probabilities); while the set is still empty
    everything passes through.
    """

    def __init__(self, num_labels: int = contract.NUM_EMOTIONS, fill: float = -1e9, **kwargs):
        super().__init__(**kwargs)
        self.num_labels = int(num_labels)
        self.fill = float(fill)

    def build(self, input_shape):
        self.label_set = self.add_weight(
            name="label_set", shape=(self.num_labels,), initializer="zeros",
            trainable=False, aggregation="only_first_replica")

    def call(self, x):
        seen = keras.ops.convert_to_tensor(self.label_set) > 0
        keep = keras.ops.logical_or(seen, keras.ops.logical_not(keras.ops.any(seen)))
        return keras.ops.where(keep, x, keras.ops.cast(self.fill, x.dtype))

    def update(self, emotion_mask):
        """Add the label sets of a batch (``[B, n]`` masks) to ``label_set``."""
        seen = tf.reduce_max(tf.cast(emotion_mask, tf.float32), axis=0)
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            seen = ctx.all_reduce(tf.distribute.ReduceOp.SUM, seen)
        self.label_set.assign(tf.maximum(tf.convert_to_tensor(self.label_set),
                                         tf.cast(seen > 0, self.label_set.dtype)))

    def get_config(self):
        return {**super().get_config(), "num_labels": self.num_labels, "fill": self.fill}


class LossModel(keras.Model):
    """Trains the functional ``net`` (``image -> dict of tensors``) on
    model-input dicts.

    ``fit``/``evaluate`` batches are the dicts of ``models/preprocessing.py``;
    ``call`` accepts such a dict or a bare image tensor and returns ``net``'s
    outputs. Subclasses implement :meth:`compute_batch_loss` returning a dict
    with ``"loss"`` (the task loss, regularisation losses are added here) and
    any of ``loss_terms`` to log. Save/restore with ``save_weights`` /
    ``load_weights``; save the *inference* model (a plain functional model) as
    ``.keras``.
    """

    #: Names logged by train/test steps; "loss" must be first.
    loss_terms: Tuple[str, ...] = ("loss",)

    def __init__(self, net: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.net = net
        self.trackers = {k: keras.metrics.Mean(name=k) for k in self.loss_terms}
        self.built = True

    def call(self, inputs, training=False):
        if isinstance(inputs, dict):
            inputs = inputs["image"]
        return self.net(inputs, training=training)

    def load_weights(self, filepath, *args, **kwargs):
        """``keras.Model.load_weights`` that first builds the optimizer, so the
        optimizer state saved in a ``.weights.h5`` is restored too."""
        if self.optimizer is not None and not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)
        return super().load_weights(filepath, *args, **kwargs)

    def compute_batch_loss(self, batch: Dict[str, tf.Tensor], outputs: Dict[str, tf.Tensor],
                           training: bool) -> Dict[str, tf.Tensor]:
        raise NotImplementedError

    @property
    def metrics(self):
        return list(self.trackers.values())

    def _log(self, terms: Dict[str, tf.Tensor]):
        for k, tracker in self.trackers.items():
            if k in terms:
                tracker.update_state(terms[k])
        return {k: t.result() for k, t in self.trackers.items()}

    def train_step(self, batch):
        with tf.GradientTape() as tape:
            outputs = self(batch["image"], training=True)
            terms = dict(self.compute_batch_loss(batch, outputs, training=True))
            if self.losses:
                terms["loss"] = terms["loss"] + tf.add_n(self.losses)
            loss = replica_scaled(terms["loss"])
        variables = self.trainable_variables
        grads = tape.gradient(loss, variables)
        self.optimizer.apply(grads, variables)
        return self._log(terms)

    def test_step(self, batch):
        outputs = self(batch["image"], training=False)
        terms = dict(self.compute_batch_loss(batch, outputs, training=False))
        if self.losses:
            terms["loss"] = terms["loss"] + tf.add_n(self.losses)
        return self._log(terms)

    def predict_step(self, batch):
        return self(batch["image"] if isinstance(batch, dict) else batch, training=False)


# --------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------- #
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


def _compression(files: Sequence[str], compression: Optional[str]) -> Optional[str]:
    if compression is not None:
        return compression or None
    return "GZIP" if all(f.endswith(".gz") for f in files) else None


def _count_records(files, compression) -> int:
    ds = tf.data.TFRecordDataset(files, compression_type=compression or "")
    return int(ds.reduce(np.int64(0), lambda n, _: n + 1))


def dataset_names(data, compression=None) -> Tuple[str, ...]:
    """Sorted dataset names found in samples, TFRecord files or a batched dataset."""
    if _is_samples(data):
        return tuple(sorted({s.dataset for s in data}))
    if isinstance(data, tf.data.Dataset):
        return ()
    files = resolve_files(data)
    spec = {"dataset": tf.io.FixedLenFeature([], tf.string)}
    ds = tf.data.TFRecordDataset(files, compression_type=_compression(files, compression) or "")
    names = set()
    for batch in ds.batch(1024).map(lambda s: tf.io.parse_example(s, spec)["dataset"]):
        names.update(x.decode() for x in batch.numpy())
    return tuple(sorted(names))


def make_dataset(data: Data, image_size: int, batch_size: int, datasets: Sequence[str] = (),
                 training: bool = False, augment=None, repeat: bool = False, seed: int = 0,
                 compression: Optional[str] = None,
                 group_size: int = 0) -> Tuple[tf.data.Dataset, Optional[int]]:
    """``(dataset, num_examples)`` of model-input batches from samples, TFRecord
    files or an already batched ``tf.data.Dataset`` (returned as is, plus
    ``augment`` when training; ``num_examples`` None when unknown).
    ``group_size`` > 1 puts runs of that many same-face samples in training
    batches (``models.inputs.group_by_face``)."""
    if isinstance(data, tf.data.Dataset):
        ds = data.map(augment, num_parallel_calls=tf.data.AUTOTUNE) if (training and augment) \
            else data
        return ds, None
    if _is_samples(data):
        ds = model_inputs.dataset_from_samples(data, image_size, batch_size, datasets,
                                               training=training, seed=seed, augment=augment,
                                               repeat=repeat, group_size=group_size)
        return ds, len(data)
    files = resolve_files(data)
    comp = _compression(files, compression)
    ds = model_inputs.dataset_from_files(files, image_size, batch_size, datasets,
                                         training=training, compression=comp, seed=seed,
                                         augment=augment, repeat=repeat, group_size=group_size)
    return ds, (_count_records(files, comp) if training else None)


CPU_REPLICAS_ENV = "FERMTL_CPU_REPLICAS"


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
# Checkpoints
# --------------------------------------------------------------------------- #
_CKPT = re.compile(r"^ckpt-(\d+)\.weights\.h5$")


def latest_checkpoint(checkpoint_dir: str) -> Tuple[int, Optional[str]]:
    """``(epochs_done, weights_path)`` of the newest checkpoint (``(0, None)`` if none)."""
    if not checkpoint_dir or not tf.io.gfile.isdir(checkpoint_dir):
        return 0, None
    best = (0, None)
    for name in tf.io.gfile.listdir(checkpoint_dir):
        m = _CKPT.match(name)
        if m and int(m.group(1)) > best[0]:
            best = (int(m.group(1)), os.path.join(checkpoint_dir, name))
    return best


class PruneCheckpoints(keras.callbacks.Callback):
    """Keeps the newest ``max_to_keep`` ``ckpt-NNNN.weights.h5`` of a directory."""

    def __init__(self, checkpoint_dir: str, max_to_keep: int = 3):
        super().__init__()
        self.checkpoint_dir = checkpoint_dir
        self.max_to_keep = max_to_keep

    def on_epoch_end(self, epoch, logs=None):
        names = tf.io.gfile.listdir(self.checkpoint_dir)
        done = sorted(int(m.group(1)) for m in map(_CKPT.match, names) if m)
        for old in done[:-self.max_to_keep]:
            tf.io.gfile.remove(os.path.join(self.checkpoint_dir, f"ckpt-{old:04d}.weights.h5"))


def restore(model: keras.Model, weights_path: str) -> None:
    """Load a checkpoint into ``model``, optimizer state included (Keras 3
    ``.weights.h5`` files hold the optimizer's variables: step count, momenta;
    they load only into a built optimizer, so build it first)."""
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(weights_path)


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


# --------------------------------------------------------------------------- #
# train / evaluate
# --------------------------------------------------------------------------- #
def train(method_name: Union[str, Method], train_samples_or_files: Data,
          eval_samples_or_files: Optional[Data] = None, preset: str = "small",
          overrides: Optional[Dict[str, Any]] = None, epochs: int = 10,
          steps_per_epoch: Optional[int] = None, batch_size: Optional[int] = None,
          datasets: Optional[Sequence[str]] = None, log_dir: Optional[str] = None,
          checkpoint_dir: Optional[str] = None, verbose: Union[int, str] = 0,
          callbacks: Iterable[keras.callbacks.Callback] = (), seed: Optional[int] = None,
          compression: Optional[str] = None, validation_freq: int = 1,
          post_fit: bool = True):
    """Build and fit a method; returns ``(method, model, cfg, history)``.

    ``train_samples_or_files`` / ``eval_samples_or_files``: a list of
    ``FaceSample``, TFRecord path(s) / globs / directories (GZIP detected from
    ``.gz``, or pass ``compression``), or an already batched ``tf.data.Dataset``
    of model-input dicts. ``datasets`` fixes the order behind ``dataset_id``
    (default: the sorted dataset names found in the training data); it is
    stored in ``cfg["datasets"]``. ``batch_size`` defaults to
    ``cfg["batch_size"]`` (global, split over replicas). ``steps_per_epoch``
    defaults to one pass over the training data (the stream repeats, so any
    value works). With ``checkpoint_dir`` the weights (optimizer state
    included) are saved each epoch as ``ckpt-NNNN.weights.h5`` (newest 3 kept)
    and a later call resumes from the newest one (``epochs`` is the total, not
    the remainder); the learning-rate schedules, driven by the optimizer's step
    count or the epoch index, continue where they stopped. ``seed`` seeds
    Python/NumPy/TF when given. ``callbacks`` are added to the method's own.
    After ``fit``, a method's optional ``post_fit(model, cfg, train_samples=...)``
    hook runs (e.g. FERSNet's FES fine-tuning) unless ``post_fit=False``.
    """
    from models import registry

    method = registry.get_method(method_name) if isinstance(method_name, str) else method_name
    cfg = method.config(preset, **(overrides or {}))
    if seed is not None:
        keras.utils.set_random_seed(seed)
    batch_size = int(batch_size or cfg.get("batch_size", 32))
    if datasets is None:
        datasets = cfg.get("datasets") or dataset_names(train_samples_or_files, compression)
    cfg["datasets"] = list(datasets)
    size = int(cfg["image_size"])

    def augment(batch):
        return method.augment(batch, cfg)

    train_ds, n_train = make_dataset(train_samples_or_files, size, batch_size, datasets,
                                     training=True, augment=augment, repeat=True,
                                     seed=seed or 0, compression=compression,
                                     group_size=int(cfg.get("batch_group_size", 0)))
    if isinstance(train_samples_or_files, tf.data.Dataset):
        train_ds = train_ds.repeat() if steps_per_epoch else train_ds
    if steps_per_epoch is None and n_train is not None:
        steps_per_epoch = n_train // batch_size
        if steps_per_epoch < 1:
            raise ValueError(f"{n_train} training examples < batch_size {batch_size}")
    eval_ds = None
    if eval_samples_or_files is not None:
        eval_ds, _ = make_dataset(eval_samples_or_files, size, batch_size, datasets,
                                  training=False, compression=compression)

    strategy = distribution_strategy()
    cfg["schedule_steps"] = epochs * (steps_per_epoch or 0)   # 0: unknown length
    with strategy.scope():
        model = method.build(cfg)

    cbs: List[keras.callbacks.Callback] = list(method.callbacks(cfg, steps_per_epoch or 0))
    initial_epoch = 0
    if checkpoint_dir:
        tf.io.gfile.makedirs(checkpoint_dir)
        initial_epoch, path = latest_checkpoint(checkpoint_dir)
        if path:
            with strategy.scope():
                restore(model, path)
        cbs.append(keras.callbacks.ModelCheckpoint(
            os.path.join(checkpoint_dir, "ckpt-{epoch:04d}.weights.h5"),
            save_weights_only=True))
        cbs.append(PruneCheckpoints(checkpoint_dir))
    if log_dir:
        cbs.append(keras.callbacks.TensorBoard(log_dir, update_freq="epoch", profile_batch=0))
    cbs += list(callbacks)

    if initial_epoch >= epochs:
        history = keras.callbacks.History()
        history.history = {}
        return method, model, cfg, history
    history = model.fit(train_ds, epochs=epochs, initial_epoch=initial_epoch,
                        steps_per_epoch=steps_per_epoch, validation_data=eval_ds,
                        validation_freq=validation_freq, callbacks=cbs, verbose=verbose)
    if post_fit and hasattr(method, "post_fit"):
        if _is_samples(train_samples_or_files):
            method.post_fit(model, cfg, train_samples=train_samples_or_files)
        elif isinstance(train_samples_or_files, tf.data.Dataset):
            method.post_fit(model, cfg, train_data=train_samples_or_files)   # must be finite
        else:
            once, _ = make_dataset(train_samples_or_files, size, batch_size, datasets,
                                   training=False, compression=compression)
            method.post_fit(model, cfg, train_data=once)
    return method, model, cfg, history


def predict(method: Method, model: keras.Model, cfg: Dict[str, Any], samples_or_files: Data,
            batch_size: int = 64, compression: Optional[str] = None):
    """Yield ``(batch, outputs)`` (numpy dicts) of the inference model over data."""
    infer = method.inference_model(model, cfg)
    ds, _ = make_dataset(samples_or_files, int(cfg["image_size"]), batch_size,
                         cfg.get("datasets", ()), training=False, compression=compression)
    for batch in ds:
        out = infer(batch["image"], training=False)
        yield ({k: np.asarray(v) for k, v in batch.items()},
               {k: np.asarray(v) for k, v in out.items()})


def evaluate(method: Method, model: keras.Model, cfg: Dict[str, Any], samples_or_files: Data,
             batch_size: int = 64, compression: Optional[str] = None) -> Dict[str, Any]:
    """Emotion metrics of the inference model on labelled data.

    Returns ``accuracy`` (over samples with an emotion), ``balanced_accuracy``
    (mean recall over classes present), ``per_class_recall`` (emotion name ->
    recall, None for absent classes), ``confusion_matrix`` (8 x 8 nested list,
    rows = truth, columns = prediction, ``contract.EMOTIONS`` order),
    ``num_examples``; when the method predicts AUs and the data has AU labels,
    also ``au_f1`` (AU name -> F1 at 0.5, None where unlabelled) and
    ``au_mean_f1``.
    """
    n = contract.NUM_EMOTIONS
    confusion = np.zeros((n, n), np.int64)
    tp = np.zeros(contract.NUM_AUS)
    fp = np.zeros(contract.NUM_AUS)
    fn = np.zeros(contract.NUM_AUS)
    labelled = np.zeros(contract.NUM_AUS)
    has_aus = False
    for batch, out in predict(method, model, cfg, samples_or_files, batch_size, compression):
        y = batch["emotion"]
        keep = y >= 0
        pred = out["probabilities"].argmax(-1)
        np.add.at(confusion, (y[keep], pred[keep]), 1)
        if "aus" in out:
            has_aus = True
            m = batch["aus_mask"] > 0
            t = batch["aus"] >= 0.5
            p = out["aus"] >= 0.5
            tp += (m & t & p).sum(0)
            fp += (m & ~t & p).sum(0)
            fn += (m & t & ~p).sum(0)
            labelled += m.sum(0)
    total = int(confusion.sum())
    support = confusion.sum(1)
    recall = {e: (float(confusion[i, i] / support[i]) if support[i] else None)
              for i, e in enumerate(contract.EMOTIONS)}
    present = [r for r in recall.values() if r is not None]
    result: Dict[str, Any] = {
        "accuracy": float(np.trace(confusion) / total) if total else float("nan"),
        "balanced_accuracy": float(np.mean(present)) if present else float("nan"),
        "per_class_recall": recall,
        "confusion_matrix": confusion.tolist(),
        "num_examples": total,
    }
    if has_aus and labelled.any():
        f1 = {}
        for i, name in enumerate(contract.AU_NAMES):
            denom = 2 * tp[i] + fp[i] + fn[i]
            f1[name] = (float(2 * tp[i] / denom) if denom else 0.0) if labelled[i] else None
        result["au_f1"] = f1
        vals = [v for v in f1.values() if v is not None]
        result["au_mean_f1"] = float(np.mean(vals)) if vals else float("nan")
    return result


# --------------------------------------------------------------------------- #
# Augmentation helpers (used by the methods' ``augment``)
# --------------------------------------------------------------------------- #
def random_pad_crop(images: tf.Tensor, padding: int, flip: bool = False) -> tf.Tensor:
    """Per-sample random translation: zero-pad ``padding`` pixels on each side
    and crop back to the input size at a random integer offset (He et al.
    2016, Sec. 4.2: "4 pixels are padded on each side, and a 32x32 crop is
    randomly sampled"); ``flip`` adds random horizontal flips.
    ``images``: ``[B, H, W, C]`` float."""
    static_shape = images.shape
    if padding:
        shape = tf.shape(images)
        b, h, w = shape[0], shape[1], shape[2]
        padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
        oy = tf.random.uniform([b, 1], 0, 2 * padding + 1, tf.int32)
        ox = tf.random.uniform([b, 1], 0, 2 * padding + 1, tf.int32)
        rows = oy + tf.range(h)[None, :]  # [B, H] rows of the padded image
        cols = ox + tf.range(w)[None, :]  # [B, W]
        images = tf.gather(padded, rows, axis=1, batch_dims=1)
        images = tf.gather(images, cols, axis=2, batch_dims=1)
        images.set_shape(static_shape)
    if flip:
        coin = tf.random.uniform([tf.shape(images)[0], 1, 1, 1]) < 0.5
        images = tf.where(coin, tf.reverse(images, axis=[2]), images)
    return images
