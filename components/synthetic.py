"""Procedural synthetic faces: the embedded default dataset.

A seeded, dependency-light (numpy + Pillow) generator of grayscale faces whose
labels are true of their pixels: the emotion, the 17 AU intensities of
:data:`components.contract.AUS` and the 68 iBUG landmarks are all computed from
the same geometry that is drawn.

Identities
    :func:`subject_params` derives a persistent :class:`SubjectParams` (face
    shape, eye spacing and size, skin tone, brows, nose, mouth, hair, ...) from
    ``(seed, subject index)`` alone, so a subject looks the same in every
    expression, domain and call, and subject-disjoint splits mean something.

Expressions
    Faces move through FACS action units (Ekman & Friesen, 1978; Ekman, Friesen
    & Hager, 2002). Each AU displaces the geometry the way its muscle does
    (brows, lids, nose, lip corners, lips, jaw) and, where FACS lists an
    appearance change, draws it (forehead lines for AU1/2, glabellar furrows for
    AU4, crow's feet and raised cheeks for AU6, nose wrinkles for AU9,
    nasolabial folds for AU10/12, dimples for AU14, chin boss for AU17, teeth
    when the lips part). Each emotion is an EMFACS-7 prototype (Friesen & Ekman,
    1983; the emotion prediction table of the FACS Investigator's Guide, Ekman
    et al., 2002; the CK+ emotion criteria, Lucey et al., 2010), see
    :data:`EMOTION_PROTOTYPES`. Intensity letters map to
    A=0.2, B=0.4, C=0.6, D=0.8, E=1.0.

    ==========  ============================  =====================================
    emotion     prototype (AUs)               notes
    ==========  ============================  =====================================
    anger       4 + 5 + 7 + 23                brows lowered, lids tight, lips tight
    disgust     9 + 10 + 15 + 17              AU16 is not in the contract: the
                                              9+15+16 prototype uses its 9+10
                                              variant, with 15 and 17
    fear        1 + 2 + 4 + 5 + 7 + 20        lips parted (25) with the jaw drop
                + 25 + 26
    happiness   6 + 12                        Duchenne smile, lips closed
    sadness     1 + 4 + 15                    oblique brows, corners down
    surprise    1 + 2 + 5B + 25 + 26          lips parted (25) with the jaw drop
    neutral     none
    contempt    R12 + R14                     unilateral, subject's right side
                                              (image left), see
                                              :data:`UNILATERAL_AUS`; EMFACS
                                              codes R12A+R14A, drawn at B/C here
                                              so that it shows at 48 px
    ==========  ============================  =====================================

    The exact intensities are in :data:`EMOTION_PROTOTYPES`. A sample scales
    its prototype by a random factor in ``[min_intensity, 1]`` (default 0.4),
    jitters each AU (std 0.05) and activates each other AU weakly (up to 0.2)
    with probability 0.3; the AU label is exactly the intensity that was drawn,
    and :func:`render_face` of the label reproduces the pixels.

Domains
    ``lab``: frontal, centred, even light, mild noise. ``wild``: in-plane
    rotation (+-15 deg), scale 0.85-1.1, translation, a little yaw-like
    parallax, background clutter, a lighting gradient, contrast changes,
    gaussian noise, blur and a partial occlusion (sunglasses, hand or bar) in
    about a third of the samples. The affine is applied to the geometry before
    rasterising, so the landmarks follow the transformed face exactly.
    Occluded landmarks keep their true position.

Paired renders
    Every subject is rendered in every emotion; sample ``k`` of each emotion
    shares the nuisances (pose, light, background, occlusion, noise), so
    ``(neutral, k)`` and ``(happiness, k)`` differ by the expression only.
    The contract's ``sequence`` field names the group (``lab_01``).

Rendering draws polygons with Pillow at 3-5x the output size and box-filters
down (anti-aliasing): about 350-450 faces per CPU-second at 64 px on one core
(:func:`measure_speed`), about 340 with PNG encoding.

References
    Ekman, P., Friesen, W. V. (1978). Facial Action Coding System. Consulting
    Psychologists Press. Ekman, P., Friesen, W. V., Hager, J. C. (2002). Facial
    Action Coding System: The Manual and Investigator's Guide. Research Nexus.
    Friesen, W. V., Ekman, P. (1983). EMFACS-7: Emotional Facial Action Coding
    System. University of California, San Francisco. Lucey, P. et al. (2010).
    The Extended Cohn-Kanade Dataset (CK+). CVPR Workshops.

Usage::

    from components import synthetic
    for sample in synthetic.generate(n_subjects=4, samples_per_emotion=1):
        ...
    synthetic.write_dataset("out/synth", n_subjects=20)

or ``python -m components.synthetic --out out/synth --sheet /tmp/sheet.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from typing import Dict, Iterator, List, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from components import contract

DATASET_NAME = "synth"
DOMAINS: tuple = ("lab", "wild")
DEFAULT_SIZE = 64
# Per-sample scale of the prototype intensities: U(MIN_INTENSITY, 1).
MIN_INTENSITY = 0.4
# Weak activation of the AUs outside the prototype: probability and max value.
NOISE_AU_PROBABILITY = 0.3
NOISE_AU_MAX = 0.2
# Std of the per-AU jitter around the scaled prototype.
AU_JITTER = 0.05
VERSION = 2    # 2: samples carry the contract's `sequence` (render group)

# EMFACS-7 prototypes, {AU: intensity}; see the module docstring.
EMOTION_PROTOTYPES: Dict[str, Dict[int, float]] = {
    "anger": {4: 1.0, 5: 0.6, 7: 0.8, 23: 0.8},
    "disgust": {9: 1.0, 10: 0.6, 15: 0.6, 17: 0.6},
    "fear": {1: 0.8, 2: 0.6, 4: 0.6, 5: 0.8, 7: 0.4, 20: 0.8, 25: 0.8, 26: 0.4},
    "happiness": {6: 0.8, 12: 1.0},
    "sadness": {1: 1.0, 4: 0.6, 15: 0.8},
    "surprise": {1: 1.0, 2: 1.0, 5: 0.4, 25: 1.0, 26: 0.8},
    "neutral": {},
    "contempt": {12: 0.4, 14: 0.6},
}
# AUs that act on the subject's right side only (image left), per emotion.
UNILATERAL_AUS: Dict[str, Tuple[int, ...]] = {"contempt": (12, 14)}

_AU_INDEX = {au: i for i, au in enumerate(contract.AUS)}


# --------------------------------------------------------------------------- identities
@dataclasses.dataclass(frozen=True)
class SubjectParams:
    """Persistent morphology of one synthetic subject.

    Lengths are fractions of the image side in the canonical (lab, unrotated)
    frame; tones are gray levels in [0, 255]; ``eye_tilt`` is a shear of the eye
    corners (positive: outer corners up).
    """

    index: int
    subject: str
    face_half_width: float
    face_lower_height: float  # eye line -> chin
    forehead_height: float  # eye line -> top of the head
    jaw_taper: float
    jaw_squareness: float  # exponent < 1: squarer jaw
    eye_line_y: float
    eye_half_spacing: float
    eye_half_width: float
    eye_upper_height: float
    eye_lower_height: float
    eye_tilt: float
    iris_ratio: float
    brow_gap: float  # eye line -> top of brow
    brow_thickness: float
    brow_half_length: float
    brow_arch: float
    brow_tilt: float  # outer end lower when positive
    nose_length: float
    nose_half_width: float
    mouth_offset: float  # eye line -> mouth line
    mouth_half_width: float
    upper_lip: float
    lower_lip: float
    mouth_rest_curve: float  # resting corner offset, + is down
    skin_tone: float
    lip_tone: float
    brow_tone: float
    iris_tone: float
    sclera_tone: float
    hair_tone: float
    hairline_height: float  # eye line -> hairline
    hair_volume: float
    hair_long: bool
    ear_size: float
    clothing_tone: float
    crease_depth: float  # how visible expression lines are on this face
    asymmetry: float  # right/left eye and brow height offset
    hairline_curve: float  # 0 straight fringe .. 1 strongly receding temples
    hair_part: float  # horizontal offset of the hairline peak, fraction of face half width
    beard: float  # 0 none, else darkening of the beard area
    glasses: bool
    glasses_tone: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def subject_id(index: int) -> str:
    """Subject identity string, e.g. ``synth_s0007``."""
    return f"{DATASET_NAME}_s{int(index):04d}"


def subject_params(seed: int, index: int) -> SubjectParams:
    """Morphology of subject ``index`` under ``seed`` (deterministic)."""
    if seed < 0 or index < 0:
        raise ValueError("seed and index must be non-negative")
    rng = np.random.default_rng([int(seed), int(index), 0x1D])
    u = rng.uniform
    a = u(0.27, 0.33)
    ew = a * u(0.16, 0.20)
    lower = u(0.40, 0.47)
    nose = u(0.13, 0.17) * lower / 0.44
    skin = u(95.0, 215.0)
    hair_dark = rng.random() < 0.7
    hair = u(15.0, 80.0) if hair_dark else u(90.0, 200.0)
    if abs(hair - skin) < 30.0:
        hair = max(10.0, skin - 60.0)
    return SubjectParams(
        index=int(index),
        subject=subject_id(index),
        face_half_width=a,
        face_lower_height=lower,
        forehead_height=u(0.32, 0.38),
        jaw_taper=u(0.12, 0.40),
        jaw_squareness=u(0.6, 1.0),
        eye_line_y=u(0.38, 0.43),
        eye_half_spacing=a * u(0.37, 0.44),
        eye_half_width=ew,
        eye_upper_height=ew * u(0.40, 0.56),
        eye_lower_height=ew * u(0.24, 0.34),
        eye_tilt=u(-0.12, 0.16),
        iris_ratio=u(0.40, 0.48),
        brow_gap=u(0.062, 0.080),
        brow_thickness=u(0.012, 0.022),
        brow_half_length=ew * u(1.15, 1.40),
        brow_arch=u(0.004, 0.016),
        brow_tilt=u(-0.008, 0.012),
        nose_length=nose,
        nose_half_width=a * u(0.11, 0.15),
        mouth_offset=nose + u(0.065, 0.09),
        mouth_half_width=a * u(0.26, 0.34),
        upper_lip=u(0.010, 0.017),
        lower_lip=u(0.013, 0.022),
        mouth_rest_curve=u(-0.005, 0.006),
        skin_tone=skin,
        lip_tone=skin * u(0.66, 0.82),
        brow_tone=skin * u(0.28, 0.6),
        iris_tone=u(25.0, max(30.0, min(110.0, skin - 50.0))),
        sclera_tone=min(225.0, skin + u(15.0, 50.0)),
        hair_tone=hair,
        hairline_height=u(0.18, 0.28),
        hair_volume=u(0.0, 0.04),
        hair_long=bool(rng.random() < 0.4),
        ear_size=u(0.8, 1.2),
        clothing_tone=u(20.0, 230.0),
        crease_depth=u(0.6, 1.0),
        asymmetry=u(-0.004, 0.004),
        hairline_curve=u(0.15, 0.9),
        hair_part=u(-0.35, 0.35),
        beard=float(u(0.15, 0.45)) if rng.random() < 0.15 else 0.0,
        glasses=bool(rng.random() < 0.15),
        glasses_tone=u(10.0, 90.0),
    )


# --------------------------------------------------------------------------- AUs
def prototype_aus(emotion: Union[str, int]) -> np.ndarray:
    """Prototype AU intensities of ``emotion`` as a (17,) vector over contract.AUS."""
    name = contract.EMOTIONS[contract.canonical_emotion(emotion)
                             if isinstance(emotion, str) else int(emotion)]
    vec = np.zeros(contract.NUM_AUS, np.float32)
    for au, value in EMOTION_PROTOTYPES[name].items():
        vec[_AU_INDEX[au]] = value
    return vec


def sample_aus(emotion: Union[str, int], rng: np.random.Generator,
               min_intensity: float = MIN_INTENSITY) -> np.ndarray:
    """A random instance of ``emotion``: float32 (17,) AU intensities in [0, 1].

    The prototype is scaled by ``U(min_intensity, 1)`` and jittered per AU; each
    other AU is weakly active (``U(0, NOISE_AU_MAX)``) with probability
    ``NOISE_AU_PROBABILITY``. Values are rounded to 1/1000 so that the float32
    label reproduces the render exactly.
    """
    proto = prototype_aus(emotion)
    scale = rng.uniform(min_intensity, 1.0)
    jitter = rng.normal(0.0, AU_JITTER, contract.NUM_AUS)
    noise_on = rng.random(contract.NUM_AUS) < NOISE_AU_PROBABILITY
    noise = rng.uniform(0.0, NOISE_AU_MAX, contract.NUM_AUS)
    active = proto > 0
    aus = np.where(active, np.clip(proto * scale + jitter, 0.05, 1.0),
                   np.where(noise_on, noise, 0.0))
    return np.round(aus, 3).astype(np.float32)


def _au_dict(au_intensities) -> Dict[int, float]:
    vec = np.asarray(au_intensities, np.float64).reshape(-1)
    if vec.shape != (contract.NUM_AUS,):
        raise ValueError(f"expected {contract.NUM_AUS} AU intensities, got {vec.shape}")
    if not np.isfinite(vec).all():
        raise ValueError("AU intensities must be finite")
    vec = np.clip(vec, 0.0, 1.0)
    return {au: float(vec[i]) for i, au in enumerate(contract.AUS)}


# --------------------------------------------------------------------------- geometry
_BEZIER_WEIGHTS: Dict[int, np.ndarray] = {}
_UNIT_CIRCLES: Dict[int, np.ndarray] = {}


def _bezier(p0, p1, p2, n=12) -> np.ndarray:
    """n points of the quadratic Bezier curve p0 -> p2 with control p1."""
    w = _BEZIER_WEIGHTS.get(n)
    if w is None:
        t = np.linspace(0.0, 1.0, n)
        w = _BEZIER_WEIGHTS[n] = np.stack([(1 - t) ** 2, 2 * (1 - t) * t, t ** 2], axis=1)
    return w @ np.array([p0, p1, p2], np.float64).reshape(3, 2)


def _ellipse(cx, cy, rx, ry, n=24) -> np.ndarray:
    """n-gon approximating an axis-aligned ellipse."""
    c = _UNIT_CIRCLES.get(n)
    if c is None:
        t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
        c = _UNIT_CIRCLES[n] = np.stack([np.cos(t), np.sin(t)], axis=1)
    return c * (rx, ry) + (cx, cy)


def _grid_with(n: int, lo: float, hi: float, required) -> Tuple[np.ndarray, List[int]]:
    """``linspace(lo, hi, n)`` merged with ``required`` values, and their indices."""
    grid = np.unique(np.round(np.concatenate([np.linspace(lo, hi, n), required]), 9))
    return grid, [int(np.argmin(np.abs(grid - r))) for r in required]


# Dense curve parameters that contain the landmark positions.
_EYE_U = np.linspace(-1.0, 1.0, 19)  # holds -1, -1/3, 1/3, 1
_EYE_LM = {u: int(round((u + 1) * 9)) for u in (-1, -1 / 3, 1 / 3, 1)}
_BROW_U = np.linspace(-1.0, 1.0, 9)  # holds -1, -0.5, 0, 0.5, 1 at 0, 2, 4, 6, 8
_JAW_PHI = np.linspace(0.0, np.pi, 41)
_JAW_LANDMARK_PHI = np.linspace(0.0, np.pi, 17)
_ARC_T = np.linspace(0.0, np.pi, 31)
_UPPER_OUTER_LM = (-1.0, -0.62, -0.25, 0.0, 0.25, 0.62, 1.0)  # 48-54
_LOWER_OUTER_LM = (0.62, 0.28, 0.0, -0.28, -0.62)  # 55-59
_MOUTH_U, _MOUTH_LM = _grid_with(21, -1.0, 1.0, _UPPER_OUTER_LM + _LOWER_OUTER_LM)
_UPPER_OUTER_IDX, _LOWER_OUTER_IDX = _MOUTH_LM[:7], _MOUTH_LM[7:]
_INNER_U = np.linspace(-0.9, 0.9, 21)  # 60 at 0, 61-63 at 5, 10, 15, 64 at 20
_UPPER_INNER_IDX = [0, 5, 10, 15, 20]  # 60-64
_LOWER_INNER_IDX = [15, 10, 5]  # 65-67
_HAIRLINE_U = np.linspace(-1.0, 1.0, 21)


class _FaceGeometry:
    """Everything drawn for one face, in canonical normalized coordinates.

    ``landmarks`` (68, 2) are sampled from the same curves that are drawn.
    Side index 0 is image left (the subject's right), 1 is image right.
    """

    def __init__(self, p: SubjectParams, au: Dict[int, float], right_only=(),
                 gaze=(0.0, 0.0), yaw: float = 0.0):
        self.p, self.au = p, au
        s = p.face_half_width / 0.30  # movement scale
        self.s = s
        cx, ey = 0.5, p.eye_line_y
        self.cx = cx
        right_only = set(int(a) for a in right_only)

        def side_au(n):
            return (au[n], 0.0) if n in right_only else (au[n], au[n])

        self.side_au = side_au
        lm = np.zeros((68, 2))

        # jaw / head outline; phi: 0 image left at the eye line, pi/2 chin, pi image right
        a, H = p.face_half_width, p.face_lower_height
        jaw_drop = 0.05 * s * au[26]
        chin_raise = 0.010 * s * au[17]
        phi = np.concatenate([_JAW_PHI, _JAW_LANDMARK_PHI])
        sn, cs = np.sin(phi), np.cos(phi)
        jaw = np.stack([cx - a * cs * (1.0 - p.jaw_taper * sn ** 2),
                        ey + 0.01 + H * sn ** p.jaw_squareness + jaw_drop * sn ** 3
                        - chin_raise * sn ** 12], axis=1)
        self.jaw, lm[0:17] = jaw[:len(_JAW_PHI)], jaw[len(_JAW_PHI):]
        t = _ARC_T
        top = np.stack([cx + 1.02 * a * np.cos(t),
                        ey + 0.01 - p.forehead_height * np.sin(t) ** 0.8], axis=1)
        self.head = np.concatenate([self.jaw, top[1:-1]], axis=0)

        # eyes: u = -1 outer corner, +1 inner corner
        eu = p.eye_upper_height * max(0.12, 1 + 1.1 * au[5] - 0.4 * au[7] - 0.35 * au[6]
                                      - 0.12 * au[4] - 0.12 * au[9])
        el = p.eye_lower_height * max(0.12, 1 - 0.6 * au[6] - 0.55 * au[7])
        lower_flat = 0.9 - 0.5 * au[7]  # AU7 straightens the lower lid
        ew = p.eye_half_width
        u = _EYE_U
        upper_shape = (1 - u ** 2) ** 0.7 * (1 + 0.08 * u)
        lower_shape = (1 - u ** 2) ** lower_flat
        self.eyes = []
        for k, sign in enumerate((-1.0, 1.0)):
            ex = cx + sign * p.eye_half_spacing + yaw * 0.025
            eyy = ey + (p.asymmetry if k == 0 else -p.asymmetry)
            x = ex - sign * u * ew
            base = eyy + p.eye_tilt * u * ew * 0.5
            upper = np.stack([x, base - eu * upper_shape], axis=1)
            lower = np.stack([x, base + el * lower_shape], axis=1)
            iris_r = p.iris_ratio * ew
            iris_c = (ex + (gaze[0] - yaw * 0.3) * 0.3 * ew, eyy + 0.15 * eu + gaze[1] * 0.15 * eu)
            e = _EYE_LM
            self.eyes.append(dict(upper=upper, lower=lower, iris=iris_c, iris_r=iris_r,
                                  outer=upper[e[-1]], inner=upper[e[1]], center=(ex, eyy),
                                  sign=sign))
            if k == 0:  # 36 outer, 37-38 upper, 39 inner, 40-41 lower
                lm[36:40] = upper[[e[-1], e[-1 / 3], e[1 / 3], e[1]]]
                lm[40:42] = lower[[e[1 / 3], e[-1 / 3]]]
            else:  # 42 inner, 43-44 upper, 45 outer, 46-47 lower
                lm[42:46] = upper[[e[1], e[1 / 3], e[-1 / 3], e[-1]]]
                lm[46:48] = lower[[e[-1 / 3], e[1 / 3]]]

        # brows: u = -1 outer, +1 inner; landmarks on the upper edge
        u = _BROW_U
        w_in = ((u + 1) / 2) ** 1.5
        w_out = ((1 - u) / 2) ** 1.2
        brow_dy = s * (-0.065 * au[1] * w_in - 0.06 * au[2] * w_out - 0.015 * au[2] * (1 - u ** 2)
                       + 0.035 * au[4] * (0.4 + 0.6 * w_in) + 0.012 * au[9] * w_in)
        brow_dx = s * (0.028 * au[4] * w_in + 0.006 * au[9] * w_in)
        shape_y = -p.brow_arch * (1 - u ** 2) + p.brow_tilt * (1 - u) / 2 + brow_dy
        thick = p.brow_thickness * (0.55 + 0.45 * (u + 1) / 2)
        self.brows = []
        for k, sign in enumerate((-1.0, 1.0)):
            ex = cx + sign * p.eye_half_spacing + yaw * 0.02
            base_y = ey - p.brow_gap + (p.asymmetry if k == 0 else -p.asymmetry) * 1.5
            top_edge = np.stack([ex - sign * (u * p.brow_half_length - 0.1 * ew + brow_dx),
                                 base_y + shape_y], axis=1)
            bottom = top_edge + np.stack([np.zeros_like(u), thick], axis=1)
            self.brows.append(np.concatenate([top_edge, bottom[::-1]], axis=0))
            if k == 0:
                lm[17:22] = top_edge[0::2]  # outer -> inner
            else:
                lm[22:27] = top_edge[8::-2]  # inner -> outer
        self.brow_inner_y = min(lm[21, 1], lm[22, 1])

        # nose: 27-30 bridge to tip, 31-35 base left -> right
        nyaw = yaw * 0.045
        tip_y = ey + p.nose_length - 0.004 * s * au[9]
        top_y = ey - 0.004
        f = np.array([0.0, 1 / 3, 2 / 3, 1.0])
        lm[27:31, 0] = cx + nyaw * f ** 1.5
        lm[27:31, 1] = top_y + (tip_y - top_y) * f
        nw = p.nose_half_width * (1 + 0.12 * au[9] + 0.06 * au[10])
        lift = s * (0.018 * au[9] + 0.008 * au[10])
        base_x = cx + nyaw * 0.7
        lm[31:36, 0] = base_x + nw * np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
        lm[31:36, 1] = tip_y + np.array([0.010, 0.019, 0.021, 0.019, 0.010]) \
            - lift * np.array([1.0, 1.0, 0.8, 1.0, 1.0])
        self.nose_tip = lm[30].copy()

        # mouth; u in [-1, 1], negative side = image left
        my = ey + p.mouth_offset
        mx = cx + yaw * 0.03
        a12, a14 = side_au(12), side_au(14)
        mw = p.mouth_half_width
        widths, corners = [], []
        for k in range(2):
            widths.append(mw * (1 + 0.2 * a12[k] + 0.25 * au[20] - 0.10 * a14[k]
                                - 0.15 * au[23] - 0.08 * au[24]))
            corners.append(my + p.mouth_rest_curve
                           + s * (-0.042 * a12[k] - 0.008 * a14[k] + 0.038 * au[15]
                                  + 0.01 * au[20] - 0.003 * au[10]))
        gap = s * au[25] * (0.02 + 0.09 * au[26])
        corners = [c + 0.2 * gap for c in corners]
        center_y = my - s * (0.012 * au[17] + 0.003 * au[10])
        tighten = 0.3 * max(a12) + 0.25 * au[20] + 0.45 * au[23] + 0.55 * au[24]
        tu = p.upper_lip * max(0.25, 1 - tighten)
        tl = p.lower_lip * max(0.25, 1 - tighten + 0.1 * au[17])

        def mouth_x(u):
            return mx + u * np.where(u < 0, widths[0], widths[1])

        def lip_line(u):
            corner = np.where(u < 0, corners[0], corners[1])
            return center_y + (corner - center_y) * u ** 2

        def opening(u):
            return gap * np.clip(1 - (u / 0.9) ** 2, 0, 1) ** 0.6

        u = _MOUTH_U
        x, line, o = mouth_x(u), lip_line(u), opening(u)
        flat = np.clip(1 - u ** 2, 0, 1)
        bow = flat ** 0.5 * (1 - 0.18 * np.exp(-(u / 0.12) ** 2))
        upper_outer = np.stack([x, line - 0.25 * o - tu * bow - s * 0.018 * au[10] * flat], axis=1)
        lower_outer = np.stack([x, line + 0.75 * o + tl * flat ** 0.6], axis=1)
        u = _INNER_U
        x, line, o = mouth_x(u), lip_line(u), opening(u)
        upper_inner = np.stack([x, line - 0.25 * o], axis=1)
        lower_inner = np.stack([x, line + 0.75 * o], axis=1)
        self.upper_lip = np.concatenate([upper_outer, upper_inner[::-1]], axis=0)
        self.lower_lip = np.concatenate([lower_outer, lower_inner[::-1]], axis=0)
        self.mouth_open = np.concatenate([upper_inner, lower_inner[::-1]], axis=0)
        self.lip_line = np.stack([mouth_x(_MOUTH_U), lip_line(_MOUTH_U)], axis=1)
        self.upper_inner, self.lower_inner = upper_inner, lower_inner
        self.gap = gap
        lm[48:55] = upper_outer[_UPPER_OUTER_IDX]
        lm[55:60] = lower_outer[_LOWER_OUTER_IDX]
        lm[60:65] = upper_inner[_UPPER_INNER_IDX]
        lm[65:68] = lower_inner[_LOWER_INNER_IDX]
        self.landmarks = lm


# --------------------------------------------------------------------------- rasteriser
class _Canvas:
    """Pillow drawing in normalized coordinates through a 2x3 affine (canonical ->
    output), supersampled ``supersample`` times.

    Drawing calls are recorded and rasterised by :meth:`flush` (one matrix
    product for all points); :meth:`set_affine` flushes first.
    """

    def __init__(self, size: int, supersample: int, background: float):
        self.side = size * supersample
        self.supersample = supersample
        self.image = Image.new("L", (self.side, self.side), _gray(background))
        self.matrix = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        self.commands: list = []
        self._target = self.commands

    def set_affine(self, matrix: np.ndarray) -> None:
        self.flush()
        self.matrix = np.asarray(matrix, np.float64)

    def polygon(self, pts, fill) -> None:
        pts = np.asarray(pts, np.float64).reshape(-1, 2)
        self._target.append(("polygon", pts, _gray(fill), 0.0))

    def line(self, pts, width: float, fill) -> None:
        pts = np.asarray(pts, np.float64).reshape(-1, 2)
        self._target.append(("line", pts, _gray(fill), width))

    def ellipse(self, cx, cy, rx, ry, fill, n=24) -> None:
        self.polygon(_ellipse(cx, cy, rx, ry, n), fill)

    def clipped(self, clip_pts, paint) -> None:
        """Record ``paint(canvas)``'s drawing, restricted to polygon ``clip_pts``."""
        outer, sub = self._target, []
        self._target = sub
        try:
            paint(self)
        finally:
            self._target = outer
        outer.append(("clip", np.asarray(clip_pts, np.float64).reshape(-1, 2), sub, 0.0))

    def flush(self) -> None:
        """Rasterise the recorded commands."""
        if not self.commands:
            return
        arrays = list(_flatten(self.commands))
        m = self.matrix
        # Pillow's polygon fill treats pixel i as [i, i+1): no half-pixel shift
        pixels = (np.concatenate(arrays, axis=0) @ m[:, :2].T + m[:, 2]) * self.side
        scale = math.sqrt(abs(m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0])) * self.side
        position = [0]

        def take(n):
            start = position[0]
            position[0] += n
            return pixels[start:start + n]

        def run(commands, draw, offset):
            for kind, pts, arg, width in commands:
                px = take(len(pts))
                if kind == "polygon":
                    draw.polygon((px - offset).ravel().tolist(), fill=arg)
                elif kind == "line":
                    w = max(1, int(round(width * scale)))
                    draw.line((px - offset).ravel().tolist(), fill=arg, width=w,
                              joint="curve" if w > 2 else None)
                else:
                    lo = np.maximum(np.floor(px.min(axis=0)).astype(int) - 1, 0)
                    hi = np.minimum(np.ceil(px.max(axis=0)).astype(int) + 2, self.side)
                    if (hi <= lo).any():  # outside the image
                        take(sum(len(q) for q in _flatten(arg)))
                        continue
                    box = (int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1]))
                    mask = Image.new("L", (box[2] - box[0], box[3] - box[1]), 0)
                    ImageDraw.Draw(mask).polygon((px - lo).ravel().tolist(), fill=255)
                    crop = self.image.crop(box)
                    run(arg, ImageDraw.Draw(crop), lo)
                    self.image.paste(crop, box, mask)

        run(self.commands, ImageDraw.Draw(self.image), np.zeros(2))
        self.commands.clear()


