"""`fermtl export --format tflite`: the TFLite model of a pushed model gives
the SavedModel's predictions within 1e-4 on faces decoded as serving decodes
them, and its AU/landmark outputs too."""

import numpy as np
import pytest

from tests.serving_helpers import SIZE, export_tiny, image


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    base = tmp_path_factory.mktemp("tflite") / "fer"
    export_tiny(base / "2")
    return base


def test_tflite_matches_the_saved_model(pushed, tmp_path):
    import tensorflow as tf

    from components import synthetic
    from models.preprocessing import decode_image
    from pipeline.export_formats import TFLiteModel, export_tflite, face_size

    out = export_tflite(str(pushed), str(tmp_path / "fer.tflite"))
    assert out.endswith("fer.tflite") and face_size(str(pushed)) == SIZE
    faces = [s.image for s in synthetic.generate(n_subjects=1, samples_per_emotion=1,
                                                 domains=("lab", "wild"), seed=5)]
    faces += [image((64, 64), "JPEG"), image((30, 50))]
    serve = tf.saved_model.load(str(pushed / "2")).signatures["serving_default"]
    want = serve(images=tf.constant(faces))
    lite = TFLiteModel(out)
    for i, blob in enumerate(faces):
        got = lite(decode_image(tf.constant([blob]), SIZE).numpy())
        np.testing.assert_allclose(got["probabilities"][0], want["probabilities"][i], atol=1e-4)
        assert got["label_id"][0] == want["label_id"][i]
    assert "label" not in got        # strings stay in the SavedModel


def test_default_path_and_old_exports(pushed, tmp_path):
    """Written beside the version by default; a model without ``pixels`` is refused."""
    import tensorflow as tf

    from pipeline.export_formats import export_tflite

    assert export_tflite(str(pushed)) == str(pushed / "2.tflite")
    old = tmp_path / "old"

    class Old(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def f(self, x):
            return {"y": x}

    m = Old()
    tf.saved_model.save(m, str(old), signatures={"serving_default": m.f})
    with pytest.raises(ValueError, match="no 'pixels' signature"):
        export_tflite(str(old))
