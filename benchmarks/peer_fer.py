"""The `fer` package (its FER2013 model and Haar detector, both inside its wheel)
on a per-class image folder: accuracy and images/s, for the side-by-side
comparison in docs/RESULTS.md.

Runs in its own environment (``scripts/setup_peer_env.sh`` -> ``.venv-peer``),
not fer-mtl's, and imports nothing from fer-mtl::

    bash scripts/setup_peer_env.sh
    .venv-peer/bin/python benchmarks/peer_fer.py ../shared/datasets/fer2013/val \\
        --out runs/peer_fer.json

Three settings, every image counted (a face the detector misses is an error):

* ``box-keras``: the face box is the whole image (FER2013 faces are already
  cropped), classified by fer's Keras model (``use_tflite=False``);
* ``box-tflite``: the same with fer's default quantized TFLite model;
* ``haar-tflite``: fer's default pipeline, its own Haar detection first
  (its ``min_face_size`` is 50 px, so on 48 px FER2013 crops it finds nothing);
* ``haar4x-tflite``: the same on the image upscaled 4x (192 px, bicubic).

Note: fer's model was trained on FER2013 and may have seen these images.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

# fer's labels -> the class-folder names of our FER2013 copy.
FER_TO_FOLDER = {"angry": "angry", "disgust": "disgust", "fear": "fear", "happy": "happy",
                 "sad": "sad", "surprise": "surprise", "neutral": "neutral"}


def list_images(root: str, limit_per_class: int = 0):
    items = []
    for cls in sorted(os.listdir(root)):
        folder = os.path.join(root, cls)
        if not os.path.isdir(folder):
            continue
        names = sorted(os.listdir(folder))
        if limit_per_class:
            names = names[:limit_per_class]
        items += [(os.path.join(folder, n), cls) for n in names]
    if not items:
        raise SystemExit(f"no images under {root}")
    return items


def run_setting(detector, items, given_box: bool, upscale: int = 1):
    import cv2

    correct = found = 0
    per_class = {}
    start = time.perf_counter()
    for path, cls in items:
        img = cv2.imread(path)
        if img is None:
            raise SystemExit(f"unreadable image {path}")
        if upscale > 1:
            img = cv2.resize(img, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_CUBIC)
        h, w = img.shape[:2]
        faces = detector.detect_emotions(img, face_rectangles=[(0, 0, w, h)] if given_box
                                         else None)
        hit = False
        if faces:
            found += 1
            # the largest face when the detector finds several
            face = max(faces, key=lambda f: f["box"][2] * f["box"][3])
            pred = max(face["emotions"], key=face["emotions"].get)
            hit = FER_TO_FOLDER.get(pred) == cls
        correct += hit
        c = per_class.setdefault(cls, [0, 0])
        c[0] += hit
        c[1] += 1
    seconds = time.perf_counter() - start
    return {"images": len(items), "accuracy": correct / len(items),
            "face_found_rate": found / len(items),
            "per_class_recall": {k: v[0] / v[1] for k, v in sorted(per_class.items())},
            "seconds": seconds, "images_per_second": len(items) / seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", help="per-class image folder (e.g. fer2013/val)")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--limit-per-class", type=int, default=0)
    parser.add_argument("--settings", default="box-keras,box-tflite,haar-tflite,haar4x-tflite",
                        help="comma-separated settings to run")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import fer
    from fer.fer import FER

    items = list_images(args.data, args.limit_per_class)
    results = {"package": f"fer {fer.__version__}", "data": os.path.abspath(args.data)}
    settings = {"box-keras": (dict(use_tflite=False), True, 1),
                "box-tflite": (dict(use_tflite=True), True, 1),
                "haar-tflite": (dict(use_tflite=True), False, 1),
                "haar4x-tflite": (dict(use_tflite=True), False, 4)}
    chosen = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = sorted(set(chosen) - set(settings))
    if unknown:
        raise SystemExit(f"unknown settings {unknown}; choose from {sorted(settings)}")
    for name in chosen:
        kwargs, given_box, upscale = settings[name]
        detector = FER(**kwargs)
        detector.detect_emotions(np.zeros((48, 48, 3), np.uint8), [(0, 0, 48, 48)])  # warm up
        r = run_setting(detector, items, given_box, upscale)
        results[name] = r
        print(f"{name:12s} accuracy {r['accuracy']:.4f}  faces found {r['face_found_rate']:.3f}"
              f"  {r['images_per_second']:.1f} images/s", file=sys.stderr, flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