def _flatten(commands):
    """Point arrays of nested recorded commands, in recording order."""
    for kind, pts, arg, _ in commands:
        yield pts
        if kind == "clip":
            yield from _flatten(arg)


def _gray(value) -> int:
    return int(round(min(255.0, max(0.0, float(value)))))


def _shade(tone: float, amount: float) -> float:
    """``tone`` darkened by ``amount`` in [0, 1]."""
    return tone * (1.0 - min(1.0, max(0.0, amount)))


def _draw_face(canvas: _Canvas, g: _FaceGeometry) -> None:
    p, au, s, cx = g.p, g.au, g.s, g.cx
    skin = p.skin_tone
    lm = g.landmarks
    depth = p.crease_depth
    a, ey = p.face_half_width, p.eye_line_y
    head_center = np.array([cx, ey + 0.05])

    def crease(pts, width, amount):
        """Skin line darkened by ``amount`` (x1.3), 1.75x wider; skipped when invisible."""
        if amount > 0.01:
            canvas.line(pts, 1.75 * width, _shade(skin, 1.3 * amount))

    # hair behind the head, neck, shoulders, ears
    top_y = ey + 0.01
    if p.hair_long:
        ry = p.forehead_height + p.hair_volume
        back = np.stack([cx + (1.1 * a + p.hair_volume) * np.cos(_ARC_T),
                         top_y - ry * np.sin(_ARC_T) ** 0.8], axis=1)
        shoulders = [[cx - 1.12 * a, ey + 0.32], [cx + 1.12 * a, ey + 0.32]]
        back = np.concatenate([back, shoulders], axis=0)
        canvas.polygon(back, p.hair_tone * 0.85)
    chin_y = ey + 0.01 + p.face_lower_height  # at rest: the neck does not move with the jaw
    canvas.polygon([[cx - 0.45 * a, ey + 0.2], [cx + 0.45 * a, ey + 0.2],
                    [cx + 0.5 * a, chin_y + 0.2], [cx - 0.5 * a, chin_y + 0.2]], skin * 0.72)
    canvas.polygon([[cx - 0.55 * a, chin_y + 0.07], [cx + 0.55 * a, chin_y + 0.07],
                    [cx + 2.0 * a, chin_y + 0.22], [cx + 2.0 * a, 1.5], [cx - 2.0 * a, 1.5],
                    [cx - 2.0 * a, chin_y + 0.22]], p.clothing_tone)
    for sign in (-1.0, 1.0):
        ear_x = cx + sign * (a * 0.98)
        canvas.ellipse(ear_x, ey + 0.045, 0.028 * p.ear_size, 0.055 * p.ear_size, skin * 0.85, 16)
        canvas.ellipse(ear_x + sign * 0.006, ey + 0.045, 0.012 * p.ear_size, 0.035 * p.ear_size,
                       skin * 0.7, 12)

    # face with a little edge shading
    for shrink, tone in ((1.0, 0.80), (0.95, 0.90), (0.88, 0.97), (0.78, 1.0)):
        canvas.polygon(head_center + (g.head - head_center) * shrink, skin * tone)

    # hair in front: cap above the hairline, temples down to the side of the head
    peak = (_HAIRLINE_U - p.hair_part) / (1 + abs(p.hair_part))
    hairline = np.stack([cx + _HAIRLINE_U * 0.9 * a,
                         ey - p.hairline_height * (1 - 0.5 * p.hairline_curve * peak ** 2)
                         * (1 - 0.4 * _HAIRLINE_U ** 4)], axis=1)
    rx, ry = 1.05 * a + p.hair_volume, p.forehead_height + p.hair_volume
    temple_y = ey - 0.03
    t0 = math.asin(min(1.0, ((top_y - temple_y) / ry) ** 1.25))
    t = t0 + (np.pi - 2 * t0) * _ARC_T / np.pi
    cap = np.stack([cx + rx * np.cos(t), top_y - ry * np.sin(t) ** 0.8], axis=1)
    canvas.polygon(np.concatenate([cap, [[cx - 1.04 * a, temple_y]], hairline,
                                   [[cx + 1.04 * a, temple_y]]], axis=0), p.hair_tone)

    if p.beard > 0:  # jaw below the mouth corners and the upper lip
        upper = [lm[48] + (-0.012, 0.0), lm[33] + (-0.03, 0.01), lm[33] + (0.03, 0.01),
                 lm[54] + (0.012, 0.0)]
        canvas.polygon(np.concatenate([g.jaw[10:31], upper[::-1]], axis=0),
                       _shade(skin, p.beard))

    # cheeks: AU6 raises and lights them; infraorbital furrow for AU6/AU7
    for eye in g.eyes:
        ex, eyy = eye["center"]
        bulge = au[6]
        if bulge > 0.02:
            canvas.ellipse(ex + eye["sign"] * 0.01, eyy + 0.07 - 0.02 * s * bulge, 0.055, 0.035,
                           min(255.0, skin * (1.0 + 0.08 * bulge)), 20)
        furrow = eye["lower"][3:-3] + [0.0, 0.012 + 0.004 * (1 - bulge)]
        crease(furrow, 0.004, depth * (0.06 + 0.3 * bulge + 0.25 * au[7]))

    # nasolabial folds (AU12, AU10, AU9, AU6), marionette lines (AU15), dimples (AU14)
    a12, a14 = g.side_au(12), g.side_au(14)
    for k, sign in enumerate((-1.0, 1.0)):
        wing = lm[31] if k == 0 else lm[35]
        corner = lm[48] if k == 0 else lm[54]
        start = wing + (sign * 0.012, -0.006)
        end = corner + (sign * 0.02, 0.012)
        ctrl = (start + end) / 2 + (sign * 0.02, 0.0)
        fold = depth * (0.12 + 0.55 * a12[k] + 0.5 * au[10] + 0.3 * au[9] + 0.2 * au[6])
        crease(_bezier(start, ctrl, end), 0.005, 0.45 * fold)
        if au[15] > 0.02:
            crease([corner + (sign * 0.006, 0.006), corner + (sign * 0.012, 0.04)], 0.004,
                   0.35 * depth * au[15])
        if a14[k] > 0.02:
            crease(_bezier(corner + (sign * 0.008, -0.01), corner + (sign * 0.016, 0.0),
                           corner + (sign * 0.008, 0.01), 6), 0.005, 0.5 * depth * a14[k])

    # forehead lines: centre for AU1, sides for AU2
    brow_top = min(lm[17:27, 1])
    hair_y = ey - p.hairline_height
    for row in range(3):
        y = brow_top - 0.018 * (row + 1) * s
        if y < hair_y + 0.015:
            break
        crease(_bezier((cx - 0.06, y + 0.003), (cx, y - 0.004), (cx + 0.06, y + 0.003), 8),
               0.004, 0.45 * depth * au[1])
        for sign in (-1.0, 1.0):
            crease(_bezier((cx + sign * 0.06, y + 0.003), (cx + sign * 0.1, y - 0.002),
                           (cx + sign * 0.14, y + 0.008), 8), 0.004, 0.45 * depth * au[2])
    # glabellar furrows (AU4) and nose wrinkles (AU9)
    for sign in (-1.0, 1.0):
        x = cx + sign * 0.012
        crease([(x, g.brow_inner_y - 0.012), (x + sign * 0.002, ey - 0.008)], 0.004,
               0.5 * depth * au[4])
    for i in range(3):
        y = lm[27, 1] + (lm[29, 1] - lm[27, 1]) * (0.2 + 0.3 * i)
        crease(_bezier((cx - 0.025, y + 0.004), (cx, y - 0.004), (cx + 0.025, y + 0.004), 6),
               0.004, 0.55 * depth * au[9])

    # eyes: sclera, iris and pupil clipped to the lids, lash line, crease, crow's feet
    for eye in g.eyes:  # orbital shadow
        ex, eyy = eye["center"]
        canvas.ellipse(ex, eyy - 0.004, 1.45 * p.eye_half_width, 2.2 * p.eye_upper_height,
                       skin * 0.9, 20)
    for eye in g.eyes:
        outline = np.concatenate([eye["upper"], eye["lower"][::-1][1:-1]], axis=0)
        canvas.polygon(outline, p.sclera_tone)

        def paint_iris(c, eye=eye):
            ix, iy = eye["iris"]
            r = eye["iris_r"]
            c.ellipse(ix, iy, r, r, p.iris_tone, 20)
            c.ellipse(ix, iy, 0.45 * r, 0.45 * r, p.iris_tone * 0.35, 12)
            c.ellipse(ix + 0.3 * r, iy - 0.3 * r, 0.18 * r, 0.18 * r, 235, 8)

        canvas.clipped(outline, paint_iris)
        canvas.line(eye["upper"], 0.009, min(p.iris_tone, skin * 0.35))
        canvas.line(eye["lower"][2:-2], 0.003, skin * 0.7)
        crease(eye["upper"][2:-2] + (0.0, -0.012 - 0.004 * au[5]), 0.003, 0.25 * (1 - 0.6 * au[5]))
        if au[6] > 0.02:
            ox, oy = eye["outer"]
            sign = eye["sign"]
            for dy in (-0.012, 0.0, 0.012):
                crease([(ox + sign * 0.008, oy + dy * 0.5), (ox + sign * 0.026, oy + dy * 1.4)],
                       0.003, 0.5 * depth * au[6])

    # brows
    for brow in g.brows:
        canvas.polygon(brow, p.brow_tone)
    if p.glasses:
        ew = p.eye_half_width
        for eye in g.eyes:
            ex, eyy = eye["center"]
            frame = _ellipse(ex, eyy + 0.004, 1.5 * ew, 0.036, 20)
            canvas.line(np.concatenate([frame, frame[:1]], axis=0), 0.005, p.glasses_tone)
        left, right = g.eyes[0]["center"], g.eyes[1]["center"]
        canvas.line([(left[0] + 1.5 * ew, left[1]), (cx, left[1] - 0.012),
                     (right[0] - 1.5 * ew, right[1])], 0.005, p.glasses_tone)

    # nose: sides, wings, nostrils, tip light
    for sign, i_wing, i_nostril in ((-1.0, 31, 32), (1.0, 35, 34)):
        wing = lm[i_wing]
        side = _bezier((lm[27, 0] + sign * 0.018, ey + 0.01),
                       (lm[28, 0] + sign * 0.02, wing[1] - 0.04), wing + (0.0, -0.014), 8)
        canvas.line(side, 0.004, skin * 0.86)
        nostril = (wing + lm[i_nostril]) / 2
        canvas.line(_bezier(wing + (0.0, -0.016), wing + (sign * 0.012, -0.004),
                            nostril + (0, 0.004), 8), 0.005, skin * 0.7)
        canvas.ellipse(nostril[0], nostril[1] - 0.002, 0.011, 0.005, skin * 0.4, 12)
    canvas.ellipse(g.nose_tip[0], g.nose_tip[1] + 0.004, 0.014, 0.01, min(255.0, skin * 1.06), 14)
    canvas.line(lm[31:36], 0.003, skin * 0.8)

    # mouth: lips, opening with teeth, lip line, AU23/24 press lines, AU17 chin boss
    canvas.polygon(g.upper_lip, p.lip_tone * 0.93)
    canvas.polygon(g.lower_lip, p.lip_tone)
    if g.gap > 0.002:
        def paint_mouth(c):
            c.polygon(g.mouth_open, 30)
            teeth = g.upper_inner + (0.0, min(0.014, 0.5 * g.gap))
            c.polygon(np.concatenate([g.upper_inner, teeth[::-1]], axis=0), 205)
            if g.gap > 0.03:
                low = g.lower_inner - (0.0, 0.007)
                c.polygon(np.concatenate([g.lower_inner, low[::-1]], axis=0), 170)

        canvas.clipped(g.mouth_open, paint_mouth)
    canvas.line(g.lip_line, 0.006, p.lip_tone * 0.45)
    press = au[24] + 0.5 * au[23]
    crease(_bezier(lm[50] + (0, -0.012), lm[51] + (0, -0.018), lm[52] + (0, -0.012), 8),
           0.004, 0.3 * depth * press)
    below = lm[57] + (0.0, 0.02 + 0.004 * (1 - au[17]))
    crease(_bezier(below + (-0.025, 0.004), below + (0, -0.004), below + (0.025, 0.004), 8),
           0.004, depth * (0.1 + 0.35 * au[17]))
    if au[17] > 0.02:
        chin = (lm[57] + lm[8]) / 2 + (0.0, 0.01)
        tone = _shade(skin, 0.4 * depth * au[17])
        for dx, dy in ((-0.012, 0.0), (0.012, 0.0), (0.0, 0.012), (-0.006, 0.018), (0.008, 0.016)):
            canvas.ellipse(chin[0] + dx, chin[1] + dy, 0.004, 0.003, tone, 8)


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


