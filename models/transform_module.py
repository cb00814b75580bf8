"""TFX Transform module: the ``preprocessing_fn`` whose graph the Trainer
embeds in every exported model, so training and serving decode images the
same way (``models/preprocessing.py``)."""

from __future__ import annotations

from typing import Any, Dict

import tensorflow as tf
import tensorflow_transform as tft

from models import preprocessing

#: TFT vocabulary of dataset names; ``dataset_id`` indexes it, and the Trainer
#: reads it back as ``cfg["datasets"]`` (``models.trainer_module``).
DATASET_VOCABULARY = "dataset"


def preprocessing_fn(inputs: Dict[str, Any], custom_config: Dict[str, Any]) -> Dict[str, Any]:
    """Raw contract features -> model inputs.

    ``custom_config``: ``image_size`` (the method's input size). ``dataset_id``
    is ``tft.compute_and_apply_vocabulary`` over the dataset names (-1 for a
    name the vocabulary lacks). At serving time only ``image`` is fed; outputs
    that need other features are dropped by TFT.
    """
    out = preprocessing.to_model_inputs(inputs, int(custom_config["image_size"]))
    out["dataset_id"] = tft.compute_and_apply_vocabulary(
        tf.reshape(inputs["dataset"], [-1]), vocab_filename=DATASET_VOCABULARY, default_value=-1)
    return out

