"""The `fer` package (its FER2013 model and Haar detector, both inside its wheel)
on a per-class image folder: accuracy and images/s, for the side-by-side
comparison in docs/RESULTS.md.

Runs in its own environment (``scripts/setup_peer_env.sh`` -> ``.venv-peer``),
not fer-mtl's, and imports nothing from fer-mtl::

    bash scripts/setup_peer_env.sh
    .venv-peer/bin/python benchmarks/peer_fer.py ../shared/datasets/fer2013/val \\
        --settings face-keras,face-tflite --out runs/peer_fer_face.json

Settings, every image counted (a face the detector misses is an error):

* ``face-keras``: the comparison. FER2013 images are faces already detected and
  cropped, so the whole image is the face, fed to fer's model as its
  ``detect_emotions`` feeds a detected face: gray, resized to the model's input
  (64 x 64), scaled to [-1, 1], with fer's own helpers; Keras model
  (``use_tflite=False``), batches of 64;
* ``face-tflite``: the same with fer's default quantized TFLite model, one image
  per call (its input has a fixed batch of 1);
* ``box-keras``: ``detect_emotions(img, face_rectangles=[whole image])``, fer's
  public API misused on a pre-cropped face: it widens the box by its
  ``offsets`` (10 px a side) into its border padding, so the model sees the face
  shrunk to 48/68 of its input inside a flat gray frame;
* ``box-tflite``: the same with the TFLite model;
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


def read_image(path: str):
    import cv2

    img = cv2.imread(path)
    if img is None:
        raise SystemExit(f"unreadable image {path}")
    return img


def summary(per_class: dict, found: int, seconds: float) -> dict:
    """per_class: folder -> [correct, images]."""
    images = sum(n for _, n in per_class.values())
    return {"images": images, "accuracy": sum(c for c, _ in per_class.values()) / images,
            "face_found_rate": found / images,
            "per_class_recall": {k: c / n for k, (c, n) in sorted(per_class.items())},
            "per_class_correct_of": {k: [c, n] for k, (c, n) in sorted(per_class.items())},
            "seconds": seconds, "images_per_second": images / seconds}


def run_setting(detector, items, given_box: bool, upscale: int = 1):
    import cv2

    found = 0
    per_class = {}
    start = time.perf_counter()
    for path, cls in items:
        img = read_image(path)
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
        c = per_class.setdefault(cls, [0, 0])
        c[0] += hit
        c[1] += 1
    return summary(per_class, found, time.perf_counter() - start)


def run_face_setting(detector, items, batch: int):
    """Each image is the face: fed to fer's model as ``detect_emotions`` feeds a detected
    face, through fer's own steps (gray, resize to the model's input, ``v2`` scaling to
    [-1, 1], ``_classify_emotions``), ``batch`` images per model call."""
    import cv2

    size = detector._FER__emotion_target_size  # the model's input, (64, 64)
    labels = detector._get_labels()
    per_class = {}
    start = time.perf_counter()
    for i in range(0, len(items), batch):
        chunk = items[i:i + batch]
        faces = np.stack([cv2.resize(cv2.cvtColor(read_image(path), cv2.COLOR_BGR2GRAY), size)
                          for path, _ in chunk])
        probs = np.asarray(detector._classify_emotions(
            detector._FER__preprocess_input(faces, v2=True)))
        for (_, cls), k in zip(chunk, probs.argmax(axis=1)):
            c = per_class.setdefault(cls, [0, 0])
            c[0] += FER_TO_FOLDER[labels[int(k)]] == cls
            c[1] += 1
    return summary(per_class, len(items), time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", help="per-class image folder (e.g. fer2013/val)")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--limit-per-class", type=int, default=0)
    parser.add_argument("--settings", default="face-keras,face-tflite,box-keras,box-tflite,"
                        "haar-tflite,haar4x-tflite",
                        help="comma-separated settings to run")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import fer
    from fer.fer import FER

    items = list_images(args.data, args.limit_per_class)
    results = {"package": f"fer {fer.__version__}", "data": os.path.abspath(args.data)}
    # name -> (FER's arguments, the run function, its arguments)
    keras, tflite = dict(use_tflite=False), dict(use_tflite=True)
    settings = {"face-keras": (keras, run_face_setting, dict(batch=64)),
                "face-tflite": (tflite, run_face_setting, dict(batch=1)),
                "box-keras": (keras, run_setting, dict(given_box=True)),
                "box-tflite": (tflite, run_setting, dict(given_box=True)),
                "haar-tflite": (tflite, run_setting, dict(given_box=False)),
                "haar4x-tflite": (tflite, run_setting, dict(given_box=False, upscale=4))}
    chosen = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = sorted(set(chosen) - set(settings))
    if unknown:
        raise SystemExit(f"unknown settings {unknown}; choose from {sorted(settings)}")
    for name in chosen:
        fer_kwargs, run, run_kwargs = settings[name]
        detector = FER(**fer_kwargs)
        detector.detect_emotions(np.zeros((48, 48, 3), np.uint8), [(0, 0, 48, 48)])  # warm up
        r = run(detector, items, **run_kwargs)
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
