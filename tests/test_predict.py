"""`fermtl predict` gives the pushed model's own answers: on aligned faces
(``--detector none``) the probabilities of ``serving_default`` on the same
file within 1e-5; with a detector, the crop ingestion would have made at the
model's face size; AU scores and landmarks in the CSV and drawn on the
annotated images; folders and videos."""

import numpy as np
import pytest

from components import contract
from tests.serving_helpers import SIZE, with_heads

FACE_SIZE = 40      # what "ingestion" aligned to; the model input is SIZE (32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A briefly trained tiny model with AU and landmark heads, pushed as <base>/fer/1/."""
    from models import training
    from models.export import export_saved_model
    from tests.method_helpers import synthetic_split

    train, _ = synthetic_split(n_train=8, n_test=2, size=48)
    method, model, cfg, _ = training.train(
        with_heads(), train, preset="small", epochs=2, steps_per_epoch=4, batch_size=16,
        overrides=dict(image_size=SIZE, filters=(4, 8), dense=(8,)), seed=0)
    cfg["ingestion"] = {"image_size": FACE_SIZE, "detector": "haar"}
    base = tmp_path_factory.mktemp("predict") / "fer"
    export_saved_model(method, model, cfg, str(base / "1"))
    return base


@pytest.fixture(scope="module")
def serving_default(trained):
    import tensorflow as tf

    fn = tf.saved_model.load(str(trained / "1")).signatures["serving_default"]
    return lambda blobs: {k: v.numpy() for k, v in fn(images=tf.constant(blobs)).items()}


def _face(seed=1, size=96):
    from components import synthetic

    return next(synthetic.generate(n_subjects=1, samples_per_emotion=1, domains=("lab",),
                                   emotions=("happiness",), size=size, seed=seed)).pixels()


def _canvas(face):
    import cv2

    canvas = np.full((200, 240), 200, np.uint8)
    canvas[40:168, 50:178] = cv2.resize(face, (128, 128))
    return canvas


def test_aligned_faces_get_serving_default_probabilities(trained, serving_default, tmp_path):
    import cv2

    from pipeline.predict import predict_path

    folder = tmp_path / "aligned"
    folder.mkdir()
    for i, ext in enumerate(("png", "jpg", "bmp")):
        face = _face(seed=i, size=48 + 8 * i)
        cv2.imwrite(str(folder / f"f{i}.{ext}"), cv2.cvtColor(face, cv2.COLOR_GRAY2BGR))
    tiff = _face(seed=7, size=60)
    cv2.imwrite(str(folder / "f3.tiff"), tiff)     # not a format TF decodes: sent as PNG
    preds, stats = predict_path(str(folder), str(trained), detector="none")
    assert stats["faces"] == 4 and not stats["unreadable"]
    for p in preds:
        blob = contract.encode_png(tiff) if p.source.endswith(".tiff") else \
            open(p.source, "rb").read()
        want = serving_default([blob])
        np.testing.assert_allclose(p.probabilities, want["probabilities"][0], atol=1e-5)
        np.testing.assert_allclose(p.aus, want["aus"][0], atol=1e-5)
    probs = np.asarray([p.probabilities for p in preds])
    assert probs.std(0).max() > 1e-3, "a trained model tells these faces apart"


def test_detector_crops_as_ingestion_did(trained, serving_default, tmp_path):
    import cv2

    from components.ingestion.align import FaceAligner
    from pipeline.predict import Predictor, predict_path

    assert Predictor(str(trained)).face_size == FACE_SIZE
    canvas = _canvas(_face())
    cv2.imwrite(str(tmp_path / "scene.png"), canvas)
    (pred,), _ = predict_path(str(tmp_path / "scene.png"), str(trained), detector="haar")
    ingested = FaceAligner("haar", output_size=FACE_SIZE).align_pixels(canvas)
    want = serving_default([contract.encode_png(ingested.pixels)])["probabilities"][0]
    np.testing.assert_allclose(pred.probabilities, want, atol=1e-5)


def test_aus_and_landmarks_in_the_csv_and_on_the_image(trained, serving_default, tmp_path):
    import csv

    import cv2

    from pipeline.predict import predict_path

    face = _face(size=64)
    cv2.imwrite(str(tmp_path / "face.png"), face)
    (pred,), _ = predict_path(str(tmp_path / "face.png"), str(trained), detector="none",
                              out_csv=str(tmp_path / "p.csv"), annotate_dir=str(tmp_path / "a"))
    want = serving_default([open(tmp_path / "face.png", "rb").read()])
    lm = want["landmarks"][0].reshape(-1, 2) * 64          # [0, 1] of the face -> pixels
    np.testing.assert_allclose(pred.landmarks, lm, atol=1e-3)
    with open(tmp_path / "p.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["AU12"]) == pytest.approx(want["aus"][0][contract.AU_NAMES.index("AU12")],
                                               abs=1e-4)
    assert float(row["lm30_x"]) == pytest.approx(lm[30, 0], abs=0.01)
    assert float(row["lm67_y"]) == pytest.approx(lm[67, 1], abs=0.01)
    drawn = cv2.imread(str(tmp_path / "a" / "face_annotated.png"))
    x, y = (int(round(v)) for v in lm[30])
    assert tuple(drawn[y, x]) == (40, 40, 230), "landmark 30 is drawn where it was predicted"


def test_predict_images_folder_and_video(trained, tmp_path):
    import cv2

    from pipeline.predict import predict_path

    canvas = _canvas(_face())
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "face.png"), canvas)
    cv2.imwrite(str(folder / "blank.png"), np.full((120, 120), 128, np.uint8))
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    preds, stats = predict_path(str(folder), str(trained), out_csv=str(tmp_path / "p.csv"),
                                annotate_dir=str(tmp_path / "ann"))
    assert stats["images"] == 2 and stats["no_face"] == 1
    assert [p for p, _ in stats["unreadable"]] == [str(folder / "broken.png")]
    assert stats["faces"] >= 1 and all(p.source.endswith("face.png") for p in preds)
    x, y, w, h = preds[0].box
    assert 20 <= x <= 90 and 20 <= y <= 90 and 80 <= w <= 180, preds[0].box
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0].startswith("source,face,x,y,w,h,label,confidence") and len(rows) == 1 + len(preds)
    assert (tmp_path / "ann" / "face_annotated.png").stat().st_size > 1000
    assert stats["images_per_s"] > 0

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (240, 200))
    for _ in range(6):
        writer.write(cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR))
    writer.release()
    preds, stats = predict_path(str(video), str(trained), every=2)
    assert stats["images"] == 3 and stats["faces"] >= 3
    assert preds[0].source == f"{video}#0"
