"""TF Serving's REST API v1 as a Starlette app under uvicorn.

Endpoints::

    GET  /v1/models/<name>[/versions/<v>]            version status
    GET  /v1/models/<name>[/versions/<v>]/metadata   signature defs
    POST /v1/models/<name>[/versions/<v>]:predict    row or columnar
    POST /v1/models/<name>[/versions/<v>]:classify   on a classify signature
    GET  /monitoring/counters                        requests, answers, refusals

The body is read with a deadline (408) and a size cap (413); JSON work runs in
the thread pool and inference in the batchers, so the event loop only moves
bytes. Malformed HTTP (a bad ``Content-Length``, a TLS handshake) is answered
400 by :func:`counting_protocol`'s h11 protocol, and counted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
from typing import Optional

import h11
import tensorflow as tf
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from tensorflow_serving.apis import get_model_metadata_pb2
from uvicorn.protocols.http.h11_impl import H11Protocol

from pipeline.serving import codec
from pipeline.serving.limits import Counters, Limits, RequestError
from pipeline.serving.versions import CLASSIFY_METHOD, PREDICT_METHOD, ModelManager

log = logging.getLogger(__name__)

_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?"
                   r"(?P<rest>/metadata|:predict|:classify)?$")
_DRAIN_FACTOR = 4   # bodies up to 4x the limit are read (and dropped) before the 413


def _json(status: int, payload, close: bool = False) -> Response:
    headers = {"connection": "close"} if close else None
    return Response(json.dumps(payload), status, headers, media_type="application/json")


def metadata(manager: ModelManager, version: Optional[str]):
    served = manager.get(version)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    for name, sig in served.signature_defs.items():
        sig_map.signature_def[name].CopyFrom(sig)
    return {"model_spec": {"name": manager.name, "signature_name": "",
                           "version": served.version},
            "metadata": {"signature_def": json_format.MessageToDict(
                sig_map, preserving_proto_field_name=True)}}


def run_model_error(err: Exception) -> RequestError:
    """A model-side refusal of client data (an undecodable image) as a 400."""
    msg = getattr(err, "message", str(err)).strip().splitlines()[0]
    return RequestError(f"the model rejected the input: {msg}", reason="model_rejected")


def _signature(request) -> str:
    name = request.get("signature_name", "serving_default") if isinstance(request, dict) \
        else "serving_default"
    if not isinstance(name, str):
        raise RequestError('"signature_name" must be a string', reason="bad_signature")
    return name or "serving_default"


async def _infer(served, signature, inputs):
    try:
        return await asyncio.wrap_future(served.run(signature, inputs))
    except (tf.errors.InvalidArgumentError, ValueError) as err:
        raise run_model_error(err) from None


def make_app(manager: ModelManager, limits: Limits, counters: Counters) -> Starlette:
    async def read_body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and int(length) > limits.max_body_bytes:
            # h11 has already refused a Content-Length that is not a number.
            if int(length) <= _DRAIN_FACTOR * limits.max_body_bytes:
                try:
                    await asyncio.wait_for(_drain(request), limits.read_timeout_s)
                except (asyncio.TimeoutError, ClientDisconnect):
                    pass
            raise RequestError(f"request body of {length} bytes exceeds the "
                               f"{limits.max_body_bytes}-byte limit", 413, "body_too_large")
        body = bytearray()

        async def read():
            async for chunk in request.stream():
                body.extend(chunk)
                if len(body) > limits.max_body_bytes:
                    raise RequestError(f"request body exceeds the {limits.max_body_bytes}-"
                                       "byte limit", 413, "body_too_large")
        try:
            await asyncio.wait_for(read(), limits.read_timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(f"the request body did not arrive within "
                               f"{limits.read_timeout_s:g} s", 408, "read_timeout") from None
        return bytes(body)

    async def _drain(request: Request) -> None:
        async for _ in request.stream():
            pass

    def parse(body: bytes):
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RequestError(f"malformed JSON: {err}", reason="bad_json") from None

    async def predict(version, body: bytes):
        request = await run_in_threadpool(parse, body)
        signature, served = _signature(request), manager.get(version)

        def prepare():
            served.check_signature(signature, PREDICT_METHOD)
            inputs, rows = codec.request_arrays(request, served.input_specs[signature])
            served.validate(signature, inputs, PREDICT_METHOD, limits.max_instances)
            return inputs, rows
        inputs, row_format = await run_in_threadpool(prepare)
        outputs = await _infer(served, signature, inputs)
        return await run_in_threadpool(codec.predict_reply, outputs, row_format)

    async def classify(version, body: bytes):
        request = await run_in_threadpool(parse, body)
        signature, served = _signature(request), manager.get(version)

        def prepare():
            served.check_signature(signature, CLASSIFY_METHOD)
            examples = codec.classify_examples(request)
            served.validate(signature, {"inputs": examples}, CLASSIFY_METHOD,
                            limits.max_instances)
            return {"inputs": examples}
        inputs = await run_in_threadpool(prepare)
        out = await _infer(served, signature, inputs)
        return codec.classify_reply(out["classes"], out["scores"])

    async def endpoint(request: Request) -> Response:
        counters.inc("requests")
        close = False
        try:
            m = _PATH.match(request.url.path)
            if not m:
                raise RequestError(f"unknown path {request.url.path}; see "
                                   f"/v1/models/{manager.name}", 404, "not_found")
            if m.group("name") != manager.name:
                raise RequestError(f"model {m.group('name')!r} not found; serving "
                                   f"{manager.name!r}", 404, "not_found")
            version, rest = m.group("version"), m.group("rest") or ""
            verb = rest.lstrip(":/")
            if request.method == "GET":
                if verb in ("predict", "classify"):
                    raise RequestError(f"use POST for :{verb}", 405, "bad_method")
                payload = (metadata(manager, version) if verb == "metadata"
                           else {"model_version_status": manager.status(version)})
            else:
                if verb not in ("predict", "classify"):
                    raise RequestError("POST is only for :predict and :classify", 405,
                                       "bad_method")
                close = True    # until the body is read, the connection is not reusable
                body = await read_body(request)
                close = False
                payload = await (predict if verb == "predict" else classify)(version, body)
            counters.inc("ok")
            return _json(200, payload)
        except RequestError as err:
            counters.inc(err.reason)
            return _json(err.status, {"error": str(err)}, close=close)
        except ClientDisconnect:
            counters.inc("client_disconnected")
            return _json(400, {"error": "client disconnected"}, close=True)
        except Exception as err:  # noqa: BLE001 - a server fault: answer, log, keep serving
            log.exception("%s %s failed", request.method, request.url.path)
            counters.inc("internal_error")
            return _json(500, {"error": f"internal error: {type(err).__name__}: {err}"},
                         close=close)

    async def counters_endpoint(request: Request) -> Response:
        return _json(200, counters.snapshot())

    return Starlette(routes=[
        Route("/monitoring/counters", counters_endpoint, methods=["GET"]),
        Route("/{path:path}", endpoint, methods=["GET", "POST"]),
    ])


def counting_protocol(counters: Counters, limits: Limits):
    """uvicorn's h11 protocol, answering malformed HTTP with a JSON 400 naming
    the fault (counted as ``bad_http``) and closing a connection that sends
    nothing within the read timeout."""

    class CountingH11Protocol(H11Protocol):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._fault = ""
            next_event = self.conn.next_event

            def remembering_next_event():   # keeps h11's reason for the 400 below
                try:
                    return next_event()
                except h11.RemoteProtocolError as err:
                    self._fault = str(err)
                    raise
            self.conn.next_event = remembering_next_event

        def connection_made(self, transport):
            super().connection_made(transport)
            # No Nagle: uvicorn writes headers and body apart, and a keep-alive
            # client's delayed ACK would hold the body back ~40 ms.
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._head_timer = None
            self._arm_head_timer()

        # A request head must arrive whole within the read timeout (the body's
        # deadline is the app's): a trickle of header bytes -> 408, silence -> closed.
        def _arm_head_timer(self):
            self._head_cycle, self._head_started = self.cycle, False
            self._head_timer = self.loop.call_later(limits.read_timeout_s, self._head_timeout)

        def _cancel_head_timer(self):
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def data_received(self, data):
            if self.cycle is self._head_cycle:
                self._head_started = True
            super().data_received(data)

        def handle_events(self):
            super().handle_events()
            if self.cycle is not self._head_cycle:      # a new request head arrived
                self._cancel_head_timer()

        def on_response_complete(self):
            super().on_response_complete()
            if not self.transport.is_closing() and self._head_timer is None:
                self._arm_head_timer()

        def connection_lost(self, exc):
            self._cancel_head_timer()
            super().connection_lost(exc)

        def _head_timeout(self):
            self._head_timer = None
            if self.transport.is_closing() or self.cycle is not self._head_cycle:
                return
            if not self._head_started:      # idle: close quietly, as keep-alive does
                counters.inc("idle_closed")
                self.transport.close()
                return
            counters.inc("requests")
            counters.inc("read_timeout")
            data = json.dumps({"error": f"the request head did not arrive within "
                                        f"{limits.read_timeout_s:g} s"}).encode()
            # Written raw: h11 has no request to answer yet, and the connection ends here.
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: "
                                 b"application/json\r\nconnection: close\r\ncontent-length: "
                                 + str(len(data)).encode() + b"\r\n\r\n" + data)
            self.transport.close()

        def send_400_response(self, msg: str) -> None:
            counters.inc("requests")
            counters.inc("bad_http")
            data = json.dumps({"error": f"malformed HTTP request: {self._fault or msg}"})
            headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
            try:
                for event in (h11.Response(status_code=400, headers=headers,
                                           reason=b"Bad Request"),
                              h11.Data(data=data.encode()), h11.EndOfMessage()):
                    self.transport.write(self.conn.send(event))
            except h11.LocalProtocolError:
                pass    # a response had already started: just close
            self.transport.close()

    return CountingH11Protocol
