"""``fermtl export MODEL --format tflite``: a pushed model's ``pixels``
signature (decoded faces in, numeric outputs out; see models/export.py)
converted to TensorFlow Lite.

The TFLite model takes ``float32 [1, S, S, 1]`` faces in [0, 1], decoded as
``serving_default`` decodes them (:func:`models.preprocessing.decode_image`:
gray, bilinear antialiased resize to S); its outputs are the SavedModel's
numeric ones (``probabilities``, ``label_id``, ``aus``, ``landmarks`` ...).
ONNX is not offered: no ONNX converter is pinned beside TF 2.16 here.
"""

from __future__ import annotations

import os
from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from models.export import PIXELS_SIGNATURE, load_config
from pipeline.serving import find_version_dir

FORMATS = ("tflite",)


def export_tflite(model_dir: str, out_path: Optional[str] = None) -> str:
    """Convert the ``pixels`` signature of the pushed model in ``model_dir``
    (a base dir: its latest version) to ``out_path`` (default
    ``<version dir>/../<version>.tflite``); returns the path written."""
    _, path = find_version_dir(model_dir)
    loaded = tf.saved_model.load(path)
    if PIXELS_SIGNATURE not in loaded.signatures:
        raise ValueError(f"{path} has no {PIXELS_SIGNATURE!r} signature (exported before it "
                         "existed): re-export the model to convert it")
    # from_saved_model(signature_keys=...) aborts in the TF 2.16 converter on
    # these SavedModels (their other signatures hold string ops); the concrete
    # function converts cleanly.
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [loaded.signatures[PIXELS_SIGNATURE]], loaded)
    data = converter.convert()
    out_path = out_path or os.path.join(os.path.dirname(os.path.normpath(path)),
                                        f"{os.path.basename(os.path.normpath(path))}.tflite")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "wb") as f:
        f.write(data)
    return out_path


class TFLiteModel:
    """A converted model, called one face batch at a time."""

    def __init__(self, path: str):
        self.interpreter = tf.lite.Interpreter(model_path=path)
        (key,) = self.interpreter.get_signature_list()     # the converted signature
        self.runner = self.interpreter.get_signature_runner(key)

    def __call__(self, pixels: np.ndarray) -> Dict[str, np.ndarray]:
        return self.runner(pixels=np.asarray(pixels, np.float32))


def face_size(model_dir: str) -> int:
    """Side S of the faces the model (and its TFLite twin) takes."""
    return int(load_config(find_version_dir(model_dir)[1])["image_size"])
