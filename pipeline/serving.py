"""``fermtl serve``: a thin HTTP server speaking TF Serving's REST API v1 over a
pushed SavedModel, for local use and tests.

Production serving uses the real ``tensorflow/serving`` container (or KServe)
on the same ``<model>/<version>/`` directory; this server answers the same
requests so clients can be written and tested here. (KServe's ModelServer
speaks v1 too, but ``kserve==0.13.1`` pulls Ray into the pinned stack for no
gain here, so the server stays a few hundred lines over the SavedModel.)

Endpoints::

    GET  /v1/models/<name>                        model version status
    GET  /v1/models/<name>[/versions/<v>]/metadata signature defs
    POST /v1/models/<name>[/versions/<v>]:predict  {"instances": [...]} (row) or
                                                   {"inputs": ...} (columnar)

Binary inputs travel as ``{"b64": "..."}``. Every error is answered with a
4xx status and ``{"error": "..."}``; the server keeps answering afterwards.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 32 * 1024 * 1024
_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?"
                   r"(?P<rest>/metadata|:predict)?$")


class RequestError(Exception):
    """A client error: answered with ``status`` and the message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def find_version_dir(model_dir: str) -> Tuple[str, str]:
    """``(version, path)``: ``model_dir`` itself when it is a SavedModel (version
    ``"1"`` unless its name is a number), else its highest numeric version."""
    if os.path.exists(os.path.join(model_dir, "saved_model.pb")):
        base = os.path.basename(os.path.normpath(model_dir))
        return (base if base.isdigit() else "1"), model_dir
    versions = [d for d in os.listdir(model_dir) if d.isdigit()
                and os.path.exists(os.path.join(model_dir, d, "saved_model.pb"))] \
        if os.path.isdir(model_dir) else []
    if not versions:
        raise FileNotFoundError(f"no SavedModel in {model_dir} (expected "
                                "<model_dir>/saved_model.pb or <model_dir>/<version>/)")
    version = max(versions, key=int)
    return version, os.path.join(model_dir, version)


