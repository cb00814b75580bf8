"""Export any method as a TF Serving SavedModel with the same signatures.

``export_saved_model(method, model, cfg, export_dir)`` saves a ``tf.Module``
holding the method's inference model with:

``serving_default``
    input ``images``: ``tf.string [None]``, encoded images (PNG/JPEG/BMP/GIF,
    any size, gray or colour), decoded, converted to gray and resized to
    ``cfg["image_size"]`` by :func:`models.preprocessing.decode_image` (the
    training preprocessing).
``serving_examples``
    input ``examples``: ``tf.string [None]``, serialized ``tf.train.Example``
    of the contract; only ``image`` is parsed (and required), so unlabelled
    examples work.

``classify``
    TF Serving's Classify API (method ``tensorflow/serving/classify``): input
    ``inputs``, serialized examples as for ``serving_examples``; outputs
    ``classes`` ``[B, 8]`` string (``contract.EMOTIONS``) and ``scores``
    ``[B, 8]`` float32 (the probabilities).

``pixels``
    input ``pixels``: ``float32 [None, S, S, 1]``, faces already decoded as
    ``serving_default`` decodes them (gray, resized, in [0, 1]); the numeric
    outputs only. The graph ``fermtl export --format tflite`` converts.

The first two return ``probabilities`` ``[B, 8]`` float32 over ``contract.EMOTIONS``,
``label_id`` ``[B]`` int64 (argmax), ``label`` ``[B]`` string (canonical
emotion name), plus every other output of the inference model (``aus``
``[B, 17]``, ``landmarks`` ``[B, 136]``, ``embedding``, ``compound`` ...)
as float32. ``method.extra_signatures(model, cfg)`` are added under their
names. ``cfg`` is written to ``<export_dir>/assets.extra/fermtl_config.json``
(TF Serving's side-car directory).

``export_dir`` is the version directory; the ``<base>/<version>/`` layout is
the Pusher's business.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, Iterable, Optional

import numpy as np
import tensorflow as tf

from tensorflow.core.protobuf import saved_model_pb2
# Private, but the only writer of fingerprint.pb; the signature rewrite below
# changes saved_model.pb, whose checksum the fingerprint records.
from tensorflow.python.saved_model import fingerprinting_utils

from components import contract
from models import preprocessing

CONFIG_FILE = "fermtl_config.json"
EXTRA_DIR = "assets.extra"
CLASSIFY_SIGNATURE = "classify"
CLASSIFY_METHOD = "tensorflow/serving/classify"
PIXELS_SIGNATURE = "pixels"


class _ServingModule(tf.Module):
    """Holds the inference model (and, with extra signatures, the training model)."""

    def __init__(self, infer, image_size: int, preprocess=None, training_model=None,
                 extra_trackables=None):
        super().__init__(name="fermtl_serving")
        self.model = infer
        self.image_size = int(image_size)
        self._preprocess = preprocess
        if training_model is not None:
            self.training_model = training_model
        for name, obj in (extra_trackables or {}).items():
            setattr(self, name, obj)
        self._emotions = tf.constant(list(contract.EMOTIONS))

    def decode(self, image_bytes: tf.Tensor) -> tf.Tensor:
        if self._preprocess is not None:
            return self._preprocess(image_bytes)
        return preprocessing.decode_image(image_bytes, self.image_size)

    def outputs(self, images: tf.Tensor) -> Dict[str, tf.Tensor]:
        out = {k: tf.cast(v, tf.float32) for k, v in self.model(images, training=False).items()}
        label_id = tf.argmax(out["probabilities"], axis=-1, output_type=tf.int64)
        out["label_id"] = label_id
        out["label"] = tf.gather(self._emotions, label_id)
        return out

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_images(self, images):
        return self.outputs(self.decode(images))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(self, examples):
        return self.outputs(self.decode(self._parse_images(examples)))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def serve_classify(self, inputs):
        scores = self.outputs(self.decode(self._parse_images(inputs)))["probabilities"]
        classes = tf.broadcast_to(self._emotions[tf.newaxis], tf.shape(scores))
        return {"classes": classes, "scores": scores}

    def serve_pixels(self, pixels):
        return {k: v for k, v in self.outputs(pixels).items() if v.dtype != tf.string}

    @staticmethod
    def _parse_images(examples: tf.Tensor) -> tf.Tensor:
        spec = {"image": tf.io.FixedLenFeature([], tf.string)}
        return tf.io.parse_example(examples, spec)["image"]


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def export_saved_model(method, model, cfg: Dict[str, Any], export_dir: str,
                       preprocess: Optional[Callable[[tf.Tensor], tf.Tensor]] = None,
                       extra_trackables: Optional[Dict[str, Any]] = None) -> str:
    """Write the SavedModel of ``model`` (built by ``method`` with ``cfg``) to
    ``export_dir``; returns ``export_dir``.

    ``preprocess`` replaces the default image decoding of both signatures: a
    function from the ``[B]`` encoded-image strings to the ``[B, S, S, 1]``
    model input (e.g. the TF Transform layer in the TFX Trainer).
    ``extra_trackables`` (name -> object) are attached to the saved module so
    that resources captured by ``preprocess`` (Transform's tables and
    variables) are saved with it."""
    infer = method.inference_model(model, cfg)
    extra = dict(method.extra_signatures(model, cfg) or {})
    module = _ServingModule(infer, cfg["image_size"], preprocess=preprocess,
                            training_model=model if extra else None,
                            extra_trackables=extra_trackables)
    signatures = {
        "serving_default": module.serve_images.get_concrete_function(),
        "serving_examples": module.serve_examples.get_concrete_function(),
        CLASSIFY_SIGNATURE: module.serve_classify.get_concrete_function(),
        PIXELS_SIGNATURE: tf.function(module.serve_pixels, input_signature=[tf.TensorSpec(
            [None, module.image_size, module.image_size, 1], tf.float32, name="pixels")]
        ).get_concrete_function(),
    }
    for name, fn in extra.items():
        if name in signatures:
            raise ValueError(f"extra signature {name!r} clashes with a standard one")
        setattr(module, f"extra_{name}", fn)
        signatures[name] = fn.get_concrete_function() if hasattr(fn, "get_concrete_function") \
            else fn
    tf.io.gfile.makedirs(export_dir)
    tf.saved_model.save(module, export_dir, signatures=signatures)
    set_method_name(export_dir, CLASSIFY_SIGNATURE, CLASSIFY_METHOD)
    extra_dir = os.path.join(export_dir, EXTRA_DIR)
    tf.io.gfile.makedirs(extra_dir)
    with tf.io.gfile.GFile(os.path.join(extra_dir, CONFIG_FILE), "w") as f:
        f.write(json.dumps(_jsonable(cfg), indent=2, sort_keys=True))
    return export_dir


def set_method_name(export_dir: str, signature: str, method_name: str) -> None:
    """Rewrite ``signature``'s method name in ``export_dir/saved_model.pb``
    (``tf.saved_model.save`` writes every signature as ``.../predict``; TF
    Serving's Classify API only takes a ``.../classify`` one)."""
    path = os.path.join(export_dir, "saved_model.pb")
    proto = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(path, "rb") as f:
        proto.ParseFromString(f.read())
    for meta_graph in proto.meta_graphs:
        meta_graph.signature_def[signature].method_name = method_name
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(proto.SerializeToString())
    fingerprinting_utils.write_fingerprint(export_dir)


def load_config(export_dir: str) -> Dict[str, Any]:
    """The ``cfg`` written next to an exported model."""
    with tf.io.gfile.GFile(os.path.join(export_dir, EXTRA_DIR, CONFIG_FILE)) as f:
        return json.load(f)


def _to_numpy(out: Dict[str, tf.Tensor]) -> Dict[str, Any]:
    res = {k: v.numpy() for k, v in out.items()}
    if "label" in res:
        res["label"] = [x.decode("utf-8") for x in res["label"]]
    return res


def load_and_predict(export_dir: str, image_bytes_list: Iterable[bytes],
                     signature: str = "serving_default",
                     loaded: Optional[Any] = None) -> Dict[str, Any]:
    """Run ``signature`` of the SavedModel in ``export_dir`` on encoded images
    (``serving_default``) or serialized examples (``serving_examples``);
    returns numpy arrays, ``label`` as a list of str. Pass ``loaded`` (a
    ``tf.saved_model.load`` result) to avoid reloading."""
    loaded = loaded if loaded is not None else tf.saved_model.load(export_dir)
    fn = loaded.signatures[signature]
    arg = {"serving_default": "images", "serving_examples": "examples"}.get(signature)
    data = tf.constant([bytes(b) for b in image_bytes_list], tf.string)
    out = fn(**{arg: data}) if arg else fn(data)
    return _to_numpy(out)