# --------------------------------------------------------------------------- dataset
def sample_rngs(seed: int, subject: int, domain: str, emotion: int,
                sample: int) -> Tuple[np.random.Generator, np.random.Generator]:
    """``(au_rng, render_rng)`` of one sample of :func:`generate`.

    The render rng (pose, light, background, occlusion, noise) does not depend
    on the emotion: sample ``k`` of every emotion of a subject in a domain is
    rendered under the same conditions, so the pairs differ by expression only.
    """
    d = DOMAINS.index(domain)
    return (np.random.default_rng([int(seed), int(subject), d, int(emotion), int(sample), 0]),
            np.random.default_rng([int(seed), int(subject), d, int(sample), 1]))


def generate(n_subjects: int = 20, samples_per_emotion: int = 2,
             domains: Sequence[str] = DOMAINS, emotions: Sequence = contract.EMOTIONS,
             size: int = DEFAULT_SIZE, seed: int = 0, subject_offset: int = 0,
             min_intensity: float = MIN_INTENSITY) -> Iterator[contract.FaceSample]:
    """Yield contract samples: every subject in every domain x emotion x sample.

    A sample depends only on ``(seed, subject, domain, emotion, sample)``, so
    subsets (fewer domains/emotions, a subject offset) reproduce the same
    faces. Sample ``k`` of every emotion shares pose, light and occlusion
    (:func:`sample_rngs`): paired renders for expression synthesis. uid:
    ``synth_s0003_wild_happiness_01``; dataset ``synth_<domain>``; split ``""``
    (the pipeline splits by subject); sequence ``<domain>_<k>`` (e.g. ``wild_01``).
    """
    emotion_ids = [contract.canonical_emotion(e) if isinstance(e, str) else int(e)
                   for e in emotions]
    # The label set of the generated dataset is the emotions it was asked for.
    label_set = contract.label_set_mask(emotion_ids)
    for domain in domains:
        if domain not in DOMAINS:
            raise ValueError(f"unknown domain {domain!r}; known: {DOMAINS}")
    for subject in range(subject_offset, subject_offset + n_subjects):
        params = subject_params(seed, subject)
        for domain in domains:
            for emotion in emotion_ids:
                name = contract.EMOTIONS[emotion]
                for k in range(samples_per_emotion):
                    au_rng, render_rng = sample_rngs(seed, subject, domain, emotion, k)
                    aus = sample_aus(emotion, au_rng, min_intensity)
                    pixels, landmarks = render_face(params, aus, size, domain, render_rng,
                                                    right_only=UNILATERAL_AUS.get(name, ()))
                    yield contract.FaceSample(
                        image=contract.encode_png(pixels),
                        dataset=f"{DATASET_NAME}_{domain}",
                        uid=f"{params.subject}_{domain}_{name}_{k:02d}",
                        emotion=emotion,
                        emotion_mask=label_set,
                        aus=aus,
                        aus_mask=np.ones(contract.NUM_AUS, np.float32),
                        landmarks=landmarks,
                        landmarks_mask=1.0,
                        subject=params.subject,
                        domain=domain,
                        split="",
                        sequence=f"{domain}_{k:02d}")


