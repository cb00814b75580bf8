"""TF Serving's gRPC API (``tensorflow.serving.PredictionService``: Predict,
Classify, GetModelMetadata; ``ModelService.GetModelStatus``) on grpcio with
the official ``tensorflow-serving-api`` protos.

Client errors are ``INVALID_ARGUMENT`` (``NOT_FOUND`` for a model or version),
counted like their REST twins. A request message over the body limit is
refused with ``RESOURCE_EXHAUSTED`` by :class:`BodyLimit` before it is parsed,
and counted as REST's 413 is (``body_too_large``). grpcio's own cap sits at
``GRPC_CAP_FACTOR`` times the limit: a message above it is refused by grpcio
(also ``RESOURCE_EXHAUSTED``) before any handler sees it, so it is not counted.
"""

from __future__ import annotations

import concurrent.futures
from typing import Dict

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc, status_pb2)

from pipeline.serving.limits import Counters, Limits, RequestError
from pipeline.serving.rest import run_model_error
from pipeline.serving.versions import CLASSIFY_METHOD, PREDICT_METHOD, ModelManager

# grpcio refuses a message above its own cap before any handler (or
# interceptor's behaviour) runs, uncounted; ours is checked below it.
GRPC_CAP_FACTOR = 2

_STATES = {"LOADING": get_model_status_pb2.ModelVersionStatus.LOADING,
           "AVAILABLE": get_model_status_pb2.ModelVersionStatus.AVAILABLE,
           "END": get_model_status_pb2.ModelVersionStatus.END}


class _Handlers:
    def __init__(self, manager: ModelManager, limits: Limits, counters: Counters):
        self.manager, self.limits, self.counters = manager, limits, counters

    def _served(self, model_spec):
        if model_spec.name != self.manager.name:
            raise RequestError(f"model {model_spec.name!r} not found; serving "
                               f"{self.manager.name!r}", 404, "not_found")
        version = str(model_spec.version.value) if model_spec.HasField("version") else None
        return self.manager.get(version)

    def _answer(self, context, work):
        self.counters.inc("requests")
        try:
            reply = work()
        except RequestError as err:
            self.counters.inc(err.reason)
            code = grpc.StatusCode.NOT_FOUND if err.status == 404 else \
                grpc.StatusCode.INVALID_ARGUMENT
            context.abort(code, str(err))
        self.counters.inc("ok")
        return reply

    def _run(self, served, signature, inputs) -> Dict[str, np.ndarray]:
        try:
            return served.run(signature, inputs).result()
        except (tf.errors.InvalidArgumentError, ValueError) as err:
            raise run_model_error(err) from None


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer, _Handlers):
    def Predict(self, request, context):
        def work():
            served = self._served(request.model_spec)
            signature = request.model_spec.signature_name or "serving_default"
            served.check_signature(signature, PREDICT_METHOD)
            try:
                inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            except (TypeError, ValueError) as err:
                raise RequestError(f"malformed TensorProto: {err}", reason="bad_input") from None
            served.validate(signature, inputs, PREDICT_METHOD, self.limits.max_instances)
            outputs = self._run(served, signature, inputs)
            wanted = list(request.output_filter) or list(outputs)
            unknown = set(wanted) - set(outputs)
            if unknown:
                raise RequestError(f"output_filter names unknown outputs {sorted(unknown)}",
                                   reason="bad_input")
            reply = predict_pb2.PredictResponse()
            reply.model_spec.name = self.manager.name
            reply.model_spec.version.value = int(served.version)
            reply.model_spec.signature_name = signature
            for k in wanted:
                reply.outputs[k].CopyFrom(tf.make_tensor_proto(outputs[k]))
            return reply
        return self._answer(context, work)

    def Classify(self, request, context):
        def work():
            served = self._served(request.model_spec)
            signature = request.model_spec.signature_name or "serving_default"
            served.check_signature(signature, CLASSIFY_METHOD)
            which = request.input.WhichOneof("kind")
            if which == "example_list":
                examples = [e.SerializeToString() for e in request.input.example_list.examples]
            elif which == "example_list_with_context":
                ctx = request.input.example_list_with_context.context
                examples = []
                for e in request.input.example_list_with_context.examples:
                    merged = type(e)()
                    merged.CopyFrom(ctx)
                    merged.MergeFrom(e)
                    examples.append(merged.SerializeToString())
            else:
                raise RequestError("ClassificationRequest.input has no examples",
                                   reason="bad_input")
            inputs = {"inputs": np.array(examples, dtype=object)}
            served.validate(signature, inputs, CLASSIFY_METHOD, self.limits.max_instances)
            out = self._run(served, signature, inputs)
            reply = classification_pb2.ClassificationResponse()
            reply.model_spec.name = self.manager.name
            reply.model_spec.version.value = int(served.version)
            reply.model_spec.signature_name = signature
            for classes, scores in zip(out["classes"], out["scores"]):
                row = reply.result.classifications.add()
                for c, s in zip(classes, scores):
                    row.classes.add(label=c.decode("utf-8"), score=float(s))
            return reply
        return self._answer(context, work)

    def GetModelMetadata(self, request, context):
        def work():
            served = self._served(request.model_spec)
            fields = set(request.metadata_field)
            if fields != {"signature_def"}:
                raise RequestError('metadata_field must be ["signature_def"]',
                                   reason="bad_input")
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            for name, sig in served.signature_defs.items():
                sig_map.signature_def[name].CopyFrom(sig)
            reply = get_model_metadata_pb2.GetModelMetadataResponse()
            reply.model_spec.name = self.manager.name
            reply.model_spec.version.value = int(served.version)
            reply.metadata["signature_def"].Pack(sig_map)
            return reply
        return self._answer(context, work)


