"""One rendered face in a domain (``lab`` or ``wild``): pose, background, light,
occlusion and noise around the drawn geometry, with the landmarks mapped
through the same affine."""

from __future__ import annotations

import math
import time
from typing import Sequence, Tuple, Union

import numpy as np
from PIL import ImageFilter

from components import contract
from components.synthetic.drawing import _Canvas, _draw_face
from components.synthetic.expressions import _au_dict, sample_aus
from components.synthetic.geometry import _FaceGeometry
from components.synthetic.identities import SubjectParams, subject_params

DOMAINS: tuple = ("lab", "wild")
DEFAULT_SIZE = 64


def _supersample(size: int) -> int:
    return max(2, int(round(256 / size)))


def _affine(scale: float, angle: float, shift) -> np.ndarray:
    """Canonical -> output affine about the image centre."""
    c, s = math.cos(angle), math.sin(angle)
    lin = scale * np.array([[c, -s], [s, c]])
    centre = np.array([0.5, 0.5])
    return np.concatenate([lin, (centre + np.asarray(shift) - lin @ centre)[:, None]], axis=1)


def _keep_inside(matrix: np.ndarray, points: np.ndarray, margin: float = 0.02) -> np.ndarray:
    """Shrink (about the centre) and shift ``matrix`` so that ``points`` land in
    ``[margin, 1 - margin]``; wild poses never push a landmark off the image."""
    matrix = matrix.copy()
    out = points @ matrix[:, :2].T + matrix[:, 2]
    span = (out.max(axis=0) - out.min(axis=0)).max()
    if span > 1 - 2 * margin:
        k = (1 - 2 * margin) / span
        matrix *= k
        matrix[:, 2] += (1 - k) * 0.5
        out = points @ matrix[:, :2].T + matrix[:, 2]
    lo, hi = out.min(axis=0), out.max(axis=0)
    matrix[:, 2] += np.maximum(margin - lo, 0) - np.maximum(hi - (1 - margin), 0)
    return matrix


def _landmark_bounds(p: SubjectParams) -> np.ndarray:
    """Corners of a box holding the landmarks under any expression (the chin at
    full jaw drop, the brows fully raised); depends on the identity only, so
    paired renders get the same pose correction."""
    s = p.face_half_width / 0.30
    top = p.eye_line_y - p.brow_gap - p.brow_arch - 0.09 * s
    bottom = p.eye_line_y + 0.01 + p.face_lower_height + 0.05 * s
    left, right = 0.5 - 1.02 * p.face_half_width, 0.5 + 1.02 * p.face_half_width
    return np.array([[left, top], [right, top], [right, bottom], [left, bottom]])


