"""The multi-task example contract: one ``tf.train.Example`` layout for every
reader and every method.

Every sample, whatever dataset it comes from, is one :class:`FaceSample`:

===================  ==========  =====================================================
feature              type        meaning
===================  ==========  =====================================================
``image``            bytes       PNG of the aligned face (grayscale, any size)
``emotion``          int64       index into :data:`EMOTIONS`, ``-1`` when absent
``emotion_mask``     float[8]    1 for each emotion the source dataset *can* label
                                 (its label set); all 0 when ``emotion == -1``
``aus``              float[17]   AU occurrence/intensity in [0, 1] over :data:`AUS`
``aus_mask``         float[17]   1 where the AU value is known
``landmarks``        float[136]  68 x (x, y) in [0, 1] of image size, iBUG order,
                                 flattened ``x0, y0, x1, y1, ...``
``landmarks_mask``   float       1 when landmarks are known
``subject``          bytes       identity string ("" when unknown)
``dataset``          bytes       source dataset name
``domain``           bytes       capture domain (e.g. ``lab`` / ``wild``); defaults
                                 to the dataset name
``split``            bytes       split the source itself assigns (``train``/``val``/
                                 ``test``) or "" when the source has none
``uid``              bytes       unique id of the sample within the dataset
``sequence``         bytes       capture sequence of the subject: samples that share
                                 pose, framing and light (frames of one CK+/MMI/
                                 Oulu-CASIA video, one synthetic render condition);
                                 "" when unknown. Added after the first release:
                                 :func:`parse_spec` reads older records as ""
``fold``             int64       k-fold of the sample's subject, written by
                                 FaceIngestion with ``split.kfold``; ``-1`` = no
                                 k-fold. Added after ``sequence``: older records
                                 read as -1
===================  ==========  =====================================================

A sample with no label of a kind carries a zero mask and zero values, never a
fake label. Class-name synonyms across datasets map to :data:`EMOTIONS` only
through :func:`canonical_emotion`.

TensorFlow is imported inside the functions that build or parse examples: the
contract itself (samples, labels, PNG coding) is used without it by the
readers, the spec checks and the CLI.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Dict, Iterable, Mapping, Optional, Sequence

import numpy as np
from PIL import Image

# FER2013's order first (its CSV indices map 1:1), then contempt (CK+).
EMOTIONS: tuple = (
    "anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral", "contempt")
NUM_EMOTIONS = len(EMOTIONS)
# The seven basic expressions shared by most datasets (FER2013, JAFFE, RAF-DB ...).
BASIC7: tuple = EMOTIONS[:7]

# Union of the AUs labelled by DISFA (1,2,4,5,6,9,12,15,17,20,25,26) and
# BP4D (1,2,4,6,7,10,12,14,15,17,23,24).
AUS: tuple = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 24, 25, 26)
NUM_AUS = len(AUS)
AU_NAMES: tuple = tuple(f"AU{a}" for a in AUS)

NUM_LANDMARKS = 68

_EMOTION_SYNONYMS: Dict[str, str] = {
    # canonical names map to themselves
    **{e: e for e in EMOTIONS},
    "angry": "anger", "an": "anger", "ang": "anger", "mad": "anger",
    "disgusted": "disgust", "di": "disgust", "dis": "disgust",
    "fearful": "fear", "fe": "fear", "afraid": "fear", "scared": "fear",
    "happy": "happiness", "ha": "happiness", "hap": "happiness", "joy": "happiness",
    "sad": "sadness", "sa": "sadness",
    "surprised": "surprise", "su": "surprise", "sur": "surprise", "surprize": "surprise",
    "neu": "neutral", "ne": "neutral", "calm": "neutral",
    "contemptuous": "contempt", "co": "contempt", "con": "contempt",
}


class ContractError(ValueError):
    """A value does not fit the contract."""


def canonical_emotion(name: str) -> int:
    """Index in :data:`EMOTIONS` of a class name from any dataset.

    Case, surrounding whitespace and a trailing intensity digit (JAFFE ``AN1``)
    are ignored. Raises :class:`ContractError` for an unknown name.
    """
    key = str(name).strip().lower().rstrip("0123456789")
    if key not in _EMOTION_SYNONYMS:
        raise ContractError(f"unknown emotion class {name!r}; known: "
                            f"{sorted(set(_EMOTION_SYNONYMS))}")
    return EMOTIONS.index(_EMOTION_SYNONYMS[key])


def label_set_mask(emotions: Iterable) -> np.ndarray:
    """``emotion_mask`` for a dataset whose label set is ``emotions`` (names or indices)."""
    mask = np.zeros(NUM_EMOTIONS, np.float32)
    for e in emotions:
        mask[e if isinstance(e, (int, np.integer)) else canonical_emotion(e)] = 1.0
    return mask


def au_index(au) -> int:
    """Index in :data:`AUS` of ``12``, ``"12"``, ``"AU12"`` or ``"au12_r"``-style names."""
    text = str(au).strip().upper()
    if text.startswith("AU"):
        text = text[2:]
    digits = ""
    for ch in text:
        if not ch.isdigit():
            break
        digits += ch
    if not digits or int(digits) not in AUS:
        raise ContractError(f"unknown action unit {au!r}; known: {AU_NAMES}")
    return AUS.index(int(digits))


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a grayscale ``uint8`` array (H, W) or (H, W, 1)."""
    arr = np.asarray(pixels)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ContractError(f"expected a grayscale image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """Grayscale ``uint8`` (H, W) array from encoded image bytes."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("L"))


@dataclasses.dataclass
class FaceSample:
    """One sample of the contract. Build with the keyword fields; missing labels
    keep their defaults (absent, zero mask)."""

    image: bytes
    dataset: str
    uid: str
    emotion: int = -1
    emotion_mask: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros(NUM_EMOTIONS, np.float32))
    aus: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(NUM_AUS, np.float32))
    aus_mask: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros(NUM_AUS, np.float32))
    landmarks: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros((NUM_LANDMARKS, 2), np.float32))
    landmarks_mask: float = 0.0
    subject: str = ""
    domain: str = ""
    split: str = ""
    sequence: str = ""
    fold: int = -1

    def __post_init__(self):
        self.emotion_mask = np.asarray(self.emotion_mask, np.float32).reshape(NUM_EMOTIONS)
        self.aus = np.asarray(self.aus, np.float32).reshape(NUM_AUS)
        self.aus_mask = np.asarray(self.aus_mask, np.float32).reshape(NUM_AUS)
        self.landmarks = np.asarray(self.landmarks, np.float32).reshape(NUM_LANDMARKS, 2)
        self.landmarks_mask = float(self.landmarks_mask)
        self.emotion = int(self.emotion)
        self.fold = int(self.fold)
        if not self.domain:
            self.domain = self.dataset
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ContractError` when a field breaks the contract."""
        if not isinstance(self.image, (bytes, bytearray)) or not self.image:
            raise ContractError(f"{self.uid}: image must be non-empty encoded bytes")
        if not self.dataset:
            raise ContractError(f"{self.uid}: dataset name is required")
        if not self.uid:
            raise ContractError("uid is required")
        if not -1 <= self.emotion < NUM_EMOTIONS:
            raise ContractError(f"{self.uid}: emotion {self.emotion} outside [-1, {NUM_EMOTIONS})")
        if self.emotion >= 0:
            if not self.emotion_mask.any():
                # A labelled sample with no label set: its own class is the label set.
                self.emotion_mask[self.emotion] = 1.0
            elif self.emotion_mask[self.emotion] != 1.0:
                raise ContractError(f"{self.uid}: emotion {EMOTIONS[self.emotion]} is not in "
                                    "its dataset's label set (emotion_mask)")
        elif self.emotion_mask.any():
            raise ContractError(f"{self.uid}: emotion is absent but emotion_mask is set")
        for name in ("emotion_mask", "aus_mask"):
            m = getattr(self, name)
            if not np.isin(m, (0.0, 1.0)).all():
                raise ContractError(f"{self.uid}: {name} must be 0/1")
        if ((self.aus < 0) | (self.aus > 1)).any() or not np.isfinite(self.aus).all():
            raise ContractError(f"{self.uid}: AU values must lie in [0, 1]")
        if (self.aus * (1 - self.aus_mask)).any():
            raise ContractError(f"{self.uid}: an AU without a mask must be 0")
        if self.landmarks_mask not in (0.0, 1.0):
            raise ContractError(f"{self.uid}: landmarks_mask must be 0 or 1")
        if self.landmarks_mask == 0.0 and self.landmarks.any():
            raise ContractError(f"{self.uid}: landmarks without landmarks_mask must be 0")
        if not np.isfinite(self.landmarks).all():
            raise ContractError(f"{self.uid}: landmarks must be finite")
        if self.fold < -1:
            raise ContractError(f"{self.uid}: fold {self.fold} is neither -1 nor a fold index")

    # --- tf.train.Example -------------------------------------------------
    def to_example(self):
        """The sample as a ``tf.train.Example``."""
        import tensorflow as tf

        def b(v):
            return tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[v if isinstance(v, bytes) else str(v).encode("utf-8")]))

        def f(v):
            return tf.train.Feature(float_list=tf.train.FloatList(
                value=np.asarray(v, np.float32).ravel().tolist()))

        def i(v):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))

        return tf.train.Example(features=tf.train.Features(feature={
            "image": b(bytes(self.image)),
            "emotion": i(self.emotion),
            "emotion_mask": f(self.emotion_mask),
            "aus": f(self.aus),
            "aus_mask": f(self.aus_mask),
            "landmarks": f(self.landmarks),
            "landmarks_mask": f([self.landmarks_mask]),
            "subject": b(self.subject),
            "dataset": b(self.dataset),
            "domain": b(self.domain),
            "split": b(self.split),
            "uid": b(self.uid),
            "sequence": b(self.sequence),
            "fold": i(self.fold),
        }))

    def serialize(self) -> bytes:
        return self.to_example().SerializeToString()

    @classmethod
    def from_example(cls, example) -> "FaceSample":
        """Inverse of :meth:`to_example` (accepts an Example or its serialized bytes)."""
        import tensorflow as tf

        if isinstance(example, (bytes, bytearray)):
            example = tf.train.Example.FromString(bytes(example))
        feat = example.features.feature

        def s(k):
            if k in OPTIONAL_BYTES and k not in feat:
                return ""
            return feat[k].bytes_list.value[0].decode("utf-8")

        def n(k):
            if k in OPTIONAL_INT64 and k not in feat:
                return OPTIONAL_INT64[k]
            return feat[k].int64_list.value[0]

        return cls(
            image=feat["image"].bytes_list.value[0],
            emotion=n("emotion"),
            emotion_mask=list(feat["emotion_mask"].float_list.value),
            aus=list(feat["aus"].float_list.value),
            aus_mask=list(feat["aus_mask"].float_list.value),
            landmarks=list(feat["landmarks"].float_list.value),
            landmarks_mask=feat["landmarks_mask"].float_list.value[0],
            subject=s("subject"), dataset=s("dataset"), domain=s("domain"),
            split=s("split"), uid=s("uid"), sequence=s("sequence"), fold=n("fold"))

    def pixels(self) -> np.ndarray:
        """Decoded grayscale image."""
        return decode_png(self.image)


# Features added after the first release; records written before lack them and
# read as "" (bytes) or the value given here (int64).
OPTIONAL_BYTES: tuple = ("sequence",)
OPTIONAL_INT64: Dict[str, int] = {"fold": -1}


def feature_spec() -> Dict[str, object]:
    """The contract's fixed-length features (what the schema requires of new
    records; ``pipeline/schema.py``). To read records, use :func:`parse_spec`."""
    import tensorflow as tf

    return {
        "image": tf.io.FixedLenFeature([], tf.string),
        "emotion": tf.io.FixedLenFeature([], tf.int64),
        "emotion_mask": tf.io.FixedLenFeature([NUM_EMOTIONS], tf.float32),
        "aus": tf.io.FixedLenFeature([NUM_AUS], tf.float32),
        "aus_mask": tf.io.FixedLenFeature([NUM_AUS], tf.float32),
        "landmarks": tf.io.FixedLenFeature([NUM_LANDMARKS * 2], tf.float32),
        "landmarks_mask": tf.io.FixedLenFeature([1], tf.float32),
        "subject": tf.io.FixedLenFeature([], tf.string),
        "dataset": tf.io.FixedLenFeature([], tf.string),
        "domain": tf.io.FixedLenFeature([], tf.string),
        "split": tf.io.FixedLenFeature([], tf.string),
        "uid": tf.io.FixedLenFeature([], tf.string),
        "sequence": tf.io.FixedLenFeature([], tf.string),
        "fold": tf.io.FixedLenFeature([], tf.int64),
    }


def parse_spec() -> Dict[str, object]:
    """``tf.io.parse_example`` spec of the contract: :func:`feature_spec` with
    defaults for the :data:`OPTIONAL_BYTES` ("") and :data:`OPTIONAL_INT64`
    features, so older TFRecords still parse."""
    import tensorflow as tf

    spec = feature_spec()
    for k in OPTIONAL_BYTES:
        spec[k] = tf.io.FixedLenFeature([], tf.string, default_value="")
    for k, default in OPTIONAL_INT64.items():
        spec[k] = tf.io.FixedLenFeature([], tf.int64, default_value=default)
    return spec


def write_tfrecord(samples: Iterable[FaceSample], path: str) -> int:
    """Write samples as a (GZIP-less) TFRecord file; returns the count."""
    import tensorflow as tf

    n = 0
    with tf.io.TFRecordWriter(str(path)) as w:
        for s in samples:
            w.write(s.serialize())
            n += 1
    return n


def read_tfrecord(paths, compression: Optional[str] = None) -> Iterable[FaceSample]:
    """Yield samples from TFRecord files (``compression`` 'GZIP' for TFX outputs)."""
    import tensorflow as tf

    if isinstance(paths, (str, bytes)) or not isinstance(paths, Sequence):
        paths = [paths]
    for raw in tf.data.TFRecordDataset([str(p) for p in paths],
                                       compression_type=compression or ""):
        yield FaceSample.from_example(raw.numpy())


def counts(samples: Iterable[FaceSample]) -> Mapping[str, Mapping[str, int]]:
    """Counts per emotion, dataset, domain, subject, split and fold (for ``data inspect``)."""
    out: Dict[str, Dict[str, int]] = {k: {} for k in
                                      ("emotion", "dataset", "domain", "subject", "split",
                                       "fold")}
    for s in samples:
        keys = {"emotion": EMOTIONS[s.emotion] if s.emotion >= 0 else "(none)",
                "dataset": s.dataset, "domain": s.domain,
                "subject": s.subject or "(unknown)", "split": s.split or "(none)",
                "fold": str(s.fold) if s.fold >= 0 else "(none)"}
        for k, v in keys.items():
            out[k][v] = out[k].get(v, 0) + 1
    return out
