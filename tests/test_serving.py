"""`fermtl serve` over real sockets: TF Serving's REST API v1 (status,
metadata, :predict row and columnar, :classify), every request limit answered
with a 4xx and counted, malformed HTTP, and concurrent clients answered like a
sequential one. gRPC: test_serving_grpc.py; versions: test_serving_versions.py."""

import concurrent.futures
import time

import numpy as np
import pytest

from components import contract
from tests.serving_helpers import b64, call, export_tiny, image, raw_http

MAX_BODY = 200_000
MAX_INSTANCES = 8
READ_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def model_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("serving") / "fer"
    export_tiny(base / "1")
    return base


@pytest.fixture(scope="module")
def srv(model_base):
    from pipeline.serving import make_server

    server = make_server(str(model_base), rest_port=0, grpc_port=-1, poll_s=0,
                         max_body_bytes=MAX_BODY, max_instances=MAX_INSTANCES,
                         read_timeout_s=READ_TIMEOUT, max_wait_s=0.01)
    with server:
        yield server


@pytest.fixture(scope="module")
def url(srv):
    return srv.rest_url


@pytest.fixture(scope="module")
def reference(model_base):
    """serving_default called in-process on the image every check sends."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(model_base / "1")).signatures["serving_default"]
    return fn(images=tf.constant([image()]))["probabilities"].numpy()[0]


def _still_serving(url, reference):
    status, body = call(f"{url}/v1/models/fer:predict", {"instances": [b64(image())]})
    assert status == 200
    np.testing.assert_allclose(body["predictions"][0]["probabilities"], reference, atol=1e-6)


def test_status_and_metadata(url):
    status, body = call(f"{url}/v1/models/fer")
    assert status == 200
    assert body["model_version_status"] == [{
        "version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]
    status, meta = call(f"{url}/v1/models/fer/versions/1/metadata")
    assert status == 200 and meta["model_spec"] == {"name": "fer", "signature_name": "",
                                                    "version": "1"}
    sigs = meta["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "serving_examples", "classify"} <= set(sigs)
    assert sigs["serving_default"]["inputs"]["images"]["dtype"] == "DT_STRING"
    assert sigs["serving_default"]["method_name"] == "tensorflow/serving/predict"
    assert sigs["classify"]["method_name"] == "tensorflow/serving/classify"
    assert set(sigs["classify"]["outputs"]) == {"classes", "scores"}
    assert "probabilities" in sigs["serving_default"]["outputs"]


def test_predict_row_and_columnar_forms_agree(url, reference):
    images = [image(), image((64, 64), "JPEG"), image((100, 80))]
    status, rows = call(f"{url}/v1/models/fer:predict", {"instances": [b64(i) for i in images]})
    assert status == 200 and len(rows["predictions"]) == 3
    first = rows["predictions"][0]
    assert len(first["probabilities"]) == contract.NUM_EMOTIONS
    assert first["label"] == contract.EMOTIONS[int(np.argmax(first["probabilities"]))]
    np.testing.assert_allclose(first["probabilities"], reference, atol=1e-6)
    status, cols = call(f"{url}/v1/models/fer/versions/1:predict",
                        {"inputs": {"images": [b64(i) for i in images]}})
    assert status == 200
    np.testing.assert_allclose(cols["outputs"]["probabilities"],
                               [p["probabilities"] for p in rows["predictions"]], atol=1e-6)
    status, named = call(f"{url}/v1/models/fer:predict",
                         {"instances": [{"images": b64(images[0])}]})
    assert status == 200
    np.testing.assert_allclose(named["predictions"][0]["probabilities"], reference, atol=1e-6)


def test_examples_and_classify_signatures(url, reference):
    sample = contract.FaceSample(image=image(), dataset="d", uid="u")
    status, out = call(f"{url}/v1/models/fer:predict", {
        "signature_name": "serving_examples", "instances": [b64(sample.serialize())]})
    assert status == 200
    np.testing.assert_allclose(out["predictions"][0]["probabilities"], reference, atol=1e-6)
    status, out = call(f"{url}/v1/models/fer:classify", {
        "signature_name": "classify", "examples": [{"image": b64(image())}] * 2})
    assert status == 200 and len(out["results"]) == 2
    assert [c for c, _ in out["results"][0]] == list(contract.EMOTIONS)
    np.testing.assert_allclose([s for _, s in out["results"][1]], reference, atol=1e-6)
    # serving_default is a predict signature: TF Serving refuses it for Classify, so do we.
    status, out = call(f"{url}/v1/models/fer:classify", {"examples": [{"image": b64(image())}]})
    assert status == 400 and "use signature_name 'classify'" in out["error"]


def _bomb(width=5000, height=4000) -> bytes:
    """A valid gray PNG of 20 M pixels (more than 4096 x 4096) in ~20 KB."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


