"""Our exported models on a per-class image folder, the way a client calls them:
encoded JPEG/PNG bytes in, ``probabilities`` out through the SavedModel's
``serving_default`` signature (decode, resize, model). Prints accuracy and
images/s at batch 1 and batch 64 — the numbers that sit beside the ``fer``
peer's (``benchmarks/peer_fer.py``, whose ``face-*`` settings also skip detection)
in docs/RESULTS.md.

Takes finished ``fermtl benchmark`` runs (``OUT/runs/<method>/<fold>/``); each
is rebuilt from its weights, exported to a temporary SavedModel and loaded
back::

    .venv/bin/python benchmarks/serve_speed.py runs/bench/runs/*/holdout \\
        --data ../shared/datasets/fer2013/val --datasets fer2013 --out runs/serve_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from components import contract  # noqa: E402


def list_images(root: str, limit_per_class: int = 0):
    """``[(path, emotion index)]`` of a per-class folder (class names through the
    contract's synonym table)."""
    items = []
    for cls in sorted(os.listdir(root)):
        folder = os.path.join(root, cls)
        if not os.path.isdir(folder):
            continue
        label = contract.canonical_emotion(cls)
        names = sorted(os.listdir(folder))[:limit_per_class or None]
        items += [(os.path.join(folder, n), label) for n in names]
    if not items:
        raise SystemExit(f"no images under {root}")
    return items


def time_signature(fn, blobs, batch: int):
    """``(probabilities, seconds)`` of ``fn`` over ``blobs`` in batches of ``batch``."""
    import tensorflow as tf

    fn(images=tf.constant(blobs[:batch]))  # warm up (traces, allocates)
    probs, start = [], time.perf_counter()
    for i in range(0, len(blobs), batch):
        probs.append(fn(images=tf.constant(blobs[i:i + batch]))["probabilities"].numpy())
    return np.concatenate(probs), time.perf_counter() - start


def measure(run_dir: str, blobs, labels, datasets, single: int):
    import tensorflow as tf

    from models.export import export_saved_model
    from benchmarks.protocols import load_run_model

    method, model, cfg = load_run_model(run_dir, datasets)
    with tempfile.TemporaryDirectory() as tmp:
        export_saved_model(method, model, cfg, os.path.join(tmp, "model"))
        fn = tf.saved_model.load(os.path.join(tmp, "model")).signatures["serving_default"]
        probs, batched_s = time_signature(fn, blobs, 64)
        _, single_s = time_signature(fn, blobs[:single], 1)
    pred = probs.argmax(-1)
    return {"method": cfg["method"], "preset": cfg["preset"], "image_size": int(cfg["image_size"]),
            "images": len(blobs), "accuracy": float((pred == labels).mean()),
            "images_per_second_batch64": len(blobs) / batched_s,
            "images_per_second_batch1": single / single_s, "batch1_images": single}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="finished fermtl benchmark run folders")
    parser.add_argument("--data", required=True, help="per-class image folder")
    parser.add_argument("--datasets", default="",
                        help="training datasets of runs without config.json (comma-separated)")
    parser.add_argument("--single", type=int, default=300,
                        help="images timed one at a time (default 300)")
    parser.add_argument("--limit-per-class", type=int, default=0)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)

    items = list_images(args.data, args.limit_per_class)
    blobs = [open(p, "rb").read() for p, _ in items]
    labels = np.asarray([y for _, y in items])
    datasets = [d for d in args.datasets.split(",") if d]
    rows = []
    print("| method | input | accuracy | images/s (batch 64) | images/s (batch 1) |")
    print("|---|---|---|---|---|")
    for run_dir in args.runs:
        r = measure(run_dir, blobs, labels, datasets, min(args.single, len(blobs)))
        r["run"] = os.path.abspath(run_dir)
        rows.append(r)
        print(f"| {r['method']} ({r['preset']}) | {r['image_size']} | {r['accuracy']:.2%} | "
              f"{r['images_per_second_batch64']:.0f} | {r['images_per_second_batch1']:.0f} |",
              flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"data": os.path.abspath(args.data), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
