"""Load on ``fermtl serve`` the way the hostile-input probe measured it: a
server process on loopback, many concurrent HTTP clients with keep-alive
connections, single-image ``:predict`` requests.

Prints, for ``--clients`` x ``--requests`` (default 50 x 20):

* answered 200, and identical (within 1e-5) to the same request sent alone;
* requests/s, p50 and p99 latency;
* faces/s with 64-image requests (``--batch``), through the server and, for
  comparison, calling ``serving_default`` in-process.

Without ``MODEL`` an untrained ``baseline`` (``small`` preset, 48 px) is
exported to a temporary directory: same graph as the demo's pushed model. ::

    .venv/bin/python benchmarks/serve_load.py [runs/demo/serving/fer] [--max-batch-size 64]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from components import synthetic  # noqa: E402


def faces(n: int) -> list:
    """``n`` distinct synthetic faces as PNG bytes (96 px, as ingestion writes them)."""
    samples = synthetic.generate(n_subjects=max(1, n // 8 + 1), samples_per_emotion=1,
                                 domains=("lab",), seed=3)
    return [next(samples).image for _ in range(n)]


def body(images) -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(i).decode()}
                                     for i in images]}).encode()


class Client:
    """One keep-alive HTTP connection."""

    def __init__(self, port: int, name: str):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.path = f"/v1/models/{name}:predict"

    def predict(self, payload: bytes):
        self.conn.request("POST", self.path, payload, {"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data)


def start_server(model_dir: str, port: int, args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pipeline.cli", "serve", model_dir, "--name", "fer",
           "--port", str(port), "--grpc-port", "-1", "--poll-seconds", "0",
           "--max-batch-size", str(args.max_batch_size),
           "--batch-timeout-ms", str(args.batch_timeout_ms),
           "--batch-threads", str(args.batch_threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/v1/models/fer")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not start within 300 s")


def run_clients(port, payloads, clients: int, requests: int):
    """``(results[(client, k, status, probabilities, seconds)], wall seconds)``."""
    results, lock = [], threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(c):
        cl = Client(port, "fer")
        barrier.wait()
        for r in range(requests):
            k = (c * requests + r) % len(payloads)
            start = time.perf_counter()
            try:
                status, reply = cl.predict(payloads[k])
                probs = np.asarray([p["probabilities"] for p in reply["predictions"]]) \
                    if status == 200 else None
            except (OSError, http.client.HTTPException, ValueError) as err:
                status, probs = f"{type(err).__name__}", None
                cl = Client(port, "fer")
            with lock:
                results.append((c, k, status, probs, time.perf_counter() - start))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return results, time.perf_counter() - start


def in_process_faces_per_s(model_dir: str, images, batch: int, rounds: int = 10) -> float:
    import tensorflow as tf

    from pipeline.serving import find_version_dir

    fn = tf.saved_model.load(find_version_dir(model_dir)[1]).signatures["serving_default"]
    data = tf.constant(images[:batch])
    fn(images=data)
    start = time.perf_counter()
    for _ in range(rounds):
        fn(images=data)["probabilities"].numpy()
    return rounds * batch / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", help="pushed model (<base>/<model> or a version)")
    parser.add_argument("--port", type=int, default=18501)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20, help="per client")
    parser.add_argument("--batch", type=int, default=64, help="faces per request, 3rd figure")
    parser.add_argument("--batch-clients", type=int, default=4)
    parser.add_argument("--batch-requests", type=int, default=10)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-timeout-ms", type=float, default=2.0)
    parser.add_argument("--batch-threads", type=int, default=2)
    args = parser.parse_args(argv)

    tmp = None
    model = args.model
    if model is None:
        from models.export import export_saved_model
        from models.registry import get_method

        tmp = tempfile.TemporaryDirectory()
        method = get_method("baseline")
        cfg = method.config("small")
        model = os.path.join(tmp.name, "fer")
        export_saved_model(method, method.build(cfg), cfg, os.path.join(model, "1"))
    images = faces(max(args.batch, 64))
    single = [body([im]) for im in images]
    proc = start_server(model, args.port, args)
    try:
        ref = Client(args.port, "fer")
        alone = [ref.predict(p)[1]["predictions"][0]["probabilities"] for p in single]
        ref.predict(body(images[:args.batch]))                     # warm the batch shape
        results, wall = run_clients(args.port, single, args.clients, args.requests)
        ok = [r for r in results if r[2] == 200]
        same = sum(np.abs(r[3][0] - alone[r[1]]).max() <= 1e-5 for r in ok)
        lat = np.asarray([r[4] for r in results]) * 1000
        total = args.clients * args.requests
        print(f"{args.clients} clients x {args.requests} single-image requests: "
              f"{len(ok)}/{total} answered 200, {same}/{total} identical to a sequential "
              f"request (1e-5); errors: {sorted({str(r[2]) for r in results} - {'200'})}")
        print(f"  {total / wall:.0f} requests/s, p50 {np.percentile(lat, 50):.1f} ms, "
              f"p99 {np.percentile(lat, 99):.1f} ms (max batch {args.max_batch_size}, "
              f"wait {args.batch_timeout_ms:g} ms, {args.batch_threads} batch threads)")
        batched = [body(images[:args.batch])]
        results, wall = run_clients(args.port, batched, args.batch_clients, args.batch_requests)
        n_ok = sum(r[2] == 200 for r in results)
        print(f"  faces/s at batch {args.batch} through the server: "
              f"{n_ok * args.batch / wall:.0f} ({args.batch_clients} clients x "
              f"{args.batch_requests} requests, {n_ok} answered 200)")
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"  faces/s at batch {args.batch} calling serving_default in-process: "
          f"{in_process_faces_per_s(model, images, args.batch):.0f}")
    print(f"  ({os.cpu_count()} CPUs visible; the machine may be shared: see its load)")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
