"""Expressions as FACS action units: the EMFACS-7 prototypes of the emotions
(see the package docstring) and random instances of them."""

from __future__ import annotations

from typing import Dict, Tuple, Union

import numpy as np

from components import contract

# Per-sample scale of the prototype intensities: U(MIN_INTENSITY, 1).
MIN_INTENSITY = 0.4
# Weak activation of the AUs outside the prototype: probability and max value.
NOISE_AU_PROBABILITY = 0.3
NOISE_AU_MAX = 0.2
# Std of the per-AU jitter around the scaled prototype.
AU_JITTER = 0.05

# EMFACS-7 prototypes, {AU: intensity}; see the package docstring.
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
