"""Serving export (models/export.py) of a tiny (untrained) baseline: both
signatures answer raw PNG/JPEG images of any size, gray or colour, and
serialized contract examples (with or without labels), and agree with the
in-memory model."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components import contract
from models import export, preprocessing
from models.baseline import BaselineCNN

SIZE = 32


class _WithEmbedSignature(BaselineCNN):
    """The baseline plus an extra exported signature, like FERSNet's ``synthesize``."""

    def extra_signatures(self, model, cfg):
        infer = self.inference_model(model, cfg)

        @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 1], tf.float32,
                                                    name="image")])
        def embed(image):
            return {"embedding": infer(image, training=False)["embedding"]}

        return {"embed": embed}


@pytest.fixture(scope="module")
def tiny():
    method = _WithEmbedSignature()
    cfg = method.config("small", image_size=SIZE, filters=(4, 8), dense=(8,))
    model = method.build(cfg)
    # Pretend training saw a 7-class dataset: contempt must get probability 0.
    mask = np.zeros((1, 8), np.float32)
    mask[0, :7] = 1
    model.net.get_layer("label_set").update(mask)
    return method, model, cfg


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    method, model, cfg = tiny
    out = str(tmp_path_factory.mktemp("export") / "7")
    assert export.export_saved_model(method, model, cfg, out) == out
    return out, tf.saved_model.load(out)


def _encode(pixels, fmt):
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _images():
    rng = np.random.default_rng(0)
    return [
        _encode(rng.integers(0, 256, (40, 30), dtype=np.uint8), "PNG"),  # gray, not square
        _encode(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "PNG"),  # RGB
        _encode(rng.integers(0, 256, (50, 50), dtype=np.uint8), "JPEG"),  # gray JPEG
        _encode(rng.integers(0, 256, (21, 35, 3), dtype=np.uint8), "JPEG"),  # RGB JPEG
        _encode(rng.integers(0, 256, (16, 16, 4), dtype=np.uint8), "PNG"),  # RGBA, small
    ]


def _reference(tiny, images):
    method, model, cfg = tiny
    x = preprocessing.decode_image(tf.constant(images), SIZE)
    return {k: np.asarray(v) for k, v in method.inference_model(model, cfg)(x).items()}


def test_layout_and_config(exported, tiny):
    out, loaded = exported
    assert os.path.exists(os.path.join(out, "saved_model.pb"))
    cfg = export.load_config(out)
    assert cfg["method"] == "baseline" and cfg["image_size"] == SIZE
    assert cfg == json.loads(json.dumps(export._jsonable(tiny[2])))
    assert {"serving_default", "serving_examples", "embed"} <= set(loaded.signatures)
    for name, arg in (("serving_default", "images"), ("serving_examples", "examples")):
        spec = loaded.signatures[name].structured_input_signature[1][arg]
        assert spec.dtype == tf.string and spec.shape.as_list() == [None]


def test_serving_default_answers_raw_images(exported, tiny):
    out, loaded = exported
    images = _images()
    got = export.load_and_predict(out, images, loaded=loaded)
    ref = _reference(tiny, images)
    assert got["probabilities"].shape == (len(images), 8)
    assert got["probabilities"].dtype == np.float32
    np.testing.assert_allclose(got["probabilities"], ref["probabilities"], atol=1e-6)
    np.testing.assert_allclose(got["embedding"], ref["embedding"], atol=1e-5)
    np.testing.assert_allclose(got["probabilities"].sum(-1), 1.0, atol=1e-5)
    assert (got["probabilities"][:, 7] == 0).all()  # contempt never seen
    ids = ref["probabilities"].argmax(-1)
    np.testing.assert_array_equal(got["label_id"], ids)
    assert got["label_id"].dtype == np.int64
    assert got["label"] == [contract.EMOTIONS[i] for i in ids]


def test_serving_examples_with_and_without_labels(exported, tiny):
    out, loaded = exported
    images = _images()
    labelled = [contract.FaceSample(image=img, dataset="d", uid=str(i), emotion=i,
                                    emotion_mask=np.ones(8)).serialize()
                for i, img in enumerate(images)]
    bare = [tf.train.Example(features=tf.train.Features(feature={
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[img]))}))
        .SerializeToString() for img in images]
    ref = _reference(tiny, images)
    for examples in (labelled, bare):
        got = export.load_and_predict(out, examples, signature="serving_examples",
                                      loaded=loaded)
        np.testing.assert_allclose(got["probabilities"], ref["probabilities"], atol=1e-6)
        assert got["label"] == [contract.EMOTIONS[i] for i in ref["probabilities"].argmax(-1)]


def test_extra_signature_is_exported(exported, tiny):
    _, loaded = exported
    x = preprocessing.decode_image(tf.constant(_images()[:2]), SIZE)
    got = loaded.signatures["embed"](image=x)["embedding"].numpy()
    np.testing.assert_allclose(got, _reference(tiny, _images()[:2])["embedding"], atol=1e-5)


def test_custom_preprocess_and_extra_trackables(tiny, tmp_path):
    """The TFX Trainer passes Transform's layer as ``preprocess``; resources it
    captures must be saved through ``extra_trackables``."""
    method, model, cfg = tiny
    scale = tf.Variable(0.5)

    def preprocess(image_bytes):
        return preprocessing.decode_image(image_bytes, SIZE) * scale

    out = export.export_saved_model(method, model, cfg, str(tmp_path / "1"),
                                    preprocess=preprocess,
                                    extra_trackables={"transform_scale": scale})
    images = _images()[:3]
    got = export.load_and_predict(out, images)
    x = preprocessing.decode_image(tf.constant(images), SIZE) * 0.5
    ref = np.asarray(method.inference_model(model, cfg)(x)["probabilities"])
    np.testing.assert_allclose(got["probabilities"], ref, atol=1e-6)
