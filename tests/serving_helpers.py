"""Fixtures for the serving tests: a tiny (untrained) baseline exported the
way the Pusher lays it out, encoded test images, and raw-socket HTTP."""

from __future__ import annotations

import base64
import io
import json
import socket
import urllib.error
import urllib.request

import numpy as np
from PIL import Image

SIZE = 32


def with_heads():
    """The baseline plus AU and landmark outputs, like SJMT's and TraceNorm's."""
    import keras

    from components import contract
    from models.baseline import BaselineCNN

    class WithHeads(BaselineCNN):
        def inference_model(self, model, cfg):
            base = super().inference_model(model, cfg)
            inp = keras.Input((cfg["image_size"], cfg["image_size"], 1))
            out = dict(base(inp))
            out["aus"] = keras.layers.Dense(contract.NUM_AUS, activation="sigmoid")(
                out["embedding"])
            out["landmarks"] = keras.layers.Dense(2 * contract.NUM_LANDMARKS,
                                                  activation="sigmoid")(out["embedding"])
            return keras.Model(inp, out)

    return WithHeads()


def export_tiny(version_dir, seed: int = 0, heads: bool = False) -> str:
    """Export an untrained small baseline (32 px) to ``version_dir``; with
    ``heads``, plus AU and landmark outputs (:func:`with_heads`)."""
    import tensorflow as tf

    from models.export import export_saved_model
    from models.registry import get_method

    tf.keras.utils.set_random_seed(seed)
    method = with_heads() if heads else get_method("baseline")
    cfg = method.config("small", image_size=SIZE, filters=(4, 8), dense=(8,))
    return export_saved_model(method, method.build(cfg), cfg, str(version_dir))


def image(size=(40, 52), fmt="PNG", seed=None) -> bytes:
    rng = np.random.default_rng(size[0] if seed is None else seed)
    mode = "L" if fmt == "PNG" else "RGB"
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, size=shape, dtype=np.uint8), mode=mode).save(
        buf, format=fmt)
    return buf.getvalue()


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def call(url, body=None, raw=None, timeout=60):
    """``(status, JSON reply)`` of a GET (no body) or POST."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def raw_http(port: int, data: bytes, timeout: float = 10.0, pause_after: float = 0.0):
    """Send ``data`` as is on a fresh socket; ``(status, body bytes)`` of the
    reply, read until the server closes (or ``timeout``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if _complete(b"".join(chunks)):
                    break
        except socket.timeout:
            pass
    reply = b"".join(chunks)
    if not reply:
        return None, b""
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _complete(reply: bytes) -> bool:
    head, sep, body = reply.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False
