"""Model versions as TF Serving manages them: a base directory of numbered
SavedModels, polled for new ones.

A new version is loaded beside the ones being served; until it is
``AVAILABLE`` requests for "latest" keep going to the previous one. A version
that fails to load is reported (state ``END`` with its error) and not served;
it is retried when any of its files change. The newest ``keep_versions``
available versions stay loaded (TF Serving's ``latest { num_versions }``).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from pipeline.serving.batching import Batcher, BatchingConfig
from pipeline.serving.limits import RequestError, check_images, example_images

log = logging.getLogger(__name__)

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"


def find_version_dir(model_dir: str) -> Tuple[str, str]:
    """``(version, path)``: ``model_dir`` itself when it is a SavedModel (version
    ``"1"`` unless its name is a number), else its highest numeric version."""
    if os.path.exists(os.path.join(model_dir, "saved_model.pb")):
        base = os.path.basename(os.path.normpath(model_dir))
        return (base if base.isdigit() else "1"), model_dir
    versions = list_versions(model_dir)
    if not versions:
        raise FileNotFoundError(f"no SavedModel in {model_dir} (expected "
                                "<model_dir>/saved_model.pb or <model_dir>/<version>/)")
    version = max(versions, key=int)
    return version, os.path.join(model_dir, version)


def list_versions(base_dir: str) -> List[str]:
    """Numeric sub-directories of ``base_dir`` holding a ``saved_model.pb``."""
    if not os.path.isdir(base_dir):
        return []
    return sorted((d for d in os.listdir(base_dir) if d.isdigit()
                   and os.path.exists(os.path.join(base_dir, d, "saved_model.pb"))), key=int)


def read_signature_defs(path: str) -> Dict[str, Any]:
    """The ``SignatureDef`` protos of the SavedModel in ``path`` (with their
    method names, which ``tf.saved_model.load`` does not expose)."""
    proto = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    return dict(proto.meta_graphs[0].signature_def)


def _stamp(path: str) -> Tuple[int, int, float]:
    """``(files, bytes, latest mtime)`` under ``path``: changes while a push is
    still being copied, and when a failed version is replaced."""
    files = size = 0
    latest = 0.0
    for root, _, names in os.walk(path):
        for name in names:
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue
            files, size, latest = files + 1, size + st.st_size, max(latest, st.st_mtime)
    return files, size, latest


class ServedVersion:
    """One loaded SavedModel: its signatures, each behind a :class:`Batcher`."""

    def __init__(self, version: str, path: str, batching: BatchingConfig, max_pixels: int):
        self.version = version
        self.path = path
        self.max_pixels = max_pixels
        self.signature_defs = read_signature_defs(path)
        self._loaded = tf.saved_model.load(path)
        self.signatures = dict(self._loaded.signatures)
        self.input_specs = {name: fn.structured_input_signature[1]
                            for name, fn in self.signatures.items()}
        self._batchers = {name: Batcher(self._caller(fn), batching, f"v{version}-{name}")
                          for name, fn in self.signatures.items()}

    def method_name(self, signature: str) -> str:
        sig = self.signature_defs.get(signature)
        return sig.method_name if sig is not None else PREDICT_METHOD

    @staticmethod
    def _caller(fn):
        def call(inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
            out = fn(**{k: tf.constant(v) for k, v in inputs.items()})
            return {k: v.numpy() for k, v in out.items()}
        return call

    def check_signature(self, signature: str, method: str) -> None:
        """Refuse an unknown signature, or one of another method."""
        if signature not in self.signatures:
            raise RequestError(f"unknown signature_name {signature!r}; this model has "
                               f"{sorted(self.signatures)}", reason="bad_signature")
        if self.method_name(signature) != method:
            hint = (f" (use signature_name {self.classify_signature!r})"
                    if method == CLASSIFY_METHOD and self.classify_signature else "")
            raise RequestError(f"signature {signature!r} is a {self.method_name(signature)} "
                               f"signature, not {method}{hint}", reason="bad_signature")

    def validate(self, signature: str, inputs: Dict[str, np.ndarray], method: str,
                 max_instances: int) -> None:
        """Refuse a request the signature cannot take, before it is queued:
        unknown signature or method, wrong input names, row counts, too many
        rows, and encoded images over the pixel limit (read from their headers)."""
        self.check_signature(signature, method)
        specs = self.input_specs[signature]
        if set(inputs) != set(specs):
            raise RequestError(f"the signature {signature!r} takes the inputs {sorted(specs)}, "
                               f"got {sorted(inputs)}", reason="bad_input")
        rows = {k: (v.shape[0] if v.ndim else None) for k, v in inputs.items()}
        if None in rows.values() or len(set(rows.values())) != 1:
            raise RequestError(f"every input needs the same leading batch size, got {rows}",
                               reason="bad_input")
        n = next(iter(rows.values()))
        if n == 0:
            raise RequestError("no instances: send at least one", reason="bad_input")
        if n > max_instances:
            raise RequestError(f"{n} instances in one request; the limit is {max_instances}",
                               reason="too_many_instances")
        for key, spec in specs.items():
            if not spec.shape.is_compatible_with(inputs[key].shape):
                raise RequestError(f"input {key!r} has shape {list(inputs[key].shape)}; the "
                                   f"signature takes {spec.shape}", reason="bad_input")
            if spec.dtype != tf.string:
                continue
            values = [bytes(v) for v in inputs[key].reshape(-1)]
            if key == "images":
                check_images(values, self.max_pixels)
            elif key in ("examples", "inputs"):
                check_images(example_images(values), self.max_pixels, "example image")

    @property
    def classify_signature(self) -> Optional[str]:
        names = [k for k in self.signatures if self.method_name(k) == CLASSIFY_METHOD]
        return names[0] if names else None

    def run(self, signature: str, inputs: Dict[str, np.ndarray]):
        """A future of the signature's outputs on ``inputs`` (batched)."""
        return self._batchers[signature].submit(inputs)

    def close(self) -> None:
        for b in self._batchers.values():
            b.close()


