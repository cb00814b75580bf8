"""`fermtl serve` answers real HTTP requests like TF Serving's REST API v1;
`fermtl predict` finds, classifies and annotates faces."""

import base64
import io
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from components import contract

MAX_BODY = 200_000


@pytest.fixture(scope="module")
def model_base(tmp_path_factory):
    """An (untrained) baseline exported as <base>/fer/1/."""
    from models.export import export_saved_model
    from models.registry import get_method

    method = get_method("baseline")
    cfg = method.config("small")
    base = tmp_path_factory.mktemp("serving") / "fer"
    export_saved_model(method, method.build(cfg), cfg, str(base / "1"))
    return base


@pytest.fixture(scope="module")
def server(model_base):
    from pipeline.serving import make_server

    srv = make_server(str(model_base), port=0, max_body=MAX_BODY)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _png(size=(40, 52), mode="L"):
    rng = np.random.default_rng(size[0])
    arr = rng.integers(0, 255, size=(size[1], size[0], 3 if mode == "RGB" else 1), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr.squeeze(), mode=mode).save(buf, format="PNG" if mode == "L" else "JPEG")
    return buf.getvalue()


def _b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def _call(url, body=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_status_and_metadata(server):
    status, body = _call(f"{server}/v1/models/fer")
    assert status == 200
    assert body["model_version_status"][0] == {
        "version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    status, meta = _call(f"{server}/v1/models/fer/metadata")
    sigs = meta["metadata"]["signature_def"]["signature_def"]
    assert status == 200 and {"serving_default", "serving_examples"} <= set(sigs)
    assert sigs["serving_default"]["inputs"]["images"]["dtype"] == "DT_STRING"
    assert "probabilities" in sigs["serving_default"]["outputs"]


def test_predict_row_and_columnar_forms_agree(server):
    images = [_png((40, 52)), _png((64, 64), "RGB"), _png((100, 80))]
    status, rows = _call(f"{server}/v1/models/fer:predict",
                         {"instances": [_b64(i) for i in images]})
    assert status == 200 and len(rows["predictions"]) == 3
    first = rows["predictions"][0]
    assert len(first["probabilities"]) == contract.NUM_EMOTIONS
    assert first["label"] in contract.EMOTIONS
    assert abs(sum(first["probabilities"]) - 1) < 1e-4
    status, cols = _call(f"{server}/v1/models/fer/versions/1:predict",
                         {"inputs": {"images": [_b64(i) for i in images]}})
    assert status == 200
    np.testing.assert_allclose(cols["outputs"]["probabilities"],
                               [p["probabilities"] for p in rows["predictions"]], atol=1e-6)
    status, named = _call(f"{server}/v1/models/fer:predict",
                          {"instances": [{"images": _b64(images[0])}]})
    assert status == 200
    np.testing.assert_allclose(named["predictions"][0]["probabilities"],
                               first["probabilities"], atol=1e-6)


def test_examples_signature(server):
    sample = contract.FaceSample(image=_png(), dataset="d", uid="u")
    status, out = _call(f"{server}/v1/models/fer:predict", {
        "signature_name": "serving_examples", "instances": [_b64(sample.serialize())]})
    assert status == 200 and len(out["predictions"]) == 1


@pytest.mark.parametrize("payload, raw, status, message", [
    (None, b"{not json", 400, "malformed JSON"),
    ({"instances": [{"b64": "***not base64***"}]}, None, 400, "invalid base64"),
    ({"instances": [_b64(b"these bytes are not an image")]}, None, 400, "rejected the input"),
    ({"instances": []}, None, 400, "empty"),
    ({"instances": [{"image": _b64(b"x")}]}, None, 400, "unknown input"),
    ({"inputs": {"pictures": []}}, None, 400, "unknown input"),
    ({"instances": [_b64(b"x")], "inputs": []}, None, 400, "exactly one"),
    ({"signature_name": "nope", "instances": [_b64(b"x")]}, None, 400, "signature_name"),
    (None, b"x" * (MAX_BODY + 1), 413, "exceeds"),
])
def test_bad_requests_get_a_status_and_a_message(server, payload, raw, status, message):
    got, body = _call(f"{server}/v1/models/fer:predict", payload, raw)
    assert got == status and message in body["error"]
    # ... and the server keeps answering.
    assert _call(f"{server}/v1/models/fer")[0] == 200


def test_unknown_model_and_path(server):
    assert _call(f"{server}/v1/models/other")[0] == 404
    assert _call(f"{server}/v1/models/fer/versions/7")[0] == 404
    assert _call(f"{server}/v2/anything")[0] == 404


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