def render_face(params: SubjectParams, au_intensities, size: int = DEFAULT_SIZE,
                domain: str = "lab", rng: Union[np.random.Generator, int, None] = None,
                *, right_only: Sequence[int] = ()) -> Tuple[np.ndarray, np.ndarray]:
    """Draw one face.

    Args:
      params: the subject's morphology (:func:`subject_params`).
      au_intensities: (17,) intensities in [0, 1] in ``contract.AUS`` order.
      size: output side in pixels (48-96 intended).
      domain: ``"lab"`` or ``"wild"``.
      rng: per-sample nuisances (gaze, background, pose, light, noise,
        occlusion); a Generator, an int seed, or None for seed 0.
      right_only: AUs that act on the subject's right side only (image left),
        e.g. ``(12, 14)`` for contempt.

    Returns:
      ``(pixels, landmarks)``: uint8 (size, size) and float32 (68, 2) as
      (x, y) in [0, 1] of the output image, iBUG order.
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; known: {DOMAINS}")
    size = int(size)
    if not 24 <= size <= 256:
        raise ValueError(f"size {size} outside [24, 256]")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(0 if rng is None else int(rng))
    au = _au_dict(au_intensities)
    wild = domain == "wild"

    # nuisances, drawn in a fixed order
    gaze = (rng.uniform(-0.6, 0.6), rng.uniform(-0.3, 0.3))
    if wild:
        angle = math.radians(rng.uniform(-15.0, 15.0))
        scale = rng.uniform(0.85, 1.1)
        shift = rng.uniform(-0.07, 0.07, 2)
        yaw = rng.uniform(-1.0, 1.0)
        background = rng.uniform(20.0, 235.0)
    else:
        angle = 0.0
        scale = rng.uniform(0.98, 1.02)
        shift = rng.uniform(-0.01, 0.01, 2)
        yaw = 0.0
        background = rng.uniform(150.0, 200.0)
    g = _FaceGeometry(params, au, right_only=right_only, gaze=gaze, yaw=yaw)
    matrix = _keep_inside(_affine(scale, angle, shift), _landmark_bounds(params))

    canvas = _Canvas(size, _supersample(size), background)
    if wild:  # background clutter in the output frame
        for _ in range(int(rng.integers(0, 4))):
            x, y = rng.uniform(0, 1, 2)
            w, h = rng.uniform(0.1, 0.5, 2)
            tone = rng.uniform(0, 255)
            if rng.random() < 0.5:
                canvas.polygon([[x - w, y - h], [x + w, y - h], [x + w, y + h], [x - w, y + h]],
                               tone)
            else:
                canvas.ellipse(x, y, w, h, tone)
    canvas.set_affine(matrix)
    _draw_face(canvas, g)

    occluder = "none"
    if wild:
        roll = rng.random()
        occluder = ("sunglasses" if roll < 0.12 else "hand" if roll < 0.24
                    else "bar" if roll < 0.35 else "none")
        occ = rng.uniform(0, 1, 6)
        if occluder == "sunglasses":  # follows the face
            tone = 15 + 50 * occ[0]
            for eye in g.eyes:
                ex, eyy = eye["center"]
                canvas.ellipse(ex, eyy - 0.005, 1.55 * params.eye_half_width,
                               0.042 + 0.01 * occ[1], tone, 20)
            canvas.line([g.eyes[0]["inner"], g.eyes[1]["inner"]], 0.008, tone)
        elif occluder in ("hand", "bar"):  # output frame
            canvas.set_affine(_affine(1.0, 0.0, (0.0, 0.0)))
            x, y = 0.2 + 0.6 * occ[0], 0.45 + 0.45 * occ[1]
            if occluder == "hand":
                tone = float(np.clip(params.skin_tone * (0.85 + 0.3 * occ[2]), 0, 255))
                w, h = 0.14 + 0.08 * occ[3], 0.12 + 0.06 * occ[4]
                canvas.ellipse(x, y + h * 0.6, w, h * 1.3, tone, 24)
                for f in range(4):
                    fx = x - w * 0.75 + f * w * 0.5
                    canvas.polygon([[fx - 0.022, y], [fx + 0.022, y], [fx + 0.02, y - h * 1.1],
                                    [fx - 0.02, y - h * 1.1]], tone)
                    canvas.line([[fx + 0.022, y - h], [fx + 0.022, y + 0.02]], 0.004, tone * 0.75)
            else:
                w, h = (0.5 * occ[3] + 0.15, 0.06 + 0.08 * occ[4]) if occ[5] < 0.5 else \
                    (0.05 + 0.08 * occ[4], 0.3 * occ[3] + 0.2)
                canvas.polygon([[x - w, y - h], [x + w, y - h], [x + w, y + h], [x - w, y + h]],
                               rng.uniform(0, 255))

    canvas.flush()
    image = canvas.image.reduce(canvas.supersample)
    if wild:
        blur = rng.uniform(-0.4, 0.8) * size / 64
        if blur > 0.2:
            image = image.filter(ImageFilter.GaussianBlur(blur))
    pixels = np.asarray(image, np.float32)
    if wild:
        direction = rng.uniform(0, 2 * np.pi)
        strength = rng.uniform(0.1, 0.4)
        yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
        light = 1.0 + strength * (np.cos(direction) * xx + np.sin(direction) * yy) * 2
        contrast = rng.uniform(0.7, 1.2)
        brightness = rng.uniform(-25.0, 25.0)
        pixels = (pixels * light - 128.0) * contrast + 128.0 + brightness
        noise_std = rng.uniform(2.0, 6.0)
    else:
        pixels = pixels * rng.uniform(0.97, 1.03)
        noise_std = rng.uniform(1.0, 3.0)
    pixels = pixels + rng.normal(0.0, noise_std, pixels.shape)
    pixels = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)

    landmarks = g.landmarks @ matrix[:, :2].T + matrix[:, 2]
    return pixels, landmarks.astype(np.float32)


def measure_speed(size: int = DEFAULT_SIZE, n: int = 200, seed: int = 0) -> float:
    """Faces per CPU-second of :func:`render_face` (half lab, half wild) on one core.

    CPU time rather than wall time, so that other processes on the machine do
    not count.
    """
    params = [subject_params(seed, i) for i in range(8)]
    rng = np.random.default_rng(seed)
    aus = [sample_aus(i % contract.NUM_EMOTIONS, rng) for i in range(n)]
    render_face(params[0], aus[0], size, "wild", rng)  # warm caches
    start = time.process_time()
    for i in range(n):
        render_face(params[i % 8], aus[i], size, DOMAINS[i % 2], rng)
    return n / max(time.process_time() - start, 1e-9)