class ModelManager:
    """The versions of one model under ``base_dir`` (or a single version dir),
    polled every ``poll_s`` seconds (0: load once, no watching)."""

    def __init__(self, base_dir: str, name: Optional[str] = None,
                 batching: Optional[BatchingConfig] = None, max_pixels: int = 4096 * 4096,
                 poll_s: float = 1.0, keep_versions: int = 2):
        self.single = os.path.exists(os.path.join(base_dir, "saved_model.pb"))
        self.base_dir = os.path.dirname(os.path.normpath(base_dir)) if self.single else base_dir
        self.single_dir = base_dir if self.single else None
        self.name = name or os.path.basename(os.path.normpath(self.base_dir)) or "model"
        self.batching = batching or BatchingConfig()
        self.max_pixels = max_pixels
        self.keep_versions = max(1, keep_versions)
        self._lock = threading.Lock()
        self._served: Dict[str, ServedVersion] = {}
        self._states: Dict[str, Dict[str, str]] = {}   # version -> state, error
        self._failed: Dict[str, Tuple] = {}            # version -> stamp at failure
        self._stop = threading.Event()
        self.poll()
        if not self.single and not self._served and not self._states:
            raise FileNotFoundError(f"no SavedModel in {base_dir} (expected "
                                    "<model_dir>/saved_model.pb or <model_dir>/<version>/)")
        self._thread = None
        if poll_s > 0 and not self.single:
            self._thread = threading.Thread(target=self._watch, args=(poll_s,),
                                            name=f"watch-{self.name}", daemon=True)
            self._thread.start()

    # --- loading -------------------------------------------------------
    def _candidates(self) -> Dict[str, str]:
        if self.single:
            version, path = find_version_dir(self.single_dir)
            return {version: path}
        return {v: os.path.join(self.base_dir, v) for v in list_versions(self.base_dir)}

    def poll(self) -> None:
        """Load new versions, unload removed and superseded ones."""
        found = self._candidates()
        newest = sorted(found, key=int)[-self.keep_versions:]
        for version in newest:
            if version in self._served:
                continue
            stamp = _stamp(found[version])
            if self._failed.get(version) == stamp:
                continue
            self._load(version, found[version], stamp)
        with self._lock:
            available = sorted(self._served, key=int)
            keep = set(available[-self.keep_versions:]) & set(found)
            gone = [v for v in available if v not in keep]
            unloaded = [self._served.pop(v) for v in gone]
            for v in gone:
                self._states[v] = {"state": "END", "error": ""}
            for v in list(self._states):
                if v not in found and v not in self._served:
                    del self._states[v]
                    self._failed.pop(v, None)
        for sv in unloaded:
            log.info("unloaded %s version %s", self.name, sv.version)
            sv.close()

    def _load(self, version: str, path: str, stamp: Tuple) -> None:
        with self._lock:
            self._states[version] = {"state": "LOADING", "error": ""}
        try:
            served = ServedVersion(version, path, self.batching, self.max_pixels)
        except Exception as err:  # noqa: BLE001 - a bad push is reported, not fatal
            msg = " ".join(str(err).split())[:500]
            log.error("%s version %s failed to load: %s", self.name, version, msg)
            with self._lock:
                self._states[version] = {"state": "END", "error": f"{type(err).__name__}: {msg}"}
                self._failed[version] = stamp
            return
        with self._lock:
            self._served[version] = served
            self._states[version] = {"state": "AVAILABLE", "error": ""}
            self._failed.pop(version, None)
        log.info("serving %s version %s from %s", self.name, version, path)

    def _watch(self, poll_s: float) -> None:
        while not self._stop.wait(poll_s):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - keep watching
                log.exception("polling %s failed", self.base_dir)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            served, self._served = list(self._served.values()), {}
        for sv in served:
            sv.close()

    # --- lookup --------------------------------------------------------
    def get(self, version: Optional[str] = None) -> ServedVersion:
        """The served ``version`` (default: the newest available one)."""
        with self._lock:
            if version is None:
                if not self._served:
                    raise RequestError(f"model {self.name!r} has no available version",
                                       404, "not_found")
                return self._served[max(self._served, key=int)]
            if version not in self._served:
                state = self._states.get(version, {}).get("state", "not found")
                raise RequestError(f"version {version} of {self.name!r} is not available "
                                   f"({state}); serving {sorted(self._served, key=int)}",
                                   404, "not_found")
            return self._served[version]

    def status(self, version: Optional[str] = None) -> List[Dict[str, Any]]:
        """TF Serving's ``model_version_status`` list."""
        with self._lock:
            states = dict(self._states)
        if version is not None:
            if version not in states:
                raise RequestError(f"version {version} of {self.name!r} not found", 404,
                                   "not_found")
            states = {version: states[version]}
        return [{"version": v, "state": s["state"],
                 "status": {"error_code": "UNKNOWN" if s["error"] else "OK",
                            "error_message": s["error"]}}
                for v, s in sorted(states.items(), key=lambda kv: -int(kv[0]))]
