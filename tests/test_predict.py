"""`fermtl predict` finds, classifies and annotates faces in images, folders
and videos with a pushed model."""

import numpy as np
import pytest

from tests.serving_helpers import export_tiny


@pytest.fixture(scope="module")
def model_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("predict") / "fer"
    export_tiny(base / "1")
    return base


def test_predict_images_folder_and_video(model_base, tmp_path):
    import cv2

    from components import synthetic
    from pipeline.predict import predict_path

    face = next(synthetic.generate(n_subjects=1, samples_per_emotion=1, domains=("lab",),
                                   emotions=("happiness",), size=96, seed=1)).pixels()
    canvas = np.full((200, 240), 200, np.uint8)
    canvas[40:168, 50:178] = cv2.resize(face, (128, 128))
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "face.png"), canvas)
    cv2.imwrite(str(folder / "blank.png"), np.full((120, 120), 128, np.uint8))
    preds, stats = predict_path(str(folder), str(model_base), out_csv=str(tmp_path / "p.csv"),
                                annotate_dir=str(tmp_path / "ann"))
    assert stats["images"] == 2 and stats["no_face"] == 1
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
    preds, stats = predict_path(str(video), str(model_base), every=2)
    assert stats["images"] == 3 and stats["faces"] >= 3
    assert preds[0].source == f"{video}#0"
