"""Run configuration: one YAML file says what data, which method, how long to
train, what a model must reach to be blessed, and where it is pushed.

.. code-block:: yaml

    name: fermtl-demo
    pipeline_root: runs/demo            # relative paths resolve against this file's folder
    data: demo_data.yaml                # a data spec (see docs/ingestion.md) or the spec inline
    method: {name: baseline, preset: small, overrides: {}}
    train: {epochs: 3, batch_size: null, seed: 0, deterministic: false, resume: true,
            train_steps: null, eval_steps: null,   # batch_size null: the method preset's
            fit_eval_split: false,   # true: fit train + eval (a final model, see below)
            base_model: null}        # warm start: an earlier run's pipeline_root (see below)
    evaluation: {min_accuracy: 0.3, max_accuracy_drop: 0.05}
    serving_dir: runs/demo/serving      # Pusher writes <serving_dir>/<model_name>/<version>/
    model_name: fer
    beam_args: [--runner=FnApiRunner, --direct_running_mode=in_memory, --direct_num_workers=1]
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any, Dict, List, Optional, Sequence

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
    # fit_eval_split: the Trainer fits the eval split too -- the final model of a recipe
    # chosen by k-fold (CK+ on all its subjects); the Evaluator's figures are then on
    # faces it trained on, a sanity gate and not an estimate.
    # base_model: start from another run's fitted weights (a warm start, fresh
    # optimizer): its pipeline_root (the newest model its Evaluator blessed) or a
    # Trainer Model artifact folder; same method, preset and image size.
    "train": {"epochs": 3, "batch_size": None, "seed": 0, "deterministic": False,
              "resume": True, "train_steps": None, "eval_steps": None,
              "fit_eval_split": False, "base_model": None},
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


def parse_set(item: str):
    """``("a.b.0.c", value)`` of a ``--set KEY=VALUE`` (VALUE read as YAML)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. train.epochs=2), got {item!r}")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}: the value {value!r} is not valid YAML: "
                          f"{' '.join(str(err).split())}") from None


def apply_set(cfg: Dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` (dotted; integers address list items, e.g.
    ``data.sources.0.path``) in ``cfg``. The keys of the run config itself
    must exist; inside ``data`` and ``method.overrides`` new keys may be added
    (the data spec and the method check them)."""
    parts = key.split(".")
    node: Any = cfg
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth]) or "config"
        last = depth == len(parts) - 1
        open_keys = parts[0] == "data" or parts[:2] == ["method", "overrides"]
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise ConfigError(f"--set {key}: {where} is a list of {len(node)} item(s); "
                                  f"address one as {where}.0 .. {where}.{len(node) - 1}")
            index = int(part)
            if last:
                node[index] = value
            node = node[index]
        elif isinstance(node, dict):
            if part not in node and not (open_keys and depth > 0):
                raise ConfigError(f"--set {key}: unknown key {part!r} in {where}; known: "
                                  f"{sorted(node)}")
            if last:
                node[part] = value
            elif part not in node:
                node[part] = {}
            node = node[part]
        else:
            raise ConfigError(f"--set {key}: {where} is a value ({node!r}), not a mapping "
                              "or list")


def load_config(path: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None,
                raw: Optional[Dict[str, Any]] = None, sets: Sequence[str] = ()) -> RunConfig:
    """Read a run config YAML (or ``raw`` dict), apply ``overrides`` (same
    shape), then the ``--set KEY=VALUE`` items ``sets`` (after the data spec
    file is read, so they reach into it; see :func:`apply_set`)."""
    if (path is None) == (raw is None):
        raise ConfigError("give exactly one of a config path or a raw dict")
    if path is not None:
        if not os.path.exists(path):
            raise ConfigError(f"config file not found: {path}")
        raw = _read_yaml(path, "config") or {}
        base_dir = os.path.dirname(os.path.abspath(path))
    else:
        base_dir = os.getcwd()
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'config'}: the config must be a mapping")
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
        data = _read_yaml(data_path, "data spec")
        data_base = os.path.dirname(data_path)
    if sets:
        cfg = {**cfg, "data": copy.deepcopy(data)}
        for item in sets:
            apply_set(cfg, *parse_set(item))
        data = cfg["data"]
    from models.registry import method_names

    if cfg["method"]["name"] not in method_names():
        raise ConfigError(f"config.method.name: unknown method {cfg['method']['name']!r}; "
                          f"choose from {list(method_names())}")
    root = resolve(cfg["pipeline_root"])
    train = dict(cfg["train"])
    if train["base_model"]:
        train["base_model"] = resolve(str(train["base_model"]))
    return RunConfig(
        name=cfg["name"], pipeline_root=root, data=data, data_base_dir=data_base,
        method=cfg["method"], train=train, evaluation=cfg["evaluation"],
        serving_dir=resolve(cfg["serving_dir"]) if cfg["serving_dir"]
        else f"{root.rstrip('/')}/serving",
        model_name=cfg["model_name"], beam_args=list(cfg["beam_args"]),
        source_path=os.path.abspath(path) if path else None)


def _read_yaml(path: str, what: str):
    with open(path) as f:
        try:
            return yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: malformed YAML in the {what}: "
                              f"{' '.join(str(err).split())}") from None


def preflight(config: RunConfig) -> None:
    """Check what would otherwise fail inside the pipeline, before any
    component runs: the data spec, every local source path, the method's
    preset and overrides. Raises :class:`ConfigError` naming the field and
    the fix."""
    from components.ingestion.spec import DataSpec, SpecError
    from models.registry import get_method

    where = f" in {config.source_path}" if config.source_path else ""
    try:
        spec = DataSpec.from_dict(config.data, config.data_base_dir)
    except SpecError as err:
        raise ConfigError(f"data: {err}") from None
    for i, source in enumerate(spec.sources):
        paths = {"path": source.path,
                 "au_table.path": source.au_table.path if source.au_table else None}
        for field, path in paths.items():
            if path and "://" not in path and not os.path.exists(path):
                raise ConfigError(f"data.sources.{i}.{field}: {path} does not exist; fix the "
                                  f"path{where} or pass --set data.sources.{i}.{field}=PATH")
    m = config.method
    try:
        cfg = get_method(m["name"]).config(m.get("preset", "small"),
                                           **(m.get("overrides") or {}))
    except ValueError as err:
        raise ConfigError(f"method: {err} (set method.preset / method.overrides{where})") \
            from None
    if config.train.get("base_model"):
        base_model_uri(config.train["base_model"], cfg)


def base_model_uri(path: str, cfg: Dict[str, Any]) -> str:
    """The Model artifact a warm start (``train.base_model``) starts from, checked
    against the run's method config ``cfg``; :class:`ConfigError` when there is
    none or its network is another."""
    from tfx.utils import path_utils

    from models import warm_start
    from pipeline import artifacts

    if "://" in path:        # object storage (Kubeflow): checked by the Trainer
        return path
    try:
        uri = artifacts.base_model_uri(path, warm_start.WEIGHTS_FILE)
        warm_start.base_weights(path_utils.serving_model_path(uri), cfg)
    except (LookupError, ValueError) as err:
        raise ConfigError(f"train.base_model: {err}") from None
    return uri