TRUNCATED = image((64, 64))[:600]   # the header reads, the pixels do not


@pytest.mark.parametrize("payload, raw, status, reason, message", [
    (None, b"{not json", 400, "bad_json", "malformed JSON"),
    ({"instances": [{"b64": "***not base64***"}]}, None, 400, "bad_base64", "invalid base64"),
    ({"instances": [b64(b"these bytes are not an image")]}, None, 400, "bad_image",
     "not an image"),
    ({"instances": [b64(TRUNCATED)]}, None, 400, "model_rejected", "rejected the input"),
    ({"instances": []}, None, 400, "bad_input", "no instances"),
    ({"instances": [{"image": b64(b"x")}]}, None, 400, "bad_input", "the signature takes"),
    ({"instances": [7]}, None, 400, "bad_input", "takes strings"),
    ({"instances": [[b64(image()), [b64(image())]]]}, None, 400, "bad_input", "ragged"),
    ({"instances": [[b64(image()), b64(image())]]}, None, 400, "bad_input", "shape"),
    ({"inputs": {"pictures": []}}, None, 400, "bad_input", "unknown input"),
    ({"instances": [b64(b"x")], "inputs": []}, None, 400, "bad_input", "exactly one"),
    ({"signature_name": "nope", "instances": [b64(b"x")]}, None, 400, "bad_signature",
     "signature_name"),
    ({"instances": [b64(image())] * (MAX_INSTANCES + 1)}, None, 400, "too_many_instances",
     "limit is 8"),
    ({"instances": [b64(_bomb())]}, None, 400, "too_many_pixels", "20000000 pixels"),
    ({"signature_name": "classify", "examples": [{"image": b64(_bomb())}]}, "classify", 400,
     "too_many_pixels", "pixels"),
    (None, b"x" * (MAX_BODY + 1), 413, "body_too_large", "exceeds"),
])
def test_bad_requests_get_a_status_a_message_and_a_count(url, reference, payload, raw, status,
                                                         reason, message):
    verb = "classify" if raw == "classify" else "predict"
    before = call(f"{url}/monitoring/counters")[1].get(reason, 0)
    start = time.perf_counter()
    got, body = call(f"{url}/v1/models/fer:{verb}", payload, None if raw == "classify" else raw)
    assert got == status and message in body["error"], body
    assert time.perf_counter() - start < 5     # a pixel bomb is refused, not decoded
    assert call(f"{url}/monitoring/counters")[1][reason] == before + 1
    _still_serving(url, reference)


@pytest.mark.parametrize("path, status", [
    ("/v1/models/other", 404), ("/v1/models/fer/versions/7", 404),
    ("/v1/models/fer/versions/7/metadata", 404), ("/v2/anything", 404),
    ("/v1/models/../../etc/passwd", 404), ("/v1/models/fer:predict", 405),
])
def test_unknown_model_version_path_and_method(url, path, status):
    got, body = call(f"{url}{path}")
    assert got == status and body["error"]


REQUEST = b"POST /v1/models/fer:predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize("data, status, reason, message", [
    (REQUEST + b"Content-Length: -5\r\n\r\n{}", 400, "bad_http", "Content-Length"),
    (REQUEST + b"Content-Length: 12abc\r\n\r\n{}", 400, "bad_http", "Content-Length"),
    (REQUEST + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400, "bad_http", ""),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64), 400, "bad_http", "malformed"),
    (REQUEST + b"Content-Length: 100\r\n\r\n{\"instances\": [", 408, "read_timeout",
     "did not arrive"),
    (REQUEST + b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1) + b"x" * (MAX_BODY + 1), 413,
     "body_too_large", "exceeds"),
    (REQUEST + b"Transfer-Encoding: chunked\r\n\r\n"
     + b"".join(b"%x\r\n%s\r\n" % (50_000, b"x" * 50_000) for _ in range(5)) + b"0\r\n\r\n",
     413, "body_too_large", "exceeds"),
])
def test_malformed_http_over_a_raw_socket(srv, url, reference, data, status, reason, message):
    before = call(f"{url}/monitoring/counters")[1].get(reason, 0)
    start = time.perf_counter()
    got, body = raw_http(srv.rest_port, data, timeout=READ_TIMEOUT + 10)
    assert got == status and message.encode() in body, body
    assert time.perf_counter() - start < READ_TIMEOUT + 5
    assert call(f"{url}/monitoring/counters")[1][reason] == before + 1
    _still_serving(url, reference)


