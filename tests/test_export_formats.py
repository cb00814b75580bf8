"""`fermtl export --format tflite|onnx`: the converted model of a pushed model
gives the SavedModel's outputs (probabilities, label id, AU scores, landmarks)
within 1e-4 on faces decoded as serving decodes them."""

import numpy as np
import pytest

from tests.serving_helpers import SIZE, export_tiny, image

OUTPUTS = ("probabilities", "aus", "landmarks")


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """An untrained tiny model with AU and landmark heads, pushed as <base>/fer/2/."""
    base = tmp_path_factory.mktemp("export") / "fer"
    export_tiny(base / "2", heads=True)
    return base


@pytest.fixture(scope="module")
def faces():
    from components import synthetic

    blobs = [s.image for s in synthetic.generate(n_subjects=1, samples_per_emotion=1,
                                                 domains=("lab", "wild"), seed=5)]
    return blobs + [image((64, 64), "JPEG"), image((30, 50))]


def _converted(fmt, path):
    from pipeline.export_formats import ONNXModel, TFLiteModel

    return {"tflite": TFLiteModel, "onnx": ONNXModel}[fmt](path)


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_converted_model_matches_the_saved_model(fmt, pushed, faces, tmp_path):
    import tensorflow as tf

    from models.preprocessing import decode_image
    from pipeline.export_formats import EXPORTERS, face_size

    out = EXPORTERS[fmt](str(pushed), str(tmp_path / f"fer.{fmt}"))
    assert out.endswith(f"fer.{fmt}") and face_size(str(pushed)) == SIZE
    serve = tf.saved_model.load(str(pushed / "2")).signatures["serving_default"]
    want = {k: v.numpy() for k, v in serve(images=tf.constant(faces)).items()}
    model = _converted(fmt, out)
    pixels = decode_image(tf.constant(faces), SIZE).numpy()
    # TFLite keeps the converted batch of 1; ONNX takes the whole batch at once.
    got = ([model(pixels[i:i + 1]) for i in range(len(faces))] if fmt == "tflite"
           else [model(pixels)])
    got = {k: np.concatenate([g[k] for g in got]) for k in got[0]}
    for key in OUTPUTS:
        assert got[key].shape == want[key].shape, key
        np.testing.assert_allclose(got[key], want[key], atol=1e-4, err_msg=key)
    np.testing.assert_array_equal(got["label_id"], want["label_id"])
    assert "label" not in got        # strings stay in the SavedModel


def test_default_paths_and_old_exports(pushed, tmp_path):
    """Written beside the version by default; a model without ``pixels`` is refused."""
    import tensorflow as tf

    from pipeline.export_formats import EXPORTERS

    for fmt, export in EXPORTERS.items():
        assert export(str(pushed)) == str(pushed / f"2.{fmt}")
    old = tmp_path / "old"

    class Old(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def f(self, x):
            return {"y": x}

    m = Old()
    tf.saved_model.save(m, str(old), signatures={"serving_default": m.f})
    for export in EXPORTERS.values():
        with pytest.raises(ValueError, match="no 'pixels' signature"):
            export(str(old))


def test_cli_offers_every_format(pushed, capsys):
    from pipeline import cli
    from pipeline.export_formats import EXPORTERS

    assert cli.main(["export", str(pushed), "--format", "onnx"]) == 0
    assert "'pixels' float32 [N, 32, 32, 1]" in capsys.readouterr().out
    parser = cli.build_parser()
    action = next(a for a in parser._subparsers._group_actions[0].choices["export"]._actions
                  if a.dest == "format")
    assert sorted(action.choices) == sorted(EXPORTERS)