class _Oversize:
    """What :class:`BodyLimit`'s deserializer yields for a message over the limit."""

    def __init__(self, size: int):
        self.size = size


class BodyLimit(grpc.ServerInterceptor):
    """Refuses a unary request message over ``limits.max_body_bytes`` with
    ``RESOURCE_EXHAUSTED``, counted under ``body_too_large``, without parsing it."""

    def __init__(self, limits: Limits, counters: Counters):
        self.limit, self.counters = limits.max_body_bytes, counters

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        parse, behaviour = handler.request_deserializer, handler.unary_unary

        def deserialize(data: bytes):
            if len(data) > self.limit:
                return _Oversize(len(data))
            return parse(data) if parse is not None else data

        def checked(request, context):
            if isinstance(request, _Oversize):
                self.counters.inc("requests")
                self.counters.inc("body_too_large")
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"request message of {request.size} bytes exceeds the "
                              f"{self.limit}-byte limit")
            return behaviour(request, context)

        return grpc.unary_unary_rpc_method_handler(
            checked, request_deserializer=deserialize,
            response_serializer=handler.response_serializer)


class ModelService(model_service_pb2_grpc.ModelServiceServicer, _Handlers):
    def GetModelStatus(self, request, context):
        def work():
            if request.model_spec.name != self.manager.name:
                raise RequestError(f"model {request.model_spec.name!r} not found", 404,
                                   "not_found")
            version = (str(request.model_spec.version.value)
                       if request.model_spec.HasField("version") else None)
            reply = get_model_status_pb2.GetModelStatusResponse()
            for s in self.manager.status(version):
                reply.model_version_status.add(
                    version=int(s["version"]), state=_STATES[s["state"]],
                    status=status_pb2.StatusProto(
                        error_code=2 if s["status"]["error_message"] else 0,
                        error_message=s["status"]["error_message"]))
            return reply
        return self._answer(context, work)


def make_grpc_server(manager: ModelManager, limits: Limits, counters: Counters,
                     host: str, port: int, workers: int = 64):
    """``(server, bound port)``; the server is not started."""
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=workers,
                                              thread_name_prefix="grpc"),
        interceptors=[BodyLimit(limits, counters)],
        options=[("grpc.max_receive_message_length",
                  min(GRPC_CAP_FACTOR * limits.max_body_bytes, 2**31 - 1)),
                 ("grpc.so_reuseport", 0)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(manager, limits, counters), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        ModelService(manager, limits, counters), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC to {host}:{port}")
    return server, bound