def test_a_silent_connection_is_closed(srv, url):
    before = call(f"{url}/monitoring/counters")[1].get("idle_closed", 0)
    start = time.perf_counter()
    assert raw_http(srv.rest_port, b"", timeout=READ_TIMEOUT + 10) == (None, b"")
    assert time.perf_counter() - start < READ_TIMEOUT + 5
    assert call(f"{url}/monitoring/counters")[1]["idle_closed"] == before + 1


@pytest.mark.parametrize("head", [b"P", REQUEST, REQUEST + b"Content-Len"])
def test_a_request_head_that_never_completes_gets_408(srv, url, reference, head):
    """A head cut short (slow loris) is answered 408 and closed."""
    before = call(f"{url}/monitoring/counters")[1].get("read_timeout", 0)
    start = time.perf_counter()
    got, body = raw_http(srv.rest_port, head, timeout=READ_TIMEOUT + 10)
    assert got == 408 and b"request head did not arrive" in body
    assert time.perf_counter() - start < READ_TIMEOUT + 5
    assert call(f"{url}/monitoring/counters")[1]["read_timeout"] == before + 1
    _still_serving(url, reference)


def test_concurrent_clients_get_the_sequential_answers(srv, url):
    """16 clients x 5 requests (bounded: 60 s), each a different image; every
    answer is 200 and equals the answer to the same request sent alone."""
    images = [image((40 + i, 52), seed=i) for i in range(8)]
    alone = [call(f"{url}/v1/models/fer:predict", {"instances": [b64(im)]})[1]
             ["predictions"][0]["probabilities"] for im in images]
    batches_before = sum(b.batches for b in srv.manager.get()._batchers.values())

    def client(c):
        out = []
        for r in range(5):
            k = (c + r) % len(images)
            status, body = call(f"{url}/v1/models/fer:predict", {"instances": [b64(images[k])]},
                                timeout=30)
            out.append((k, status, body))
        return out

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = [f.result(timeout=60) for f in [pool.submit(client, c) for c in range(16)]]
    answers = [a for r in results for a in r]
    assert len(answers) == 80 and all(status == 200 for _, status, _ in answers)
    for k, _, body in answers:
        np.testing.assert_allclose(body["predictions"][0]["probabilities"], alone[k], atol=1e-5)
    batches = sum(b.batches for b in srv.manager.get()._batchers.values()) - batches_before
    assert 0 < batches <= 80


def test_batcher_merges_requests_and_isolates_a_failing_one():
    from pipeline.serving.batching import Batcher, BatchingConfig

    calls = []

    def fn(inputs):
        x = inputs["x"]
        calls.append(len(x))
        if (x < 0).any():
            raise ValueError("negative")
        return {"y": x * 2}

    batcher = Batcher(fn, BatchingConfig(max_batch_size=8, max_wait_s=0.5, num_threads=1))
    try:
        futures = [batcher.submit({"x": np.array([float(i)] * (1 + i % 2))}) for i in range(5)]
        bad = batcher.submit({"x": np.array([-1.0])})
        results = [f.result(timeout=10) for f in futures]
        for i, r in enumerate(results):
            np.testing.assert_array_equal(r["y"], [2.0 * i] * (1 + i % 2))
        with pytest.raises(ValueError, match="negative"):
            bad.result(timeout=10)
        # rows 1+2+1+2+1 = 7, then the bad row makes 8: one merged call, which
        # fails and is retried one request at a time.
        assert calls[0] == 8 and sorted(calls[1:]) == [1, 1, 1, 1, 2, 2]
        big = batcher.submit({"x": np.zeros(20)})     # larger than a batch: runs alone
        assert big.result(timeout=10)["y"].shape == (20,)
    finally:
        batcher.close()
    assert not any(t.is_alive() for t in batcher._threads)


def test_batcher_survives_an_output_without_a_batch_axis():
    from pipeline.serving.batching import Batcher, BatchingConfig

    batcher = Batcher(lambda inputs: {"total": np.sum(inputs["x"])},
                      BatchingConfig(max_batch_size=8, max_wait_s=0.3, num_threads=1))
    try:
        futures = [batcher.submit({"x": np.ones(2)}) for _ in range(3)]
        for f in futures:
            with pytest.raises(ValueError, match="no batch axis"):
                f.result(timeout=10)
        assert batcher.submit({"x": np.ones(1)}).result(timeout=10)["total"] == 1.0
    finally:
        batcher.close()