def write_dataset(out_dir: str, n_subjects: int = 20, samples_per_emotion: int = 2,
                  size: int = DEFAULT_SIZE, seed: int = 0, domains: Sequence[str] = DOMAINS,
                  progress: bool = True, min_intensity: float = MIN_INTENSITY) -> dict:
    """Write ``out_dir/synth.tfrecord`` and ``out_dir/manifest.json``; return the manifest."""
    os.makedirs(out_dir, exist_ok=True)
    domains = tuple(domains)
    total = n_subjects * samples_per_emotion * len(domains) * contract.NUM_EMOTIONS
    counts = {"emotion": {}, "dataset": {}, "domain": {}, "subject": {}}
    import tensorflow  # noqa: F401  (imported before the timer and the progress bar start)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="synthetic faces", unit="face")

    def counted():
        for sample in generate(n_subjects, samples_per_emotion, domains, contract.EMOTIONS,
                               size, seed, 0, min_intensity):
            for key, value in (("emotion", contract.EMOTIONS[sample.emotion]),
                               ("dataset", sample.dataset), ("domain", sample.domain),
                               ("subject", sample.subject)):
                counts[key][value] = counts[key].get(value, 0) + 1
            if bar is not None:
                bar.update(1)
            yield sample

    start = time.perf_counter()
    path = os.path.join(out_dir, "synth.tfrecord")
    try:
        n = contract.write_tfrecord(counted(), path)
    finally:
        if bar is not None:
            bar.close()
    manifest = {
        "generator": "components.synthetic",
        "version": VERSION,
        "file": "synth.tfrecord",
        "num_samples": n,
        "params": {"n_subjects": n_subjects, "samples_per_emotion": samples_per_emotion,
                   "size": size, "seed": seed, "domains": list(domains),
                   "min_intensity": min_intensity, "noise_au_probability": NOISE_AU_PROBABILITY,
                   "noise_au_max": NOISE_AU_MAX, "au_jitter": AU_JITTER},
        "emotions": list(contract.EMOTIONS),
        "aus": list(contract.AUS),
        "prototypes": {e: {str(k): v for k, v in EMOTION_PROTOTYPES[e].items()}
                       for e in contract.EMOTIONS},
        "unilateral_aus": {e: list(v) for e, v in UNILATERAL_AUS.items()},
        "counts": counts,
        "seconds": round(time.perf_counter() - start, 2),
    }
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    return manifest


