"""TFX Trainer module: fits any registered method with the training core
(``models.training.fit``) on Transform's output and exports a SavedModel whose
signatures embed the Transform graph.

``custom_config`` (set by ``pipeline/pipeline.py``): ``method`` (the resolved
method config: ``method``, ``preset``, ``image_size`` ...) and ``train``
(``epochs``, ``batch_size``, ``seed``, ``deterministic``, ``fit_eval_split``,
``backup_dir``). A warm start (``train.base_model``) arrives as the Trainer's
``base_model`` input and fits from its weights (:func:`models.warm_start.base_weights`).
``cfg["datasets"]`` is Transform's dataset vocabulary. Beside the SavedModel the
Model artifact holds the fitted weights (:data:`models.warm_start.WEIGHTS_FILE`, Keras
``.weights.h5``), which a later run can start from (``train.base_model``).
``TrainArgs.num_steps`` > 0 caps the steps (spread over the epochs); 0 means full
passes. ``epochs: 0`` exports the untrained model (used to prove the Evaluator refuses to bless it).
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Dict, List, Optional

import tensorflow as tf
import tensorflow_transform as tft

from models import export, inputs, training
from models.warm_start import base_weights, weights_beside
from models.registry import get_method
from models.transform_module import DATASET_VOCABULARY

log = logging.getLogger(__name__)


def dataset_vocabulary(tft_output: tft.TFTransformOutput) -> List[str]:
    """The dataset names behind ``dataset_id``, in vocabulary order."""
    return [v.decode() if isinstance(v, bytes) else str(v)
            for v in tft_output.vocabulary_by_name(DATASET_VOCABULARY)]


def plan_of(train_cfg: Dict[str, Any], log_dir: str, train_steps: int = 0,
            initial_weights: Optional[str] = None) -> training.Plan:
    """The core's :class:`~models.training.Plan` from a run config's ``train``
    section; ``train_steps`` > 0 caps the steps (spread over the epochs);
    ``initial_weights``: a warm start's ``.weights.h5``."""
    epochs = int(train_cfg.get("epochs", 1))
    steps = math.ceil(train_steps / max(epochs, 1)) if train_steps and train_steps > 0 else None
    return training.Plan(epochs=epochs, batch_size=train_cfg.get("batch_size"),
                         steps_per_epoch=steps, seed=int(train_cfg.get("seed") or 0),
                         deterministic=bool(train_cfg.get("deterministic")),
                         backup_dir=train_cfg.get("backup_dir"), log_dir=log_dir, verbose=2,
                         initial_weights=initial_weights)


def fit_files(train_files: List[str], eval_files: List[str],
              train_cfg: Dict[str, Any]) -> List[str]:
    """The files the fit reads: the train split's, and with ``fit_eval_split`` the
    eval split's too (a final model on all the data; the Evaluator then scores
    faces it was fitted on)."""
    if not train_cfg.get("fit_eval_split"):
        return list(train_files)
    log.warning("fit_eval_split: fitting the train and eval splits; the Evaluator's "
                "figures are on faces the model was trained on")
    return list(train_files) + list(eval_files)


def run_fn(fn_args) -> None:
    """TFX entry point."""
    cc: Dict[str, Any] = fn_args.custom_config
    cfg = dict(cc["method"])
    method = get_method(cfg["method"])
    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    cfg["datasets"] = dataset_vocabulary(tft_output)
    plan = plan_of(cc["train"], fn_args.model_run_dir, int(fn_args.train_steps or 0),
                   base_weights(fn_args.base_model, cfg))
    if plan.initial_weights:
        log.info("warm start from %s", plan.initial_weights)
    train = inputs.transformed_source(fit_files(fn_args.train_files, fn_args.eval_files,
                                                cc["train"]),
                                      tft_output, fn_args.data_accessor)
    evals = inputs.transformed_source(fn_args.eval_files, tft_output, fn_args.data_accessor)
    if plan.epochs <= 0:
        log.warning("epochs = 0: exporting the untrained model")
    fitted = training.fit(method, cfg, train, evals, plan)

    tft_layer = tft_output.transform_features_layer()

    def preprocess(image_bytes):
        return tft_layer({"image": image_bytes})["image"]

    export.export_saved_model(method, fitted.model, cfg, fn_args.serving_model_dir,
                              preprocess=preprocess, extra_trackables={"tft_layer": tft_layer})
    weights = weights_beside(fn_args.serving_model_dir)
    os.makedirs(os.path.dirname(weights), exist_ok=True)
    fitted.model.save_weights(weights)
    if plan.backup_dir and tf.io.gfile.exists(plan.backup_dir):   # exported: nothing to resume
        tf.io.gfile.rmtree(plan.backup_dir)
    history = dict(fitted.history.history)
    history.update({f"post_fit_{k}": v for k, v in fitted.post_fit_history.items()})
    os.makedirs(fn_args.model_run_dir, exist_ok=True)
    with open(os.path.join(fn_args.model_run_dir, "history.json"), "w") as f:
        json.dump({"config": cfg, "epochs": plan.epochs, "base_model": fn_args.base_model,
                   "fit_eval_split": bool(cc["train"].get("fit_eval_split")),
                   "steps_per_epoch": fitted.steps_per_epoch, "num_train": fitted.num_train,
                   "history": {k: [float(x) for x in v] for k, v in history.items()}},
                  f, indent=2, default=str)
