"""Hostile input against ``fermtl serve``, as the probe of issue 18 did it:
hand-written bad requests plus mutated (fuzzed) bodies, over raw sockets on
loopback. Prints the answers by status; fails (exit 1) on any 5xx, any
dropped connection for a complete request, or when a valid request's answer
changes afterwards. ::

    .venv/bin/python benchmarks/serve_probe.py [MODEL] [--fuzz 300]
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import os
import random
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tests.serving_helpers import export_tiny, image, raw_http  # noqa: E402


def http(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: probe\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n").encode() + extra + b"\r\n" + body


def hand_written(valid: dict):
    b64 = valid["instances"][0]["b64"]
    bodies = [b"", b"null", b"[]", b"{", b"\xff\xfe", b'{"instances": 5}',
              b'{"instances": [{"b64": 5}]}', b'{"instances": [{"b64": "%%%"}]}',
              b'{"instances": [[[[[]]]]]}', b'{"instances": [null]}', b'{"inputs": null}',
              b'{"inputs": {"images": {"b64": "' + b64.encode() + b'"}}}',
              json.dumps({"instances": [{"b64": b64}], "signature_name": 7}).encode(),
              json.dumps({"instances": [{"b64": b64}], "signature_name": "pixels"}).encode(),
              json.dumps({"signature_name": "pixels", "instances": [[[[0.5]] * 48] * 48]}).encode(),
              json.dumps({"signature_name": "pixels", "instances": [[1e309]]}).encode(),
              json.dumps({"signature_name": "classify", "examples": [{"image": 3}]}).encode(),
              json.dumps({"signature_name": "classify", "examples": [{"image": [1, "a"]}]}).encode(),
              json.dumps({"instances": [{"b64": base64.b64encode(b"GIF89a" + bytes(20)).decode()}]}
                         ).encode()]
    for body in bodies:
        yield "body", http("/v1/models/fer:predict", body)
        yield "body", http("/v1/models/fer:classify", body)
    for path in ("/v1/models/fer/versions/abc:predict", "/v1/models/fer:predictx",
                 "/v1/models/%2e%2e/fer:predict", "/v1/models/fer/versions/99999999999999999999"
                 "999:predict", "/" + "a" * 5000):
        yield "path", http(path, json.dumps(valid).encode())


def fuzzed(valid_body: bytes, n: int, rng: random.Random):
    for _ in range(n):
        data = bytearray(valid_body)
        for _ in range(rng.randint(1, 8)):
            op, pos = rng.random(), rng.randrange(len(data))
            if op < 0.4:
                data[pos] = rng.randrange(256)
            elif op < 0.7:
                del data[pos:pos + rng.randint(1, 50)]
            else:
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 20)))
        yield "fuzz", http("/v1/models/fer:predict", bytes(data))


def main(argv=None) -> int:
    from pipeline.serving import make_server

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", help="pushed model (default: a tiny export)")
    parser.add_argument("--fuzz", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    tmp = tempfile.TemporaryDirectory()
    model = args.model or os.path.join(tmp.name, "fer")
    if args.model is None:
        export_tiny(os.path.join(model, "1"))
    valid = {"instances": [{"b64": base64.b64encode(image()).decode()}]}
    valid_req = http("/v1/models/fer:predict", json.dumps(valid).encode())
    by_status, failures = collections.Counter(), []
    with make_server(model, name="fer", rest_port=0, grpc_port=-1, poll_s=0,
                     read_timeout_s=2.0) as srv:
        first = raw_http(srv.rest_port, valid_req)
        cases = list(hand_written(valid)) + list(fuzzed(json.dumps(valid).encode(), args.fuzz,
                                                       random.Random(args.seed)))
        for kind, req in cases:
            status, body = raw_http(srv.rest_port, req, timeout=30)
            by_status[status] += 1
            if status is None or status >= 500:
                failures.append((kind, status, req[:200], body[:300]))
        last = raw_http(srv.rest_port, valid_req)
        counters = srv.counters.snapshot()
    print(f"{len(cases)} hostile requests: answers by status {dict(sorted(by_status.items(), key=str))}")
    print(f"counters: {counters}")
    same = first == last and first[0] == 200
    print(f"a valid request before and after: {'same answer' if same else 'CHANGED'}")
    for kind, status, req, body in failures[:10]:
        print(f"FAIL {kind}: status {status} for {req!r}: {body!r}")
    tmp.cleanup()
    return 0 if same and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