class ServedModel:
    """A loaded SavedModel and its signatures, answering REST-shaped requests."""

    def __init__(self, model_dir: str, name: Optional[str] = None):
        import tensorflow as tf

        self.version, self.path = find_version_dir(model_dir)
        base = model_dir if self.path != model_dir else os.path.dirname(model_dir)
        self.name = name or os.path.basename(os.path.normpath(base)) or "model"
        self._loaded = tf.saved_model.load(self.path)
        self.signatures = dict(self._loaded.signatures)
        self._lock = threading.Lock()

    # --- metadata ------------------------------------------------------
    def status(self) -> Dict[str, Any]:
        return {"model_version_status": [{
            "version": self.version, "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""}}]}

    def metadata(self) -> Dict[str, Any]:
        defs = {}
        for sig_name, fn in self.signatures.items():
            inputs = {k: _tensor_info(k, spec) for k, spec in
                      fn.structured_input_signature[1].items()}
            outputs = {k: _tensor_info(k, spec) for k, spec in fn.structured_outputs.items()}
            defs[sig_name] = {"inputs": inputs, "outputs": outputs,
                              "method_name": "tensorflow/serving/predict"}
        return {"model_spec": {"name": self.name, "signature_name": "",
                               "version": self.version},
                "metadata": {"signature_def": {"signature_def": defs}}}

    # --- predict -------------------------------------------------------
    def predict(self, body: Dict[str, Any]) -> Dict[str, Any]:
        import tensorflow as tf

        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        sig_name = body.get("signature_name", "serving_default")
        if sig_name not in self.signatures:
            raise RequestError(f"unknown signature_name {sig_name!r}; this model has "
                               f"{sorted(self.signatures)}")
        fn = self.signatures[sig_name]
        input_specs = fn.structured_input_signature[1]
        if ("instances" in body) == ("inputs" in body):
            raise RequestError('give exactly one of "instances" (row format) or '
                               '"inputs" (columnar format)')
        row_format = "instances" in body
        columns = (_rows_to_columns(body["instances"], input_specs) if row_format
                   else _columnar(body["inputs"], input_specs))
        tensors = {}
        for key, spec in input_specs.items():
            if key not in columns:
                raise RequestError(f"missing input {key!r}; the signature takes "
                                   f"{sorted(input_specs)}")
            tensors[key] = _to_tensor(key, columns[key], spec)
        try:
            with self._lock:
                out = fn(**tensors)
        except (tf.errors.InvalidArgumentError, ValueError) as err:
            msg = getattr(err, "message", str(err)).strip().splitlines()[0]
            raise RequestError(f"the model rejected the input: {msg}") from None
        result = {k: _jsonable(v.numpy()) for k, v in out.items()}
        if row_format:
            n = len(next(iter(result.values()))) if result else 0
            return {"predictions": [{k: v[i] for k, v in result.items()} for i in range(n)]}
        return {"outputs": result}


def _tensor_info(name: str, spec) -> Dict[str, Any]:
    dims = [{"size": str(d if d is not None else -1), "name": ""} for d in spec.shape]
    return {"dtype": f"DT_{spec.dtype.name.upper()}",
            "tensor_shape": {"dim": dims, "unknown_rank": False}, "name": name}


def _rows_to_columns(instances, input_specs) -> Dict[str, List[Any]]:
    if not isinstance(instances, list):
        raise RequestError('"instances" must be a list')
    if not instances:
        raise RequestError('"instances" is empty: send at least one instance')
    keys = list(input_specs)
    columns: Dict[str, List[Any]] = {k: [] for k in keys}
    for i, inst in enumerate(instances):
        named = isinstance(inst, dict) and "b64" not in inst
        if named:
            unknown = set(inst) - set(keys)
            if unknown:
                raise RequestError(f"instance {i}: unknown input(s) {sorted(unknown)}; the "
                                   f"signature takes {keys}")
            for k in keys:
                if k not in inst:
                    raise RequestError(f"instance {i}: missing input {k!r}")
                columns[k].append(inst[k])
        elif len(keys) == 1:
            columns[keys[0]].append(inst)
        else:
            raise RequestError(f"instance {i}: name the inputs {keys}")
    return columns


def _columnar(inputs, input_specs) -> Dict[str, Any]:
    keys = list(input_specs)
    if isinstance(inputs, dict) and "b64" not in inputs:
        unknown = set(inputs) - set(keys)
        if unknown:
            raise RequestError(f"unknown input(s) {sorted(unknown)}; the signature takes {keys}")
        return inputs
    if len(keys) == 1:
        return {keys[0]: inputs}
    raise RequestError(f'"inputs" must name the inputs {keys}')


def _decode_value(key: str, value, is_string: bool):
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise RequestError(f"input {key!r}: binary values must be {{\"b64\": \"...\"}}")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(f"input {key!r}: invalid base64") from None
    if isinstance(value, list):
        return [_decode_value(key, v, is_string) for v in value]
    if is_string and isinstance(value, str):
        return value.encode("utf-8")
    return value


def _to_tensor(key: str, values, spec):
    import tensorflow as tf

    is_string = spec.dtype == tf.string
    decoded = _decode_value(key, values, is_string)
    if isinstance(decoded, list) and not decoded:
        raise RequestError(f"input {key!r} is empty")
    try:
        return tf.constant(decoded, dtype=spec.dtype)
    except (TypeError, ValueError) as err:
        raise RequestError(f"input {key!r}: cannot convert to {spec.dtype.name}: {err}") \
            from None


def _jsonable(value):
    if isinstance(value, np.ndarray):
        if value.dtype.kind in ("S", "O"):
            return [_jsonable(v) for v in value]
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def make_handler(model: ServedModel, max_body: int = MAX_BODY_BYTES):
    class Handler(BaseHTTPRequestHandler):
        server_version = "fermtl-serving/0.1"
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            log.info("%s %s", self.address_string(), fmt % args)

        def _send(self, status: int, payload: Dict[str, Any]) -> None:
            data = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self):
            m = _PATH.match(self.path.split("?", 1)[0])
            if not m:
                raise RequestError(f"unknown path {self.path}; see /v1/models/{model.name}", 404)
            if m.group("name") != model.name:
                raise RequestError(f"model {m.group('name')!r} not found; serving "
                                   f"{model.name!r}", 404)
            if m.group("version") and m.group("version") != model.version:
                raise RequestError(f"version {m.group('version')} not found; serving "
                                   f"version {model.version}", 404)
            return m.group("rest") or ""

        def _drain(self, length: int) -> None:
            """Read (and drop) a body we refuse, so the client sees our answer."""
            self.close_connection = True
            while length > 0:
                chunk = self.rfile.read(min(length, 1 << 20))
                if not chunk:
                    break
                length -= len(chunk)

        def do_GET(self):
            try:
                rest = self._route()
                if rest == "":
                    self._send(200, model.status())
                elif rest == "/metadata":
                    self._send(200, model.metadata())
                else:
                    raise RequestError("use POST for :predict", 405)
            except RequestError as err:
                self._send(err.status, {"error": str(err)})

        def do_POST(self):
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > max_body:
                    self._drain(length)
                    raise RequestError(f"request body of {length} bytes exceeds the "
                                       f"{max_body}-byte limit", 413)
                body = self.rfile.read(length) if length else b""
                if self._route() != ":predict":
                    raise RequestError("POST is only for :predict", 405)
                try:
                    request = json.loads(body.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as err:
                    raise RequestError(f"malformed JSON: {err}") from None
                self._send(200, model.predict(request))
            except RequestError as err:
                self._send(err.status, {"error": str(err)})
            except Exception as err:  # noqa: BLE001 - answer, log, keep serving
                log.exception("predict failed")
                self._send(500, {"error": f"internal error: {type(err).__name__}: {err}"})

    return Handler


def make_server(model_dir: str, host: str = "127.0.0.1", port: int = 8501,
                name: Optional[str] = None, max_body: int = MAX_BODY_BYTES):
    """A ``ThreadingHTTPServer`` (not started) serving ``model_dir``."""
    model = ServedModel(model_dir, name)
    server = ThreadingHTTPServer((host, port), make_handler(model, max_body))
    server.served_model = model
    return server
