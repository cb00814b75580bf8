"""Single-image latency of our TFLite export (``fermtl export --format tflite``)
beside the SavedModel's ``serving_default`` at batch 1 and, when its JSON is
given, the ``fer`` peer's TFLite (``benchmarks/peer_fer.py``, setting
``box-tflite``: 1 / images per second, face box given, so no detection).

Our TFLite time counts the model only (its input is the decoded face); the
decode + resize a client does first is timed separately. ::

    .venv/bin/python benchmarks/tflite_latency.py [runs/demo/serving/fer] \\
        [--peer runs/peer_fer.json] [--images 300]
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

from components import synthetic  # noqa: E402


def per_image_ms(fn, items) -> float:
    fn(items[0])
    start = time.perf_counter()
    for x in items:
        fn(x)
    return (time.perf_counter() - start) / len(items) * 1000


def main(argv=None) -> int:
    import tensorflow as tf

    from models.preprocessing import decode_image
    from pipeline.export_formats import TFLiteModel, export_tflite, face_size
    from pipeline.serving import find_version_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", help="pushed model (default: untrained baseline)")
    parser.add_argument("--peer", help="peer_fer.py --out JSON (for its box-tflite figure)")
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args(argv)

    tmp = tempfile.TemporaryDirectory()
    model = args.model
    if model is None:
        from models.export import export_saved_model
        from models.registry import get_method

        method = get_method("baseline")
        cfg = method.config("small")
        model = os.path.join(tmp.name, "fer")
        export_saved_model(method, method.build(cfg), cfg, os.path.join(model, "1"))
    samples = synthetic.generate(n_subjects=args.images // 16 + 1, samples_per_emotion=1,
                                 domains=("lab", "wild"), seed=2)
    blobs = [next(samples).image for _ in range(args.images)]
    size = face_size(model)
    lite = TFLiteModel(export_tflite(model, os.path.join(tmp.name, "m.tflite")))
    serve = tf.saved_model.load(find_version_dir(model)[1]).signatures["serving_default"]
    pixels = [decode_image(tf.constant([b]), size).numpy() for b in blobs]

    rows = [("ours, TFLite (model only)", per_image_ms(lite, pixels)),
            ("ours, decode + resize for TFLite", per_image_ms(
                lambda b: decode_image(tf.constant([b]), size).numpy(), blobs)),
            ("ours, SavedModel serving_default (decode inside)", per_image_ms(
                lambda b: serve(images=tf.constant([b]))["probabilities"].numpy(), blobs))]
    if args.peer:
        with open(args.peer) as f:
            peer = json.load(f).get("box-tflite")
        if peer:
            rows.append(("fer peer, TFLite (box given)", 1000 / peer["images_per_second"]))
    print(f"| single image, {size} px model, {args.images} faces | ms |")
    print("|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.2f} |")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
