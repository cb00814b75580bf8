"""``fermtl predict PATH``: classify the faces in an image, a folder of images
or a video with a pushed model; print a table, write a CSV (emotion
probabilities, and the AU scores and 68 landmarks when the model has those
heads) and, optionally, annotated images.

The model sees what it saw in training:

* ``--detector none``: each image *is* an aligned face and its file bytes go
  to ``serving_default`` unchanged, so the probabilities are the serving
  signature's (video frames, TIFF and WebP travel as lossless gray PNG).
* with a detector: the file is decoded to gray as the readers do
  (:func:`components.readers._common.load_image`), faces are found and
  aligned by :class:`components.ingestion.align.FaceAligner` at the face size
  ingestion wrote for this model (``ingestion.image_size`` in the model's
  ``fermtl_config.json``, else the model's input size), and each crop goes to
  ``serving_default`` as PNG.

Landmarks come out in the model's face frame ([0, 1] of the crop); they are
mapped back through the alignment to source pixels for the CSV and drawing.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pathlib
import time
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from components import contract

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
# What serving_default's decoder (tf.io.decode_image) reads; other files (TIFF,
# WebP: JAFFE is TIFF) travel as a PNG of the gray pixels the readers decoded.
SERVING_FORMATS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


@dataclasses.dataclass
class FacePrediction:
    source: str          # file path, or "path#frame" for video frames
    face: int            # index of the face in its image
    box: Tuple[int, int, int, int]
    label: str
    confidence: float
    probabilities: List[float]
    aus: Optional[List[float]] = None            # contract.AU_NAMES order
    landmarks: Optional[np.ndarray] = None       # (68, 2) source-image pixels


@dataclasses.dataclass
class Frame:
    name: str
    gray: np.ndarray                 # decoded as ingestion decodes
    encoded: Optional[bytes] = None  # the file's own bytes (None for video frames)


def iter_frames(path: str, every: int = 10, unreadable: Optional[list] = None
                ) -> Iterator[Frame]:
    """Every image of ``path`` (a file or folder), or every ``every``-th frame
    of a video. Files that do not decode are appended to ``unreadable``."""
    import cv2

    from components.quarantine import Quarantine
    from components.readers._common import load_image

    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {path}")
        for name in files:
            yield from iter_frames(os.path.join(path, name), every, unreadable)
        return
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    if path.lower().endswith(VIDEO_EXTENSIONS):
        cap = cv2.VideoCapture(path)
        if not cap.isOpened():
            raise ValueError(f"cannot open video {path}")
        index = 0
        try:
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                if index % every == 0:
                    gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
                    yield Frame(f"{path}#{index}", gray)
                index += 1
        finally:
            cap.release()
        return
    quarantine = Quarantine()
    loaded = load_image(pathlib.Path(path), quarantine)
    if loaded is None:
        if unreadable is None:
            raise ValueError(f"cannot decode image {path}: {quarantine.entries[0].detail}")
        unreadable.append((path, quarantine.entries[0].detail))
        return
    gray = contract.decode_png(loaded[0])
    if not path.lower().endswith(SERVING_FORMATS):
        yield Frame(path, gray, loaded[0])
        return
    with open(path, "rb") as f:
        yield Frame(path, gray, f.read())


def model_face_size(model_path: str) -> int:
    """The face size ingestion aligned to for this model (else its input size)."""
    from models.export import load_config

    cfg = load_config(model_path)
    return int((cfg.get("ingestion") or {}).get("image_size") or cfg["image_size"])


class Predictor:
    """A pushed model plus the face aligner its training data went through."""

    def __init__(self, model_dir: str, detector: str = "haar",
                 face_size: Optional[int] = None):
        import tensorflow as tf

        from components.ingestion.align import FaceAligner
        from pipeline.serving import find_version_dir

        _, self.path = find_version_dir(model_dir)
        self.model = tf.saved_model.load(self.path)
        self.serve = self.model.signatures["serving_default"]
        self.face_size = int(face_size or model_face_size(self.path))
        self.detector = detector
        self.aligner = FaceAligner(detector=detector, output_size=self.face_size)

    def faces(self, frame: Frame):
        """``[(box, encoded face, face->source 2x3 matrix)]`` for every face."""
        h, w = frame.gray.shape
        if self.detector == "none":
            encoded = frame.encoded or contract.encode_png(frame.gray)
            scale = np.array([[w, 0, 0], [0, h, 0]], np.float64)   # [0, 1] -> pixels
            return [((0, 0, w, h), encoded, scale)]
        found = []
        for face in self.aligner.detector.detect(frame.gray):
            aligned = self.aligner.align_face(frame.gray, face)
            x, y, bw, bh = (int(round(v)) for v in face.box)
            to_face = np.vstack([aligned.matrix, [0, 0, 1]])
            back = np.linalg.inv(to_face)[:2] @ np.diag([self.face_size, self.face_size, 1.0])
            found.append(((x, y, bw, bh), contract.encode_png(aligned.pixels), back))
        return found

    def run(self, encoded: List[bytes]) -> Dict[str, np.ndarray]:
        """``serving_default`` outputs for encoded faces."""
        import tensorflow as tf

        if not encoded:
            return {"probabilities": np.zeros((0, contract.NUM_EMOTIONS), np.float32)}
        out = self.serve(images=tf.constant(encoded))
        return {k: v.numpy() for k, v in out.items()}

    def classify(self, encoded: List[bytes]) -> np.ndarray:
        return self.run(encoded)["probabilities"]

    def predict(self, frame: Frame) -> List[FacePrediction]:
        found = self.faces(frame)
        out = self.run([enc for _, enc, _ in found])
        preds = []
        for i, (box, _, back) in enumerate(found):
            p = out["probabilities"][i]
            lm = None
            if "landmarks" in out:
                pts = out["landmarks"][i].reshape(contract.NUM_LANDMARKS, 2).astype(np.float64)
                lm = pts @ back[:, :2].T + back[:, 2]
            preds.append(FacePrediction(
                frame.name, i, box, contract.EMOTIONS[int(p.argmax())], float(p.max()),
                [float(v) for v in p],
                [float(v) for v in out["aus"][i]] if "aus" in out else None, lm))
        return preds


def annotate(img: np.ndarray, predictions: List[FacePrediction]) -> np.ndarray:
    """A BGR copy of ``img`` with a box, ``label confidence`` and the landmarks
    (when predicted) per face."""
    import cv2

    out = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else img[..., :3].copy()
    scale = max(out.shape[:2]) / 500.0
    for p in predictions:
        x, y, w, h = p.box
        cv2.rectangle(out, (x, y), (x + w, y + h), (60, 220, 60), max(1, int(2 * scale)))
        cv2.putText(out, f"{p.label} {p.confidence:.2f}", (x, max(12, y - 4)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5 * max(scale, 0.6), (60, 220, 60),
                    max(1, int(scale)), cv2.LINE_AA)
        if p.landmarks is not None:
            for px, py in p.landmarks:
                if np.isfinite(px) and np.isfinite(py):
                    cv2.circle(out, (int(round(px)), int(round(py))), max(1, int(scale)),
                               (40, 40, 230), -1, cv2.LINE_AA)
    return out


def predict_path(path: str, model_dir: str, out_csv: Optional[str] = None,
                 annotate_dir: Optional[str] = None, detector: str = "haar",
                 every: int = 10, face_size: Optional[int] = None, progress: bool = False):
    """Run the whole thing; returns ``(predictions, stats)`` where stats has
    ``images``, ``faces``, ``no_face``, ``unreadable`` (``[(path, why)]``),
    ``seconds`` and ``images_per_s``."""
    import cv2
    from tqdm import tqdm

    predictor = Predictor(model_dir, detector, face_size)
    predictions: List[FacePrediction] = []
    unreadable: list = []
    n_images = n_no_face = 0
    start = time.perf_counter()
    frames = iter_frames(path, every, unreadable)
    for frame in (tqdm(frames, desc="predict", unit="img") if progress else frames):
        n_images += 1
        mine = predictor.predict(frame)
        n_no_face += not mine
        predictions.extend(mine)
        if annotate_dir:
            os.makedirs(annotate_dir, exist_ok=True)
            stem = os.path.splitext(os.path.basename(frame.name.replace("#", "_frame")))[0]
            cv2.imwrite(os.path.join(annotate_dir, f"{stem}_annotated.png"),
                        annotate(frame.gray, mine))
    seconds = time.perf_counter() - start
    if out_csv:
        write_csv(predictions, out_csv)
    stats = {"images": n_images, "faces": len(predictions), "no_face": n_no_face,
             "unreadable": unreadable, "seconds": seconds,
             "images_per_s": n_images / max(seconds, 1e-9)}
    return predictions, stats


def write_csv(predictions: List[FacePrediction], path: str) -> None:
    """One row per face: box, label, confidence, the 8 probabilities, then
    ``AU*`` scores and ``lm<i>_x``/``lm<i>_y`` (source pixels) when predicted."""
    has_aus = any(p.aus is not None for p in predictions)
    has_lm = any(p.landmarks is not None for p in predictions)
    header = ["source", "face", "x", "y", "w", "h", "label", "confidence", *contract.EMOTIONS]
    if has_aus:
        header += list(contract.AU_NAMES)
    if has_lm:
        header += [f"lm{i}_{c}" for i in range(contract.NUM_LANDMARKS) for c in "xy"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for p in predictions:
            row = [p.source, p.face, *p.box, p.label, f"{p.confidence:.4f}",
                   *(f"{v:.4f}" for v in p.probabilities)]
            if has_aus:
                row += [f"{v:.4f}" for v in p.aus] if p.aus is not None else [""] * contract.NUM_AUS
            if has_lm:
                row += ([f"{v:.2f}" for v in p.landmarks.reshape(-1)] if p.landmarks is not None
                        else [""] * (2 * contract.NUM_LANDMARKS))
            w.writerow(row)


def format_table(predictions: List[FacePrediction], limit: int = 50) -> str:
    lines = [f"{'source':40s} {'face':>4s} {'box':>20s} {'label':>10s} {'conf':>5s}"]
    for p in predictions[:limit]:
        src = p.source if len(p.source) <= 40 else "..." + p.source[-37:]
        lines.append(f"{src:40s} {p.face:4d} {str(p.box):>20s} {p.label:>10s} "
                     f"{p.confidence:5.2f}")
    if len(predictions) > limit:
        lines.append(f"... {len(predictions) - limit} more (see the CSV)")
    return "\n".join(lines)
