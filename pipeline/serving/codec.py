"""TF Serving's REST JSON encoding, to and from NumPy arrays.

Row format ``{"instances": [...]}`` and columnar ``{"inputs": ...}``; binary
values as ``{"b64": "..."}``; ``:classify`` examples as feature dicts. The
reply follows TF Serving: one named output is unwrapped, strings are UTF-8.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Dict, List

import numpy as np
import tensorflow as tf
from tensorflow.core.example import example_pb2, feature_pb2

from pipeline.serving.limits import RequestError


def _decode(key: str, value):
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise RequestError(f"input {key!r}: binary values must be {{\"b64\": \"...\"}}",
                               reason="bad_input")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(f"input {key!r}: invalid base64", reason="bad_base64") from None
    if isinstance(value, list):
        return [_decode(key, v) for v in value]
    return value


def to_array(key: str, values, spec) -> np.ndarray:
    """``values`` (JSON, b64 decoded) as an array of ``spec``'s dtype."""
    values = _decode(key, values)
    if spec.dtype == tf.string:
        def as_bytes(v):
            if isinstance(v, list):
                return [as_bytes(x) for x in v]
            if isinstance(v, str):
                return v.encode("utf-8")
            if isinstance(v, bytes):
                return v
            raise RequestError(f"input {key!r} takes strings or {{\"b64\": ...}}, got "
                               f"{type(v).__name__}", reason="bad_input")
        values = as_bytes(values)
        try:
            arr = np.array(values, dtype=object)
        except ValueError as err:
            raise RequestError(f"input {key!r}: {err}", reason="bad_input") from None
        if arr.dtype != object or any(not isinstance(v, bytes) for v in arr.reshape(-1)):
            raise RequestError(f"input {key!r}: ragged or nested values", reason="bad_input")
        return arr
    try:
        return np.asarray(values, dtype=spec.dtype.as_numpy_dtype)
    except (TypeError, ValueError) as err:
        raise RequestError(f"input {key!r}: cannot convert to {spec.dtype.name}: {err}",
                           reason="bad_input") from None


def request_arrays(body: Any, specs: Dict[str, Any]):
    """``(inputs, row_format)`` of a ``:predict`` body for the given input specs."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object", reason="bad_json")
    if ("instances" in body) == ("inputs" in body):
        raise RequestError('give exactly one of "instances" (row format) or "inputs" '
                           '(columnar format)', reason="bad_input")
    keys = list(specs)
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list):
            raise RequestError('"instances" must be a list', reason="bad_input")
        columns: Dict[str, List[Any]] = {k: [] for k in keys}
        for i, inst in enumerate(instances):
            if isinstance(inst, dict) and "b64" not in inst:
                if set(inst) != set(keys):
                    raise RequestError(f"instance {i} has the inputs {sorted(inst)}; the "
                                       f"signature takes {keys}", reason="bad_input")
                for k in keys:
                    columns[k].append(inst[k])
            elif len(keys) == 1:
                columns[keys[0]].append(inst)
            else:
                raise RequestError(f"instance {i}: name the inputs {keys}", reason="bad_input")
        return {k: to_array(k, v, specs[k]) for k, v in columns.items()}, True
    inputs = body["inputs"]
    if not (isinstance(inputs, dict) and "b64" not in inputs):
        if len(keys) != 1:
            raise RequestError(f'"inputs" must name the inputs {keys}', reason="bad_input")
        inputs = {keys[0]: inputs}
    unknown = set(inputs) - set(keys)
    if unknown:
        raise RequestError(f"unknown input(s) {sorted(unknown)}; the signature takes {keys}",
                           reason="bad_input")
    return {k: to_array(k, v, specs[k]) for k, v in inputs.items() if k in specs}, False


def _jsonable(value: np.ndarray):
    if value.dtype.kind in ("S", "O"):
        return np.vectorize(lambda b: b.decode("utf-8", errors="replace")
                            if isinstance(b, bytes) else str(b), otypes=[object])(value).tolist()
    return value.tolist()


def predict_reply(outputs: Dict[str, np.ndarray], row_format: bool) -> Dict[str, Any]:
    """The ``:predict`` reply (TF Serving drops the name of a lone output)."""
    result = {k: _jsonable(v) for k, v in outputs.items()}
    if not row_format:
        return {"outputs": next(iter(result.values())) if len(result) == 1 else result}
    n = len(next(iter(result.values()))) if result else 0
    if len(result) == 1:
        return {"predictions": next(iter(result.values()))}
    return {"predictions": [{k: v[i] for k, v in result.items()} for i in range(n)]}


def _feature(name: str, value) -> feature_pb2.Feature:
    values = value if isinstance(value, list) else [value]
    values = [_decode(name, v) for v in values]
    if all(isinstance(v, (bytes, str)) for v in values):
        return feature_pb2.Feature(bytes_list=feature_pb2.BytesList(
            value=[v.encode("utf-8") if isinstance(v, str) else v for v in values]))
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=values))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return feature_pb2.Feature(float_list=feature_pb2.FloatList(value=values))
    raise RequestError(f"feature {name!r}: values must all be strings, ints or floats",
                       reason="bad_input")


def classify_examples(body: Any) -> np.ndarray:
    """Serialized ``tf.train.Example`` of a ``:classify`` body (``examples``,
    each merged with the optional ``context`` features)."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object", reason="bad_json")
    examples, context = body.get("examples"), body.get("context", {})
    if not isinstance(examples, list) or not isinstance(context, dict):
        raise RequestError('"examples" must be a list of feature objects (and "context" an '
                           'object)', reason="bad_input")
    out = []
    for i, ex in enumerate(examples):
        if not isinstance(ex, dict):
            raise RequestError(f"example {i} must be an object of features", reason="bad_input")
        features = {**context, **ex}
        proto = example_pb2.Example()
        for name, value in features.items():
            proto.features.feature[name].CopyFrom(_feature(name, value))
        out.append(proto.SerializeToString())
    return np.array(out, dtype=object)


def classify_reply(classes: np.ndarray, scores: np.ndarray) -> Dict[str, Any]:
    """``{"results": [[[label, score], ...], ...]}`` as TF Serving answers."""
    labels = _jsonable(classes)
    return {"results": [[[c, float(s)] for c, s in zip(row_c, row_s)]
                        for row_c, row_s in zip(labels, scores.tolist())]}
