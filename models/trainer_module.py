"""TFX Trainer module: trains any registered method on Transform's output and
exports a SavedModel whose signatures embed the Transform graph.

``custom_config`` (set by ``pipeline/pipeline.py``):
``method`` (the resolved method config: ``method``, ``preset``, ``image_size``,
``datasets`` ...), ``epochs``, ``batch_size``. ``TrainArgs.num_steps`` > 0 caps
the steps (spread over the epochs); 0 means full passes. ``epochs: 0`` exports
the untrained model (used to prove the Evaluator refuses to bless it).
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Dict

import tensorflow as tf

from models.inputs import face_key, group_by_face

log = logging.getLogger(__name__)


def _face_key(feature_spec):
    def key(record):
        parsed = tf.io.parse_single_example(
            record, {k: feature_spec[k] for k in ("subject_id", "sequence_id")})
        return face_key(tf.reshape(parsed["subject_id"], []),
                        tf.reshape(parsed["sequence_id"], []))
    return key


def _dataset(file_patterns, feature_spec, batch_size: int, training: bool,
             repeat: bool, augment=None, group_size: int = 0) -> tf.data.Dataset:
    files = tf.data.Dataset.list_files(file_patterns, shuffle=training)
    ds = files.interleave(lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
    if training:
        ds = ds.shuffle(4096, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if training:
        ds = group_by_face(ds, _face_key(feature_spec), group_size)
    ds = ds.batch(batch_size, drop_remainder=training)
    ds = ds.map(lambda s: tf.io.parse_example(s, feature_spec),
                num_parallel_calls=tf.data.AUTOTUNE)
    # Scalars come back as [B, 1] from some TFT specs; the model-input contract is [B].
    ds = ds.map(_squeeze_scalars)
    if training and augment is not None:
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _squeeze_scalars(batch: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    out = dict(batch)
    for key in ("emotion", "dataset_id", "subject_id", "sequence_id"):
        if key in out and out[key].shape.rank == 2:
            out[key] = tf.reshape(out[key], [-1])
    return out


def distribution_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy over all GPUs when there are any, else the default."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        log.info("training on %d GPU(s) with MirroredStrategy", len(gpus))
        return tf.distribute.MirroredStrategy()
    log.info("no GPU found: training on CPU")
    return tf.distribute.get_strategy()


def count_records(file_patterns) -> int:
    files = tf.io.gfile.glob(file_patterns) if isinstance(file_patterns, str) else [
        f for p in file_patterns for f in tf.io.gfile.glob(p)]
    return sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP"))


def run_fn(fn_args) -> None:
    """TFX entry point."""
    import tensorflow_transform as tft

    from models import export
    from models.registry import get_method

    cc: Dict[str, Any] = fn_args.custom_config
    cfg = dict(cc["method"])
    epochs = int(cc.get("epochs", 1))
    batch_size = int(cc.get("batch_size", 64))
    method = get_method(cfg["method"])
    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    spec = tft_output.transformed_feature_spec()

    n_train = count_records(fn_args.train_files)
    capped = int(fn_args.train_steps or 0) > 0
    steps_per_epoch = (math.ceil(fn_args.train_steps / max(epochs, 1)) if capped
                       else max(n_train // batch_size, 1))
    log.info("method %s (%s): %d training examples, %d epochs x %d steps, batch %d",
             cfg["method"], cfg.get("preset"), n_train, epochs, steps_per_epoch, batch_size)

    train_ds = _dataset(fn_args.train_files, spec, batch_size, training=True, repeat=True,
                        augment=lambda b: method.augment(b, cfg),
                        group_size=int(cfg.get("batch_group_size", 0)))
    eval_ds = _dataset(fn_args.eval_files, spec, batch_size, training=False, repeat=False)

    with distribution_strategy().scope():
        model = method.build(cfg)
    history = {}
    if epochs > 0:
        callbacks = [tf.keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir,
                                                    update_freq="epoch")]
        callbacks += method.callbacks(cfg, steps_per_epoch)
        result = model.fit(train_ds, epochs=epochs, steps_per_epoch=steps_per_epoch,
                           validation_data=eval_ds, callbacks=callbacks, verbose=2)
        history = {k: [float(x) for x in v] for k, v in result.history.items()}
        if hasattr(method, "post_fit"):   # e.g. FERSNet's FES augmentation + fine-tuning
            once = _dataset(fn_args.train_files, spec, batch_size, training=False, repeat=False)
            post = method.post_fit(model, cfg, train_data=once)
            if post is not None:
                history.update({f"post_fit_{k}": [float(x) for x in v]
                                for k, v in post.history.items()})
    else:
        log.warning("epochs = 0: exporting the untrained model")

    tft_layer = tft_output.transform_features_layer()

    def preprocess(image_bytes: tf.Tensor) -> tf.Tensor:
        return tft_layer({"image": image_bytes})["image"]

    export.export_saved_model(method, model, cfg, fn_args.serving_model_dir,
                              preprocess=preprocess, extra_trackables={"tft_layer": tft_layer})
    os.makedirs(fn_args.model_run_dir, exist_ok=True)
    with open(os.path.join(fn_args.model_run_dir, "history.json"), "w") as f:
        json.dump({"config": cfg, "epochs": epochs, "steps_per_epoch": steps_per_epoch,
                   "history": history}, f, indent=2, default=str)
