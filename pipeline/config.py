"""Run configuration: one YAML file says what data, which method, how long to
train, what a model must reach to be blessed, and where it is pushed.

.. code-block:: yaml

    name: fermtl-demo
    pipeline_root: runs/demo            # relative paths resolve against this file's folder
    data: demo_data.yaml                # a data spec (see docs/ingestion.md) or the spec inline
    method: {name: baseline, preset: small, overrides: {}}
    train: {epochs: 3, batch_size: null, seed: 0, deterministic: false, resume: true,
            train_steps: null, eval_steps: null}   # batch_size null: the method preset's
    evaluation: {min_accuracy: 0.3, max_accuracy_drop: 0.05}
    serving_dir: runs/demo/serving      # Pusher writes <serving_dir>/<model_name>/<version>/
    model_name: fer
    beam_args: [--runner=FnApiRunner, --direct_running_mode=in_memory, --direct_num_workers=1]
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any, Dict, List, Optional

import yaml

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")

# FnApiRunner: Beam 2.74's DirectRunner would first try to download its Prism binary.
DEFAULT_BEAM_ARGS = ["--runner=FnApiRunner", "--direct_running_mode=in_memory",
                     "--direct_num_workers=1"]

_DEFAULTS: Dict[str, Any] = {
    "name": "fermtl",
    "pipeline_root": "runs/fermtl",
    "data": None,
    "method": {"name": "baseline", "preset": "small", "overrides": {}},
    # batch_size None: the method preset's. resume: an interrupted Trainer continues
    # from its last epoch (Keras BackupAndRestore under pipeline_root/TrainerBackup).
    "train": {"epochs": 3, "batch_size": None, "seed": 0, "deterministic": False,
              "resume": True, "train_steps": None, "eval_steps": None},
    "evaluation": {"min_accuracy": 0.3, "max_accuracy_drop": 0.05},
    "serving_dir": None,
    "model_name": "fer",
    "beam_args": DEFAULT_BEAM_ARGS,
}


class ConfigError(ValueError):
    """The run configuration is invalid; the message names the field."""


@dataclasses.dataclass
class RunConfig:
    name: str
    pipeline_root: str
    data: Dict[str, Any]
    data_base_dir: str
    method: Dict[str, Any]
    train: Dict[str, Any]
    evaluation: Dict[str, Any]
    serving_dir: str
    model_name: str
    beam_args: List[str]
    source_path: Optional[str] = None

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.pipeline_root, "metadata.sqlite")

    @property
    def push_dir(self) -> str:
        """``<serving_dir>/<model_name>``: TF Serving's model base path."""
        return os.path.join(self.serving_dir, self.model_name)


def _merge(base: Dict[str, Any], override: Dict[str, Any], where: str) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if key not in base:
            raise ConfigError(f"{where}: unknown key {key!r}; known: {sorted(base)}")
        if isinstance(base[key], dict) and key != "overrides":
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key}: expected a mapping, got {value!r}")
            out[key] = _merge(base[key], value, f"{where}.{key}")
        elif key == "overrides" and isinstance(base[key], dict) and isinstance(value, dict):
            out[key] = {**base[key], **value}     # method config keys, checked by the method
        else:
            out[key] = value
    return out


def load_config(path: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None,
                raw: Optional[Dict[str, Any]] = None) -> RunConfig:
    """Read a run config YAML (or ``raw`` dict), apply ``overrides`` (same shape)."""
    if (path is None) == (raw is None):
        raise ConfigError("give exactly one of a config path or a raw dict")
    if path is not None:
        if not os.path.exists(path):
            raise ConfigError(f"config file not found: {path}")
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
        base_dir = os.path.dirname(os.path.abspath(path))
    else:
        base_dir = os.getcwd()
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping")
    cfg = _merge(_DEFAULTS, raw, "config")
    if overrides:
        cfg = _merge(cfg, overrides, "override")

    def resolve(p):
        if os.path.isabs(p) or "://" in p:  # object-storage URIs stay as given
            return p
        return os.path.normpath(os.path.join(base_dir, p))

    data = cfg["data"]
    data_base = base_dir
    if data is None:
        raise ConfigError("config.data: a data spec (file or mapping) is required")
    if isinstance(data, str):
        data_path = resolve(data)
        if not os.path.exists(data_path):
            raise ConfigError(f"config.data: data spec not found: {data_path}")
        with open(data_path) as f:
            data = yaml.safe_load(f)
        data_base = os.path.dirname(data_path)
    from models.registry import method_names

    if cfg["method"]["name"] not in method_names():
        raise ConfigError(f"config.method.name: unknown method {cfg['method']['name']!r}; "
                          f"choose from {list(method_names())}")
    root = resolve(cfg["pipeline_root"])
    return RunConfig(
        name=cfg["name"], pipeline_root=root, data=data, data_base_dir=data_base,
        method=cfg["method"], train=cfg["train"], evaluation=cfg["evaluation"],
        serving_dir=resolve(cfg["serving_dir"]) if cfg["serving_dir"]
        else f"{root.rstrip('/')}/serving",
        model_name=cfg["model_name"], beam_args=list(cfg["beam_args"]),
        source_path=os.path.abspath(path) if path else None)
