"""What every method module provides.

A method is a subclass of :class:`Method` registered in ``models/registry.py``.
It is configured by a preset name (``"small"`` trains on a 2-core CPU in
minutes, ``"paper"`` is the seed's architecture and loss weights) plus
overrides, and it builds:

* a **training model**: a compiled ``keras.Model`` whose ``fit`` takes a
  ``tf.data.Dataset`` of model-input dicts (see ``models/preprocessing.py``;
  masks decide what each sample trains) — custom ``train_step`` where needed;
* an **inference model**: a ``keras.Model`` from ``image`` ``[B, S, S, 1]`` in
  [0, 1] to a dict with at least ``probabilities`` ``[B, 8]`` over
  ``contract.EMOTIONS`` (plus ``aus`` / ``landmarks`` / ``embedding`` when the
  method has such a head). ``models/export.py`` wraps it into the serving
  signatures, identical for all methods.
"""

from __future__ import annotations

import copy
from typing import Any, Dict

import keras


class Method:
    """Base class; subclasses set ``name``, ``presets`` and implement the builders."""

    name: str = ""
    #: preset name -> full config dict. Every preset has ``image_size``.
    presets: Dict[str, Dict[str, Any]] = {}

    def config(self, preset: str = "small", **overrides) -> Dict[str, Any]:
        """The preset's config with ``overrides`` applied (unknown keys are an error)."""
        if preset not in self.presets:
            raise ValueError(f"{self.name}: unknown preset {preset!r}; "
                             f"choose from {sorted(self.presets)}")
        cfg = copy.deepcopy(self.presets[preset])
        unknown = set(overrides) - set(cfg)
        if unknown:
            raise ValueError(f"{self.name}: unknown config keys {sorted(unknown)}; "
                             f"known: {sorted(cfg)}")
        cfg.update(overrides)
        cfg["method"] = self.name
        cfg["preset"] = preset
        return cfg

    def build(self, cfg: Dict[str, Any]) -> keras.Model:
        """Compiled training model."""
        raise NotImplementedError

    def inference_model(self, model: keras.Model, cfg: Dict[str, Any]) -> keras.Model:
        """``image -> {"probabilities": ..., ...}`` sharing weights with ``model``."""
        raise NotImplementedError

    def extra_signatures(self, model: keras.Model, cfg: Dict[str, Any]) -> Dict[str, Any]:
        """Additional ``tf.function`` signatures to export (e.g. FERSNet's ``synthesize``)."""
        return {}

    def augment(self, batch: Dict[str, Any], cfg: Dict[str, Any]) -> Dict[str, Any]:
        """Training-time augmentation of a model-input batch (default: none)."""
        return batch

    def callbacks(self, cfg: Dict[str, Any], steps_per_epoch: int):
        """Method-specific Keras callbacks (lr schedules, λ ramps ...)."""
        return []
