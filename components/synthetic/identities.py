"""Synthetic subjects: a persistent morphology per ``(seed, subject index)``."""

from __future__ import annotations

import dataclasses

import numpy as np

DATASET_NAME = "synth"


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
