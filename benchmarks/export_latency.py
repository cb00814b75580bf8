"""Single-image latency of our converted models (``fermtl export --format
tflite`` and ``--format onnx``) beside the SavedModel's ``serving_default`` at
batch 1, how far their outputs are from the SavedModel's, and, when its JSON
is given, the ``fer`` peer's TFLite (``benchmarks/peer_fer.py``, setting
``face-tflite``: the face fed as the peer's own pipeline feeds a detected face,
1 / images per second, no detection; an older JSON's ``box-tflite`` otherwise).

The converted models' times count the model only (their input is the decoded
face); the decode + resize a client does first is timed separately. Faces are
synthetic unless ``--faces`` names a folder of face images (e.g. FER2013
PublicTest, searched recursively). ::

    .venv/bin/python benchmarks/export_latency.py [runs/demo/serving/fer] \\
        [--faces ../shared/datasets/fer2013/val] [--peer docs/results/peer_fer_face.json] [--images 300]
"""

from __future__ import annotations

import argparse
import glob
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


def face_blobs(folder, n: int):
    """``n`` encoded faces: files under ``folder`` (evenly spaced over the
    sorted paths, so every class folder contributes), else synthetic."""
    if folder:
        paths = sorted(p for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
                       if p.lower().endswith((".png", ".jpg", ".jpeg")))
        paths = paths[::max(1, len(paths) // n)][:n]
        if not paths:
            raise SystemExit(f"error: no PNG/JPEG faces under {folder}")
        return [open(p, "rb").read() for p in paths]
    samples = synthetic.generate(n_subjects=n // 16 + 1, samples_per_emotion=1,
                                 domains=("lab", "wild"), seed=2)
    return [next(samples).image for _ in range(n)]


def main(argv=None) -> int:
    import tensorflow as tf

    from models.preprocessing import decode_image
    from pipeline.export_formats import (ONNXModel, TFLiteModel, export_onnx, export_tflite,
                                         face_size)
    from pipeline.serving import find_version_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", help="pushed model (default: untrained baseline)")
    parser.add_argument("--faces", help="folder of face images (default: synthetic faces)")
    parser.add_argument("--peer", help="peer_fer.py --out JSON (for its face-tflite figure)")
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
    blobs = face_blobs(args.faces, args.images)
    size = face_size(model)
    lite = TFLiteModel(export_tflite(model, os.path.join(tmp.name, "m.tflite")))
    onnx = ONNXModel(export_onnx(model, os.path.join(tmp.name, "m.onnx")))
    serve = tf.saved_model.load(find_version_dir(model)[1]).signatures["serving_default"]
    pixels = [decode_image(tf.constant([b]), size).numpy() for b in blobs]
    want = np.concatenate([serve(images=tf.constant([b]))["probabilities"].numpy()
                           for b in blobs])

    def gap(fn):
        return float(np.abs(np.concatenate([fn(p)["probabilities"] for p in pixels]) - want).max())

    rows = [("ours, TFLite (model only)", per_image_ms(lite, pixels), gap(lite)),
            ("ours, ONNX in onnxruntime (model only)", per_image_ms(onnx, pixels), gap(onnx)),
            ("ours, decode + resize for TFLite/ONNX", per_image_ms(
                lambda b: decode_image(tf.constant([b]), size).numpy(), blobs), None),
            ("ours, SavedModel serving_default (decode inside)", per_image_ms(
                lambda b: serve(images=tf.constant([b]))["probabilities"].numpy(), blobs), 0.0)]
    if args.peer:
        with open(args.peer) as f:
            settings = json.load(f)
        for key, name in (("face-tflite", "fer peer, TFLite (face as its pipeline feeds it)"),
                          ("box-tflite", "fer peer, TFLite (whole image as the box)")):
            if settings.get(key):
                rows.append((name, 1000 / settings[key]["images_per_second"], None))
                break
    faces = f"{len(blobs)} {'faces from ' + args.faces if args.faces else 'synthetic faces'}"
    print(f"| single image, {size} px model, {faces} | ms | max abs. probability gap "
          "to serving_default |")
    print("|---|---|---|")
    for name, ms, diff in rows:
        print(f"| {name} | {ms:.2f} | {'—' if diff is None else f'{diff:.1e}'} |")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
