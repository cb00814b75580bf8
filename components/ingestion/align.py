"""Face detection and eye-based alignment.

:class:`FaceAligner` turns any grayscale image into the contract's aligned face:
the largest face is detected, its two eye centres are found, and one similarity
transform (rotation + uniform scale + translation) puts the eyes on a horizontal
line at fixed positions of a square ``output_size`` crop::

    left eye  -> ((0.5 - eye_distance / 2) * S, eye_y * S)
    right eye -> ((0.5 + eye_distance / 2) * S, eye_y * S)

("left" is the eye on the image's left, i.e. the subject's right eye, iBUG
points 36-41.) Where the eyes come from, in order of preference:

1. the sample's own landmarks (``landmarks_mask == 1``): means of points 36-41
   and 42-47. No detector runs: the landmarks already say where the face is;
2. the detector's keypoints, when it gives any (an MTCNN-style detector);
3. :class:`HaarDetector`'s eye cascade inside the upper half of the face box;
4. none found: the eyes are *estimated* from the face box with the average
   geometry of the Haar frontal-face box (:data:`HAAR_BOX_EYES`), i.e. an
   upright crop of the box framed like an aligned face. This is the
   ``no_eyes_fallback`` method: counted, not quarantined.

No face at all raises :class:`NoFaceFound`. Samples flagged ``aligned`` (FER2013,
CK+48, synthetic: already cropped faces) are only resized.

Landmarks follow the same transform as the pixels and stay in [0, 1]
coordinates of the output (points the crop cuts off are clamped to its border).
Coordinates are continuous: a [0, 1] landmark ``x`` sits at ``x * width`` pixels,
pixel ``i`` covering ``[i, i + 1)``; the half-pixel shift to OpenCV's
pixel-centre convention is handled in :func:`warp_matrix_for_cv2`.

Detectors plug in behind :class:`Detector`; ``"haar"`` uses the cascades that ship
inside the ``opencv-python-headless`` wheel (``cv2.data.haarcascades``), so nothing
is downloaded at run time. Everything here pickles (cascades are loaded lazily and
dropped on pickling), so an aligner can travel to Beam workers, though the
executor builds one per worker in ``DoFn.setup``.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import os
from typing import List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from components import contract

Point = Tuple[float, float]
Eyes = Tuple[Point, Point]

# iBUG-68 indices of the eyes (image-left eye = subject's right eye first).
LEFT_EYE_POINTS = tuple(range(36, 42))
RIGHT_EYE_POINTS = tuple(range(42, 48))

# Where the eyes sit, on average, inside a box of OpenCV's
# haarcascade_frontalface_default detector (as HaarDetector runs it), as
# fractions of the box side: (left eye x, right eye x, eye y). Measured on the
# FER2013 val faces (every 6th file, 4x upscaled) whose two eyes the eye cascade
# found (std 0.04 / 0.04 / 0.02); see docs/ingestion.md. It frames the
# no_eyes_fallback crop like an eye-aligned one.
HAAR_BOX_EYES = (0.296, 0.681, 0.383)

# Methods reported in :attr:`AlignResult.method`.
METHODS = ("resized", "landmarks", "keypoints", "eyes", "no_eyes_fallback")


class NoFaceFound(Exception):
    """The detector found no face in the image."""


@dataclasses.dataclass(frozen=True)
class Face:
    """A detected face: box ``(x, y, w, h)`` in pixels of the image given to the
    detector, a confidence and, when the detector gives them, the eye centres."""

    box: Tuple[float, float, float, float]
    score: float = 1.0
    eyes: Optional[Eyes] = None

    @property
    def area(self) -> float:
        return float(self.box[2]) * float(self.box[3])


class Detector(abc.ABC):
    """Face detector interface.

    ``detect`` returns every face found (any order); ``locate_eyes`` returns the
    two eye centres of one of them, image-left first, or None. A detector that
    gives keypoints (MTCNN) fills :attr:`Face.eyes` and keeps the default
    ``locate_eyes``.
    """

    name = "detector"

    @abc.abstractmethod
    def detect(self, gray: np.ndarray) -> List[Face]:
        """Faces in a grayscale ``uint8`` image (H, W)."""

    def locate_eyes(self, gray: np.ndarray, face: Face) -> Optional[Eyes]:
        return face.eyes


class HaarDetector(Detector):
    """OpenCV Viola-Jones cascades: ``haarcascade_frontalface_default`` for the
    face and ``haarcascade_eye`` for the eyes (inside the upper half of the box).

    Small images are upscaled and every image gets a replicated border before
    detection, because the frontal-face cascade misses faces that fill the whole
    frame (tightly cropped faces like FER2013's); large images are downscaled
    for speed. Boxes are mapped back to the input image's pixels.

    Args:
      min_side: the image's short side is scaled to at least this many pixels.
      max_side: ... and its long side to at most this many.
      pad: border added on each side, as a fraction of the (scaled) image side.
      scale_factor, min_neighbors: ``detectMultiScale`` parameters of the face cascade.
      min_face: smallest face searched, as a fraction of the short side.
      eye_neighbors: ``minNeighbors`` of the eye cascade.
    """

    name = "haar"
    FACE_CASCADE = "haarcascade_frontalface_default.xml"
    EYE_CASCADE = "haarcascade_eye.xml"

    def __init__(self, min_side: int = 192, max_side: int = 640, pad: float = 0.2,
                 scale_factor: float = 1.1, min_neighbors: int = 5,
                 min_face: float = 0.15, eye_neighbors: int = 3):
        self.min_side = int(min_side)
        self.max_side = int(max_side)
        self.pad = float(pad)
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_face = float(min_face)
        self.eye_neighbors = int(eye_neighbors)
        self._face = None
        self._eye = None

    # Cascades hold native handles: load lazily, drop when pickled.
    def __getstate__(self):
        state = dict(self.__dict__)
        state["_face"] = state["_eye"] = None
        return state

    @staticmethod
    def _load(name: str):
        path = os.path.join(cv2.data.haarcascades, name)
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise RuntimeError(f"cannot load OpenCV cascade {path!r} "
                               "(is opencv-python-headless installed?)")
        return cascade

    @property
    def face_cascade(self):
        if self._face is None:
            self._face = self._load(self.FACE_CASCADE)
        return self._face

    @property
    def eye_cascade(self):
        if self._eye is None:
            self._eye = self._load(self.EYE_CASCADE)
        return self._eye

    def _prepare(self, gray: np.ndarray) -> Tuple[np.ndarray, float, int]:
        """Scaled + padded image, the scale and the pad (pixels of the scaled image)."""
        h, w = gray.shape[:2]
        scale = 1.0
        if min(h, w) < self.min_side:
            scale = self.min_side / float(min(h, w))
        if max(h, w) * scale > self.max_side:
            scale = self.max_side / float(max(h, w))
        img = gray
        if scale != 1.0:
            img = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))),
                             interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        pad = int(round(self.pad * max(img.shape[:2])))
        if pad:
            img = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        return img, scale, pad

    def detect(self, gray: np.ndarray) -> List[Face]:
        gray = _as_gray(gray)
        img, scale, pad = self._prepare(gray)
        short = min(img.shape[:2]) - 2 * pad
        min_px = max(24, int(self.min_face * short))
        found = self.face_cascade.detectMultiScale(
            img, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(min_px, min_px))
        faces = []
        for (x, y, w, h) in (found if len(found) else []):
            faces.append(Face(box=((x - pad) / scale, (y - pad) / scale, w / scale, h / scale)))
        return faces

    def locate_eyes(self, gray: np.ndarray, face: Face) -> Optional[Eyes]:
        """Eye centres from the eye cascade inside the upper half of ``face``.

        The face box is cut out and brought to a fixed 160 px side first, so
        the eye search costs the same whatever the image size. One eye is
        taken in each half of the box (the largest detection there); the pair
        is rejected when its distance or tilt is implausible for a face of
        that box.
        """
        gray = _as_gray(gray)
        x, y, w, h = face.box
        side = 160.0
        s = side / max(w, h)
        # Crop the face box (clamped to the image) and scale it.
        x0, y0 = int(max(0, math.floor(x))), int(max(0, math.floor(y)))
        x1 = int(min(gray.shape[1], math.ceil(x + w)))
        y1 = int(min(gray.shape[0], math.ceil(y + h * 0.6)))
        if x1 - x0 < 8 or y1 - y0 < 8:
            return None
        roi = cv2.resize(gray[y0:y1, x0:x1],
                         (max(1, round((x1 - x0) * s)), max(1, round((y1 - y0) * s))),
                         interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        top = int(round((y + 0.12 * h - y0) * s))  # skip the forehead band
        roi = roi[max(0, top):]
        eyes = self.eye_cascade.detectMultiScale(
            roi, scaleFactor=1.1, minNeighbors=self.eye_neighbors,
            minSize=(int(side * 0.1), int(side * 0.1)),
            maxSize=(int(side * 0.45), int(side * 0.45)))
        if not len(eyes):
            return None
        mid = (x + w / 2.0 - x0) * s
        left = [e for e in eyes if e[0] + e[2] / 2.0 < mid]
        right = [e for e in eyes if e[0] + e[2] / 2.0 >= mid]
        if not left or not right:
            return None

        def centre(e):
            ex, ey, ew, eh = e
            return (x0 + (ex + ew / 2.0) / s, y0 + (max(0, top) + ey + eh / 2.0) / s)

        le = centre(max(left, key=lambda e: e[2] * e[3]))
        re = centre(max(right, key=lambda e: e[2] * e[3]))
        dist = math.hypot(re[0] - le[0], re[1] - le[1])
        tilt = abs(math.degrees(math.atan2(re[1] - le[1], re[0] - le[0])))
        if not (0.2 * w <= dist <= 0.75 * w) or tilt > 30:
            return None
        return le, re


class NoDetector(Detector):
    """No detection: the whole image is the face (pre-cropped inputs)."""

    name = "none"

    def detect(self, gray: np.ndarray) -> List[Face]:
        h, w = gray.shape[:2]
        return [Face(box=(0.0, 0.0, float(w), float(h)))]


DETECTORS = {"haar": HaarDetector, "none": NoDetector}


def make_detector(detector: Union[str, Detector]) -> Detector:
    if isinstance(detector, Detector):
        return detector
    if detector not in DETECTORS:
        raise ValueError(f"unknown detector {detector!r}; one of {sorted(DETECTORS)}")
    return DETECTORS[detector]()


# --- geometry ----------------------------------------------------------------

def similarity_from_eyes(src: Eyes, dst: Eyes) -> np.ndarray:
    """2x3 similarity matrix (continuous pixel coordinates) mapping the two
    ``src`` eye points exactly onto the two ``dst`` points."""
    (sl, sr), (dl, dr) = src, dst
    zs_l, zs_r = complex(*sl), complex(*sr)
    zd_l, zd_r = complex(*dl), complex(*dr)
    if abs(zs_r - zs_l) < 1e-6:
        raise ValueError("the two eye points coincide")
    a = (zd_r - zd_l) / (zs_r - zs_l)
    b = zd_l - a * zs_l
    return np.array([[a.real, -a.imag, b.real],
                     [a.imag, a.real, b.imag]], np.float64)


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points (N, 2) through a 2x3 affine matrix."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    return pts @ np.asarray(matrix, np.float64)[:, :2].T + np.asarray(matrix)[:, 2]


def warp_matrix_for_cv2(matrix: np.ndarray) -> np.ndarray:
    """The same transform in OpenCV's pixel-centre coordinates (pixel ``i`` is
    at ``i`` rather than ``i + 0.5``)."""
    m = np.asarray(matrix, np.float64).copy()
    half = np.array([0.5, 0.5])
    m[:, 2] = m[:, :2] @ half + m[:, 2] - half
    return m


def _as_gray(pixels: np.ndarray) -> np.ndarray:
    arr = np.asarray(pixels)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr.astype(np.uint8), cv2.COLOR_RGB2GRAY)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return arr


@dataclasses.dataclass
class AlignResult:
    pixels: np.ndarray                  # (S, S) uint8
    landmarks: Optional[np.ndarray]     # (68, 2) in [0, 1] of the output, or None
    method: str                         # one of METHODS
    matrix: Optional[np.ndarray]        # 2x3, input pixels -> output pixels (continuous)
    face: Optional[Face] = None


class FaceAligner:
    """Detect, align and crop faces (see the module docstring).

    Args:
      detector: ``"haar"``, ``"none"`` (the whole image is the face: only
        landmark-based alignment or a resize) or a :class:`Detector`.
      output_size: side of the square grayscale output, pixels.
      eye_distance: distance between the eye centres in the output, as a
        fraction of ``output_size``.
      eye_y: height of the eye line in the output, as a fraction of ``output_size``.
    """

    def __init__(self, detector: Union[str, Detector] = "haar", output_size: int = 64,
                 eye_distance: float = 0.4, eye_y: float = 0.38):
        if output_size < 8:
            raise ValueError(f"output_size must be >= 8, got {output_size}")
        if not 0 < eye_distance < 1 or not 0 < eye_y < 1:
            raise ValueError("eye_distance and eye_y are fractions in (0, 1)")
        self.detector = make_detector(detector)
        self.output_size = int(output_size)
        self.eye_distance = float(eye_distance)
        self.eye_y = float(eye_y)

    @property
    def target_eyes(self) -> Eyes:
        s = float(self.output_size)
        half = self.eye_distance / 2.0
        return ((0.5 - half) * s, self.eye_y * s), ((0.5 + half) * s, self.eye_y * s)

    # --- pixels-level API --------------------------------------------------
    def resize(self, gray: np.ndarray, landmarks: Optional[np.ndarray] = None) -> AlignResult:
        """Plain resize to ``output_size`` (aligned inputs); landmarks unchanged."""
        gray = _as_gray(gray)
        h, w = gray.shape
        s = self.output_size
        out = gray if (h, w) == (s, s) else cv2.resize(
            gray, (s, s), interpolation=cv2.INTER_AREA if min(h, w) > s else cv2.INTER_LINEAR)
        m = np.array([[s / w, 0, 0], [0, s / h, 0]], np.float64)
        return AlignResult(out, None if landmarks is None else np.asarray(landmarks, np.float32),
                           "resized", m)

    def warp(self, gray: np.ndarray, eyes: Eyes,
             landmarks: Optional[np.ndarray] = None) -> Tuple[np.ndarray, Optional[np.ndarray],
                                                              np.ndarray]:
        """Warp ``gray`` so ``eyes`` (continuous pixel coordinates) land on
        :attr:`target_eyes`; returns pixels, transformed landmarks ([0, 1] of the
        output, or None) and the 2x3 matrix."""
        gray = _as_gray(gray)
        matrix = similarity_from_eyes(eyes, self.target_eyes)
        scale = math.hypot(matrix[0, 0], matrix[1, 0])
        img, pre = gray, 1.0
        if scale < 0.5:
            # warpAffine samples bilinearly: shrink with area averaging first
            # (to about twice the final scale) to avoid aliasing.
            pre = min(1.0, 2.0 * scale)
            h, w = gray.shape
            nw, nh = max(1, round(w * pre)), max(1, round(h * pre))
            img = cv2.resize(gray, (nw, nh), interpolation=cv2.INTER_AREA)
            pre_m = np.array([[nw / w, 0, 0], [0, nh / h, 0]], np.float64)
            warp_m = matrix @ np.vstack([np.linalg.inv(np.vstack([pre_m, [0, 0, 1]]))[:2],
                                         [0, 0, 1]])
        else:
            warp_m = matrix
        s = self.output_size
        out = cv2.warpAffine(img, warp_matrix_for_cv2(warp_m), (s, s),
                             flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        lm = None
        if landmarks is not None:
            h, w = gray.shape
            pts = np.asarray(landmarks, np.float64).reshape(-1, 2) * (w, h)
            lm = np.clip(apply_affine(matrix, pts) / s, 0.0, 1.0).astype(np.float32)
        return out, lm, matrix

    def align_pixels(self, gray: np.ndarray, landmarks: Optional[np.ndarray] = None,
                     aligned: bool = False) -> AlignResult:
        """Align one grayscale image; ``landmarks`` (68, 2) in [0, 1] or None.

        Raises:
          NoFaceFound: no face detected (and no landmarks to go by).
        """
        gray = _as_gray(gray)
        if aligned:
            return self.resize(gray, landmarks)
        h, w = gray.shape
        face = None
        if landmarks is not None:
            pts = np.asarray(landmarks, np.float64).reshape(-1, 2) * (w, h)
            eyes = (tuple(pts[list(LEFT_EYE_POINTS)].mean(0)),
                    tuple(pts[list(RIGHT_EYE_POINTS)].mean(0)))
            method = "landmarks"
        else:
            faces = self.detector.detect(gray)
            if not faces:
                raise NoFaceFound(f"{self.detector.name}: no face in a {w}x{h} image")
            return self.align_face(gray, max(faces, key=lambda f: f.area))
        pixels, lm, matrix = self.warp(gray, eyes, landmarks)
        return AlignResult(pixels, lm, method, matrix, face)

    def align_face(self, gray: np.ndarray, face: Face) -> AlignResult:
        """Align one detected ``face`` of ``gray`` (eyes from the detector, else
        estimated from the box: method ``no_eyes_fallback``)."""
        gray = _as_gray(gray)
        if isinstance(self.detector, NoDetector):
            return self.resize(gray)
        eyes = self.detector.locate_eyes(gray, face)
        if eyes is not None:
            method = "keypoints" if face.eyes is not None else "eyes"
        else:
            x, y, bw, bh = face.box
            lx, rx, ey = HAAR_BOX_EYES
            eyes = ((x + lx * bw, y + ey * bh), (x + rx * bw, y + ey * bh))
            method = "no_eyes_fallback"
        pixels, _, matrix = self.warp(gray, eyes)
        return AlignResult(pixels, None, method, matrix, face)

    # --- sample-level API --------------------------------------------------
    def align(self, sample: contract.FaceSample, aligned: bool = False
              ) -> Tuple[contract.FaceSample, str]:
        """Aligned copy of ``sample`` (image re-encoded, landmarks transformed)
        and the method used. Raises :class:`NoFaceFound`."""
        gray = sample.pixels()
        has_lm = sample.landmarks_mask == 1.0
        result = self.align_pixels(gray, sample.landmarks if has_lm else None, aligned)
        out = dataclasses.replace(
            sample, image=contract.encode_png(result.pixels),
            landmarks=result.landmarks if has_lm else np.zeros_like(sample.landmarks))
        return out, result.method


def eye_line_angle(eyes: Sequence[Sequence[float]]) -> float:
    """Angle of the eye line in degrees (0 = horizontal)."""
    (lx, ly), (rx, ry) = eyes
    return math.degrees(math.atan2(ry - ly, rx - lx))
