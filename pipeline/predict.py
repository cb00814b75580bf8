"""``fermtl predict PATH``: detect faces in an image, a folder of images or a
video, classify each face with an exported model, print a table, write a CSV
and (optionally) annotated images with boxes and labels.

Faces are found and aligned exactly as ingestion does
(:class:`components.ingestion.align.FaceAligner`), then fed to the model's
``serving_default`` signature as PNG bytes.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import time
from typing import Iterator, List, Optional, Tuple

import numpy as np

from components import contract

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")


@dataclasses.dataclass
class FacePrediction:
    source: str          # file path, or "path#frame" for video frames
    face: int            # index of the face in its image
    box: Tuple[int, int, int, int]
    label: str
    confidence: float
    probabilities: List[float]


def iter_frames(path: str, every: int = 10) -> Iterator[Tuple[str, np.ndarray]]:
    """``(name, BGR-or-gray image)`` for an image, every image of a folder, or
    every ``every``-th frame of a video."""
    import cv2

    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {path}")
        for name in files:
            yield from iter_frames(os.path.join(path, name), every)
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
                    yield f"{path}#{index}", frame
                index += 1
        finally:
            cap.release()
        return
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"cannot decode image {path}")
    yield path, img


def _gray(img: np.ndarray) -> np.ndarray:
    import cv2

    if img.ndim == 2:
        return img
    if img.shape[2] == 4:
        img = img[..., :3]
    return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)


class Predictor:
    """An exported model plus the face aligner it expects."""

    def __init__(self, model_dir: str, detector: str = "haar", face_size: int = 96):
        import tensorflow as tf

        from components.ingestion.align import FaceAligner
        from pipeline.serving import find_version_dir

        _, path = find_version_dir(model_dir)
        self.model = tf.saved_model.load(path)
        self.serve = self.model.signatures["serving_default"]
        self.aligner = FaceAligner(detector=detector, output_size=face_size)

    def faces(self, gray: np.ndarray):
        """``[(box, aligned pixels)]`` for every face found in ``gray``."""
        results = []
        for face in self.aligner.detector.detect(gray):
            aligned = self.aligner.align_face(gray, face)
            x, y, w, h = (int(round(v)) for v in face.box)
            results.append(((x, y, w, h), aligned.pixels))
        return results

    def classify(self, faces: List[np.ndarray]) -> np.ndarray:
        import tensorflow as tf

        if not faces:
            return np.zeros((0, contract.NUM_EMOTIONS), np.float32)
        data = tf.constant([contract.encode_png(f) for f in faces])
        return self.serve(images=data)["probabilities"].numpy()


def annotate(img: np.ndarray, predictions: List[FacePrediction]) -> np.ndarray:
    """A copy of ``img`` (BGR) with a box and ``label confidence`` per face."""
    import cv2

    out = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else img[..., :3].copy()
    scale = max(out.shape[:2]) / 500.0
    for p in predictions:
        x, y, w, h = p.box
        cv2.rectangle(out, (x, y), (x + w, y + h), (60, 220, 60), max(1, int(2 * scale)))
        cv2.putText(out, f"{p.label} {p.confidence:.2f}", (x, max(12, y - 4)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5 * max(scale, 0.6), (60, 220, 60),
                    max(1, int(scale)), cv2.LINE_AA)
    return out


def predict_path(path: str, model_dir: str, out_csv: Optional[str] = None,
                 annotate_dir: Optional[str] = None, detector: str = "haar",
                 every: int = 10, face_size: int = 96, progress: bool = False):
    """Run the whole thing; returns ``(predictions, stats)`` where stats has
    ``images``, ``faces``, ``no_face``, ``seconds`` and ``images_per_s``."""
    import cv2
    from tqdm import tqdm

    predictor = Predictor(model_dir, detector, face_size)
    predictions: List[FacePrediction] = []
    n_images = n_no_face = 0
    start = time.perf_counter()
    frames = iter_frames(path, every)
    for name, img in (tqdm(frames, desc="predict", unit="img") if progress else frames):
        n_images += 1
        found = predictor.faces(_gray(img))
        probs = predictor.classify([pixels for _, pixels in found])
        mine = [FacePrediction(name, i, box, contract.EMOTIONS[int(p.argmax())],
                               float(p.max()), [float(v) for v in p])
                for i, ((box, _), p) in enumerate(zip(found, probs))]
        n_no_face += not mine
        predictions.extend(mine)
        if annotate_dir:
            os.makedirs(annotate_dir, exist_ok=True)
            base = os.path.basename(name.replace("#", "_frame"))
            stem = os.path.splitext(base)[0]
            cv2.imwrite(os.path.join(annotate_dir, f"{stem}_annotated.png"),
                        annotate(img, mine))
    seconds = time.perf_counter() - start
    if out_csv:
        write_csv(predictions, out_csv)
    stats = {"images": n_images, "faces": len(predictions), "no_face": n_no_face,
             "seconds": seconds, "images_per_s": n_images / max(seconds, 1e-9)}
    return predictions, stats


def write_csv(predictions: List[FacePrediction], path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "face", "x", "y", "w", "h", "label", "confidence",
                    *contract.EMOTIONS])
        for p in predictions:
            w.writerow([p.source, p.face, *p.box, p.label, f"{p.confidence:.4f}",
                        *(f"{v:.4f}" for v in p.probabilities)])


def format_table(predictions: List[FacePrediction], limit: int = 50) -> str:
    lines = [f"{'source':40s} {'face':>4s} {'box':>20s} {'label':>10s} {'conf':>5s}"]
    for p in predictions[:limit]:
        src = p.source if len(p.source) <= 40 else "..." + p.source[-37:]
        lines.append(f"{src:40s} {p.face:4d} {str(p.box):>20s} {p.label:>10s} "
                     f"{p.confidence:5.2f}")
    if len(predictions) > limit:
        lines.append(f"... {len(predictions) - limit} more (see the CSV)")
    return "\n".join(lines)
