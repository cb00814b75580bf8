"""``fermtl export MODEL --format tflite|onnx``: a pushed model's ``pixels``
signature (decoded faces in, numeric outputs out; see models/export.py)
converted to TensorFlow Lite or ONNX.

Both take ``float32 [N, S, S, 1]`` faces in [0, 1] (TFLite: N = 1), decoded as
``serving_default`` decodes them (:func:`models.preprocessing.decode_image`:
gray, bilinear antialiased resize to S); their outputs are the SavedModel's
numeric ones (``probabilities``, ``label_id``, ``aus``, ``landmarks`` ...),
under the same names. ONNX uses tf2onnx (opset 17) and runs in onnxruntime;
both come with the ``onnx`` extra (pinned in constraints.txt).
"""

from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from models.export import PIXELS_SIGNATURE, load_config
from pipeline.serving import find_version_dir

ONNX_OPSET = 17


def _pixels_signature(model_dir: str) -> Tuple[str, object, object]:
    """``(version dir, loaded SavedModel, its pixels signature)`` of the
    latest version under ``model_dir``."""
    _, path = find_version_dir(model_dir)
    loaded = tf.saved_model.load(path)
    if PIXELS_SIGNATURE not in loaded.signatures:
        raise ValueError(f"{path} has no {PIXELS_SIGNATURE!r} signature (exported before it "
                         "existed): re-export the model to convert it")
    return path, loaded, loaded.signatures[PIXELS_SIGNATURE]


def _write(data: bytes, version_dir: str, out_path: Optional[str], ext: str) -> str:
    """Write ``data`` to ``out_path`` (default ``<version dir>.<ext>``, beside it)."""
    version_dir = os.path.normpath(version_dir)
    out_path = out_path or f"{version_dir}.{ext}"
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "wb") as f:
        f.write(data)
    return out_path


def export_tflite(model_dir: str, out_path: Optional[str] = None) -> str:
    """Convert the ``pixels`` signature of the pushed model in ``model_dir``
    (a base dir: its latest version) to ``out_path`` (default
    ``<version dir>/../<version>.tflite``); returns the path written."""
    path, loaded, fn = _pixels_signature(model_dir)
    # from_saved_model(signature_keys=...) aborts in the TF 2.16 converter on
    # these SavedModels (their other signatures hold string ops); the concrete
    # function converts cleanly.
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn], loaded)
    return _write(converter.convert(), path, out_path, "tflite")


def _rename_outputs(graph, names: Dict[str, str]) -> None:
    """Rename ONNX graph outputs (and every node input/output using them)."""
    for node in graph.node:
        node.output[:] = [names.get(n, n) for n in node.output]
        node.input[:] = [names.get(n, n) for n in node.input]
    for out in graph.output:
        out.name = names.get(out.name, out.name)


def export_onnx(model_dir: str, out_path: Optional[str] = None,
                opset: int = ONNX_OPSET) -> str:
    """Convert the ``pixels`` signature to ONNX (default path
    ``<version dir>.onnx``): the signature's variables are frozen into
    constants, tf2onnx converts the graph, and the outputs are renamed to the
    signature's output keys. The batch dimension stays dynamic."""
    # The onnx extra is optional: imported here so that TFLite needs none of it.
    try:
        import tf2onnx
    except ImportError as err:
        raise RuntimeError("ONNX export needs the onnx extra: "
                           "pip install -c constraints.txt -e '.[onnx]'") from err
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2)

    path, _, fn = _pixels_signature(model_dir)
    frozen = convert_variables_to_constants_v2(fn)
    inputs = [t.name for t in frozen.inputs if t.dtype != tf.resource]
    keys = sorted(fn.structured_outputs)          # flatten order of a dict
    outputs = [t.name for t in frozen.outputs]
    tf2onnx.logging.set_level(logging.ERROR)
    model_proto, _ = tf2onnx.convert.from_graph_def(
        frozen.graph.as_graph_def(), input_names=inputs, output_names=outputs, opset=opset)
    _rename_outputs(model_proto.graph, dict(zip(outputs, keys)))
    model_proto.graph.input[0].name = PIXELS_SIGNATURE
    for node in model_proto.graph.node:
        node.input[:] = [PIXELS_SIGNATURE if n == inputs[0] else n for n in node.input]
    return _write(model_proto.SerializeToString(), path, out_path, "onnx")


EXPORTERS = {"tflite": export_tflite, "onnx": export_onnx}


class TFLiteModel:
    """A converted model, called one face batch at a time."""

    def __init__(self, path: str):
        self.interpreter = tf.lite.Interpreter(model_path=path)
        (key,) = self.interpreter.get_signature_list()     # the converted signature
        self.runner = self.interpreter.get_signature_runner(key)

    def __call__(self, pixels: np.ndarray) -> Dict[str, np.ndarray]:
        return self.runner(pixels=np.asarray(pixels, np.float32))


class ONNXModel:
    """An ONNX export run by onnxruntime on the CPU: faces ``[N, S, S, 1]`` in,
    the signature's outputs by name out."""

    def __init__(self, path: str):
        import onnxruntime     # the optional onnx extra (see export_onnx)

        self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.output_names: List[str] = [o.name for o in self.session.get_outputs()]

    def __call__(self, pixels: np.ndarray) -> Dict[str, np.ndarray]:
        values = self.session.run(None, {PIXELS_SIGNATURE: np.asarray(pixels, np.float32)})
        return dict(zip(self.output_names, values))


def face_size(model_dir: str) -> int:
    """Side S of the faces the model (and its converted twins) takes."""
    return int(load_config(find_version_dir(model_dir)[1])["image_size"])
