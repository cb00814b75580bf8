"""Warm start: where a Trainer's Model artifact keeps its fitted weights, and
which weights a run with ``train.base_model`` starts from.

Light on purpose (TensorFlow only): ``fermtl run`` checks the base model before
any component runs, while its logs still reach the terminal.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

import tensorflow as tf

from models import export

# The fitted training model's weights, relative to the Model artifact's directory.
WEIGHTS_FILE = os.path.join("Format-Keras", "model.weights.h5")
# What a warm start's base model must share with the run (the rest may differ).
ARCHITECTURE_KEYS = ("method", "preset", "image_size")


def weights_path(model_uri: str) -> str:
    """Where a Trainer's Model artifact at ``model_uri`` keeps its fitted weights."""
    return os.path.join(model_uri, WEIGHTS_FILE)


def weights_beside(serving_model_dir: str) -> str:
    """:func:`weights_path` of the Model artifact whose SavedModel folder is
    ``serving_model_dir`` (``<artifact>/Format-Serving``, TFX's layout)."""
    return weights_path(os.path.dirname(serving_model_dir.rstrip("/")))


def base_weights(base_model: Optional[str], cfg: Dict[str, Any]) -> Optional[str]:
    """The ``.weights.h5`` a warm start loads: that of the Trainer's ``base_model``
    input (``fn_args.base_model``, the base Model artifact's SavedModel folder),
    or ``None`` without one. Raises ``ValueError`` when the base model is
    another method, preset or input size than ``cfg`` (its weights would not fit)."""
    if not base_model:
        return None
    base_cfg = export.load_config(base_model)
    differ = {k: (base_cfg.get(k), cfg.get(k)) for k in ARCHITECTURE_KEYS
              if base_cfg.get(k) != cfg.get(k)}
    if differ:
        raise ValueError(f"train.base_model {base_model} is another network than this run's: "
                         + ", ".join(f"{k} {a!r} there, {b!r} here"
                                     for k, (a, b) in differ.items()))
    path = weights_beside(base_model)
    if not tf.io.gfile.exists(path):
        raise ValueError(f"train.base_model {base_model}: no fitted weights at {path}")
    return path
