"""`fermtl serve`'s gRPC front end, called with the official
``tensorflow-serving-api`` client stubs over a real socket: Predict,
Classify, GetModelMetadata and GetModelStatus, and client errors answered
with INVALID_ARGUMENT / NOT_FOUND, after which the server still answers, and
a message over the body limit refused with RESOURCE_EXHAUSTED and counted."""

import io

import grpc
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from components import contract
from pipeline.serving.grpc_api import GRPC_CAP_FACTOR
from tests.serving_helpers import b64, call, export_tiny, image


@pytest.fixture(scope="module")
def model_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("grpc") / "fer"
    export_tiny(base / "3")
    return base


BODY_LIMIT = 1 << 20


@pytest.fixture(scope="module")
def srv(model_base):
    from pipeline.serving import make_server

    with make_server(str(model_base), rest_port=0, grpc_port=0, poll_s=0,
                     max_instances=4, max_body_bytes=BODY_LIMIT) as server:
        yield server


@pytest.fixture(scope="module")
def channel(srv):
    with grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}") as ch:
        grpc.channel_ready_future(ch).result(timeout=30)
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _predict_request(images, signature="", version=None, output_filter=()):
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "fer"
    req.model_spec.signature_name = signature
    if version is not None:
        req.model_spec.version.value = version
    req.inputs["images"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    req.output_filter.extend(output_filter)
    return req


def test_predict_matches_rest(srv, stub):
    images = [image(), image((64, 64), "JPEG")]
    reply = stub.Predict(_predict_request(images), timeout=30)
    assert reply.model_spec.name == "fer" and reply.model_spec.version.value == 3
    assert reply.model_spec.signature_name == "serving_default"
    probs = tf.make_ndarray(reply.outputs["probabilities"])
    labels = tf.make_ndarray(reply.outputs["label"])
    assert probs.shape == (2, contract.NUM_EMOTIONS)
    assert [x.decode() for x in labels] == [contract.EMOTIONS[i] for i in probs.argmax(-1)]
    status, rest = call(f"{srv.rest_url}/v1/models/fer:predict",
                        {"instances": [b64(i) for i in images]})
    assert status == 200
    np.testing.assert_allclose(probs, [p["probabilities"] for p in rest["predictions"]],
                               atol=1e-6)
    only = stub.Predict(_predict_request(images, version=3, output_filter=["label_id"]))
    assert list(only.outputs) == ["label_id"]
    np.testing.assert_array_equal(tf.make_ndarray(only.outputs["label_id"]), probs.argmax(-1))


def test_classify(stub):
    req = classification_pb2.ClassificationRequest()
    req.model_spec.name, req.model_spec.signature_name = "fer", "classify"
    for seed in (1, 2):
        req.input.example_list.examples.add().CopyFrom(
            contract.FaceSample(image=image(seed=seed), dataset="d", uid="u").to_example())
    reply = stub.Classify(req, timeout=30)
    rows = reply.result.classifications
    assert len(rows) == 2 and [c.label for c in rows[0].classes] == list(contract.EMOTIONS)
    assert abs(sum(c.score for c in rows[1].classes) - 1) < 1e-4


def test_metadata_and_status(channel, stub):
    req = get_model_metadata_pb2.GetModelMetadataRequest()
    req.model_spec.name = "fer"
    req.metadata_field.append("signature_def")
    reply = stub.GetModelMetadata(req, timeout=30)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert reply.metadata["signature_def"].Unpack(sig_map)
    sigs = sig_map.signature_def
    assert sigs["serving_default"].method_name == "tensorflow/serving/predict"
    assert sigs["classify"].method_name == "tensorflow/serving/classify"
    assert sigs["serving_default"].inputs["images"].dtype == tf.string.as_datatype_enum
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "fer"}), timeout=30)
    (v,) = status.model_version_status
    assert v.version == 3 and v.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (5000, 4000)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("request_, code, message", [
    (_predict_request([image()], signature="nope"), "INVALID_ARGUMENT", "signature_name"),
    (_predict_request([image()], signature="classify"), "INVALID_ARGUMENT", "classify"),
    (_predict_request([image()], version=9), "NOT_FOUND", "version 9"),
    (_predict_request([b"not an image"]), "INVALID_ARGUMENT", "not an image"),
    (_predict_request([_bomb()]), "INVALID_ARGUMENT", "pixels"),
    (_predict_request([image()] * 5), "INVALID_ARGUMENT", "limit is 4"),
    (_predict_request([[image()]]), "INVALID_ARGUMENT", "shape"),
    (_predict_request([image()], output_filter=["nope"]), "INVALID_ARGUMENT", "output_filter"),
])
def test_client_errors(srv, stub, request_, code, message):
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(request_, timeout=30)
    assert err.value.code().name == code and message in err.value.details()
    wrong_model = _predict_request([image()])
    wrong_model.model_spec.name = "other"
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(wrong_model, timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert stub.Predict(_predict_request([image()]), timeout=30).outputs["probabilities"]


def _counters(srv) -> dict:
    return call(f"{srv.rest_url}/monitoring/counters")[1]


def test_oversize_message_refused_and_counted(srv, stub):
    before = _counters(srv)
    big = _predict_request([image(), b"x" * BODY_LIMIT])
    assert BODY_LIMIT < big.ByteSize() < GRPC_CAP_FACTOR * BODY_LIMIT
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(big, timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"{big.ByteSize()} bytes exceeds the {BODY_LIMIT}-byte limit" in err.value.details()
    after = _counters(srv)
    assert after.get("body_too_large", 0) == before.get("body_too_large", 0) + 1
    assert after["requests"] == before["requests"] + 1
    # Above grpcio's own cap grpcio refuses it first (not counted: no handler runs).
    huge = _predict_request([b"x" * (GRPC_CAP_FACTOR * BODY_LIMIT)])
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(huge, timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Still serving; a request of a few hundred KB, under the limit, is answered.
    fits = _predict_request([image((700, 700))])
    assert BODY_LIMIT // 3 < fits.ByteSize() < BODY_LIMIT
    assert stub.Predict(fits, timeout=30).outputs["probabilities"]
    assert _counters(srv)["ok"] >= after.get("ok", 0) + 1
