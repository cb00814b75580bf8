"""Image and label preprocessing shared by training, TF Transform and serving.

Everything here is plain TensorFlow ops so the same code runs inside a
``tf.data`` pipeline, inside TFX Transform's ``preprocessing_fn`` (and so is
baked into the transform graph used at serving), and inside serving
signatures.

Model inputs (the dict every method's ``train_step`` receives):

=================  ================  ===========================================
key                shape / dtype     meaning
=================  ================  ===========================================
``image``          [B, S, S, 1] f32  grayscale face in [0, 1]
``emotion``        [B] int64         index into ``contract.EMOTIONS``, -1 absent
``emotion_mask``   [B, 8] f32        label set of the sample's dataset
``aus``            [B, 17] f32       AU values, ``aus_mask`` says which are known
``aus_mask``       [B, 17] f32
``landmarks``      [B, 136] f32      68 x (x, y) in [0, 1]
``landmarks_mask`` [B, 1] f32
``dataset_id``     [B] int64         index into the run's dataset list, -1 unknown
``subject_id``     [B] int64         hash of the subject string, -1 unknown
``sequence_id``    [B] int64         hash of (subject, sequence), -1 when the
                                     sequence is unknown
``fold``           [B] int64         the example's k-fold (FaceIngestion), -1 none
=================  ================  ===========================================
"""

from __future__ import annotations

from typing import Dict, Sequence

import tensorflow as tf

LABEL_KEYS = ("emotion", "emotion_mask", "aus", "aus_mask", "landmarks", "landmarks_mask")


def decode_image(image_bytes: tf.Tensor, size: int) -> tf.Tensor:
    """Decode encoded images (PNG/JPEG/BMP/GIF, gray or colour, any size) to
    float32 ``[B, size, size, 1]`` in [0, 1]. ``image_bytes`` is a ``[B]`` string
    tensor."""

    def one(data):
        img = tf.io.decode_image(data, channels=0, expand_animations=False)
        img = tf.cond(tf.shape(img)[-1] >= 3,
                      lambda: tf.image.rgb_to_grayscale(img[..., :3]),
                      lambda: img[..., :1])
        img = tf.image.convert_image_dtype(img, tf.float32)
        img = tf.image.resize(img, [size, size], method="bilinear", antialias=True)
        return tf.clip_by_value(img, 0.0, 1.0)

    return tf.map_fn(one, tf.reshape(image_bytes, [-1]),
                     fn_output_signature=tf.TensorSpec([size, size, 1], tf.float32))


def lookup_index(values: tf.Tensor, vocabulary: Sequence[str]) -> tf.Tensor:
    """Index of each string of ``values`` ([B]) in ``vocabulary``; -1 when absent.
    Plain comparison ops (no lookup table), so it works in any graph."""
    if not vocabulary:
        return -tf.ones_like(values, dtype=tf.int64)
    vocab = tf.constant(list(vocabulary))
    hits = tf.equal(tf.reshape(values, [-1, 1]), tf.reshape(vocab, [1, -1]))
    idx = tf.argmax(tf.cast(hits, tf.int64), axis=1)
    return tf.where(tf.reduce_any(hits, axis=1), idx, -tf.ones_like(idx))


def _string_id(text: tf.Tensor, unknown: tf.Tensor) -> tf.Tensor:
    """Stable int64 hash of ``text``; -1 where ``unknown``."""
    h = tf.strings.to_hash_bucket_fast(text, 2 ** 62)
    return tf.where(unknown, -tf.ones_like(h), h)


def subject_id(subject: tf.Tensor) -> tf.Tensor:
    """Stable int64 id of subject strings; -1 for the empty (unknown) subject."""
    return _string_id(subject, tf.equal(subject, ""))


def sequence_id(subject: tf.Tensor, sequence: tf.Tensor) -> tf.Tensor:
    """Stable int64 id of (subject, sequence) pairs (sequence names such as
    ``001`` repeat across subjects); -1 where the sequence is unknown ("")."""
    return _string_id(tf.strings.join([subject, sequence], "\x1f"), tf.equal(sequence, ""))


def to_model_inputs(parsed: Dict[str, tf.Tensor], image_size: int,
                    datasets: Sequence[str] = ()) -> Dict[str, tf.Tensor]:
    """Map a batch parsed with ``contract.parse_spec()`` to model inputs."""
    out = {"image": decode_image(parsed["image"], image_size)}
    for k in LABEL_KEYS:
        out[k] = parsed[k]
    out["emotion"] = tf.cast(tf.reshape(parsed["emotion"], [-1]), tf.int64)
    out["dataset_id"] = lookup_index(tf.reshape(parsed["dataset"], [-1]), datasets)
    subject = tf.reshape(parsed["subject"], [-1])
    out["subject_id"] = subject_id(subject)
    out["sequence_id"] = sequence_id(subject, tf.reshape(parsed["sequence"], [-1]))
    if "fold" in parsed:
        out["fold"] = tf.cast(tf.reshape(parsed["fold"], [-1]), tf.int64)
    return out