def contact_sheet(n_subjects: int = 4, size: int = DEFAULT_SIZE, seed: int = 0,
                  domains: Sequence[str] = DOMAINS, min_intensity: float = 1.0) -> np.ndarray:
    """uint8 grid: rows = emotions, columns = subjects x domains (1 px gaps)."""
    rows = []
    for e, name in enumerate(contract.EMOTIONS):
        row = []
        for subject in range(n_subjects):
            params = subject_params(seed, subject)
            for domain in domains:
                au_rng, render_rng = sample_rngs(seed, subject, domain, e, 0)
                aus = sample_aus(e, au_rng, min_intensity)
                pixels, _ = render_face(params, aus, size, domain, render_rng,
                                        right_only=UNILATERAL_AUS.get(name, ()))
                row.append(np.pad(pixels, ((0, 1), (0, 1)), constant_values=255))
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write synth.tfrecord + manifest.json here")
    parser.add_argument("--subjects", type=int, default=20)
    parser.add_argument("--samples-per-emotion", type=int, default=2)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sheet", help="save a contact sheet PNG here")
    parser.add_argument("--speed", action="store_true", help="measure faces/s on this core")
    args = parser.parse_args(argv)
    if args.sheet:
        Image.fromarray(contact_sheet(size=args.size, seed=args.seed)).save(args.sheet)
        print(f"wrote {args.sheet}")
    if args.speed:
        print(f"{measure_speed(args.size):.0f} faces/s at {args.size} px")
    if args.out:
        manifest = write_dataset(args.out, args.subjects, args.samples_per_emotion, args.size,
                                 args.seed)
        print(f"wrote {manifest['num_samples']} samples to {args.out}")
    return 0


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


if __name__ == "__main__":
    raise SystemExit(main())
