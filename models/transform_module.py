"""TFX Transform module: the ``preprocessing_fn`` whose graph the Trainer
embeds in every exported model, so training and serving decode images the
same way (``models/preprocessing.py``)."""

from __future__ import annotations

from typing import Any, Dict

from models import preprocessing


def preprocessing_fn(inputs: Dict[str, Any], custom_config: Dict[str, Any]) -> Dict[str, Any]:
    """Raw contract features -> model inputs.

    ``custom_config``: ``image_size`` (the method's input size) and ``datasets``
    (ordered dataset names; ``dataset_id`` indexes it). At serving time only
    ``image`` is fed; outputs that need other features are dropped by TFT.
    """
    return preprocessing.to_model_inputs(inputs, int(custom_config["image_size"]),
                                         list(custom_config.get("datasets", [])))
