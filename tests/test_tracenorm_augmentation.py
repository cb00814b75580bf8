"""The trace-norm method's augmentation (models/tracenorm/augmentation.py), Hu et al.
(ECCV 2018) Sec. 4.1: "The landmark detection data is augmented by horizontal flip,
rotation, scale, shift, and adding Gaussian noise"; "The detected faces are flipped,
rotated (-30, 30), and disturbed via translation and scaling (0.8, 1.2)"; "Only
horizontal flip is used for emotion recognition".

The geometry is checked on hand-made images: a bright blob drawn at a landmark
must sit where the transformed landmark says after the image is transformed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from components import contract  # noqa: E402
from models.tracenorm.augmentation import (  # noqa: E402
    FLIP_PERMUTATION,
    augment_batch,
    transform_images,
    transform_landmarks,
)

S = 48


def blob_image(x, y, size=S, sigma=1.2):
    """A Gaussian blob centred at the continuous point (x, y) in [0, 1] (pixel i
    covers [i, i + 1) of ``size``)."""
    c = (np.arange(size) + 0.5) / size
    xx, yy = np.meshgrid(c, c)
    return np.exp(-((xx - x) ** 2 + (yy - y) ** 2) * size ** 2 / (2 * sigma ** 2))


def centroid(img, threshold=0.3):
    img = np.where(img > threshold, img, 0.0)
    c = (np.arange(img.shape[0]) + 0.5) / img.shape[0]
    xx, yy = np.meshgrid(c, c)
    return np.array([(img * xx).sum(), (img * yy).sum()]) / img.sum()


def one_face(points):
    """[1, 136] landmarks: ``points`` (index -> (x, y)) set, the rest at the centre."""
    lm = np.full((68, 2), 0.5, np.float32)
    for k, xy in points.items():
        lm[k] = xy
    return lm.reshape(1, -1)


def params(flip=0.0, angle=0.0, scale=1.0, shift=(0.0, 0.0)):
    return (tf.constant([flip]), tf.constant([angle], tf.float32), tf.constant([scale]),
            tf.constant([shift], tf.float32))


def test_ibug_flip_permutation():
    """Mirroring swaps left and right: jaw 1 <-> 17, outer eye corners 37 <-> 46,
    mouth corners 49 <-> 55 (1-based); nose ridge, tip and lip middles stay."""
    p = FLIP_PERMUTATION
    assert sorted(p) == list(range(68)) and np.all(p[p] == np.arange(68))    # involution
    for a, b in ((0, 16), (7, 9), (17, 26), (21, 22), (31, 35), (36, 45), (39, 42),
                 (37, 44), (41, 46), (48, 54), (49, 53), (55, 59), (60, 64), (65, 67)):
        assert p[a] == b and p[b] == a
    for k in (8, 27, 28, 29, 30, 33, 51, 57, 62, 66):
        assert p[k] == k


def test_hand_made_landmark_moves():
    """Flip: x -> 1 - x and the renumbering; 90 degrees about the centre (y down):
    (0.75, 0.5) -> (0.5, 0.75) and (0.5, 0.25) -> (0.75, 0.5); scale 2: (0.75, 0.5) -> (1.0, 0.5); shift adds."""
    lm = one_face({36: (0.2, 0.3), 45: (0.6, 0.35), 30: (0.75, 0.5), 33: (0.5, 0.25)})
    out = np.asarray(transform_landmarks(lm, *params(flip=1.0))).reshape(68, 2)
    np.testing.assert_allclose(out[45], (0.8, 0.3), atol=1e-6)   # old 36, mirrored
    np.testing.assert_allclose(out[36], (0.4, 0.35), atol=1e-6)  # old 45, mirrored
    np.testing.assert_allclose(out[30], (0.25, 0.5), atol=1e-6)
    rot = np.asarray(transform_landmarks(lm, *params(angle=math.pi / 2))).reshape(68, 2)
    np.testing.assert_allclose(rot[30], (0.5, 0.75), atol=1e-6)
    np.testing.assert_allclose(rot[33], (0.75, 0.5), atol=1e-6)
    big = np.asarray(transform_landmarks(lm, *params(scale=2.0))).reshape(68, 2)
    np.testing.assert_allclose(big[30], (1.0, 0.5), atol=1e-6)
    np.testing.assert_allclose(big[36], (-0.1, 0.1), atol=1e-6)
    moved = np.asarray(transform_landmarks(lm, *params(shift=(0.1, -0.2)))).reshape(68, 2)
    np.testing.assert_allclose(moved[30], (0.85, 0.3), atol=1e-6)


@pytest.mark.parametrize("flip,angle,scale,shift", [
    (1.0, 0.0, 1.0, (0.0, 0.0)),
    (0.0, math.pi / 2, 1.0, (0.0, 0.0)),
    (0.0, 0.0, 1.3, (0.05, -0.08)),
    (1.0, -0.4, 0.85, (-0.07, 0.06)),
])
def test_image_follows_the_landmarks(flip, angle, scale, shift):
    point = (0.62, 0.41)
    img = blob_image(*point)[None, :, :, None].astype(np.float32)
    p = params(flip, angle, scale, shift)
    out = np.asarray(transform_images(img, *p))[0, :, :, 0]
    lm = np.asarray(transform_landmarks(one_face({30: point}), *p)).reshape(68, 2)
    np.testing.assert_allclose(centroid(out), lm[30], atol=0.3 / S)
    # the identity leaves pixels exactly as they were
    same = np.asarray(transform_images(img, *params()))
    np.testing.assert_allclose(same, img, atol=1e-7)     # (bar flushed denormals)


def test_augment_batch_per_row_kind():
    """Landmark rows: image and targets move together, within the paper's ranges;
    emotion rows: at most mirrored, landmarks untouched (zero); unlabelled rows:
    unchanged."""
    cfg = {"emotion_flip": True, "landmark_flip": True, "landmark_rotation": 30.0,
           "landmark_scale": [0.8, 1.2], "landmark_shift": 0.1, "landmark_noise": 0.02}
    rng = np.random.default_rng(0)
    n_lmk, n_emo, n_none = 12, 12, 2
    n = n_lmk + n_emo + n_none
    points = rng.uniform(0.4, 0.6, size=(n_lmk, 2))
    images = np.stack([blob_image(*pt) for pt in points]
                      + [rng.uniform(size=(S, S)) for _ in range(n_emo + n_none)])
    landmarks = np.zeros((n, 136), np.float32)
    for i, pt in enumerate(points):
        landmarks[i] = one_face({30: pt})[0]
    batch = {"image": tf.constant(images[..., None], tf.float32),
             "landmarks": tf.constant(landmarks),
             "landmarks_mask": tf.constant([[1.0]] * n_lmk + [[0.0]] * (n_emo + n_none)),
             "emotion": tf.constant([-1] * n_lmk + [3] * n_emo + [-1] * n_none, tf.int64)}
    tf.random.set_seed(1)
    out = augment_batch(batch, cfg)
    img, lm = np.asarray(out["image"])[..., 0], np.asarray(out["landmarks"])
    for i in range(n_lmk):
        np.testing.assert_allclose(centroid(img[i]), lm[i].reshape(68, 2)[30], atol=0.5 / S)
        rest = np.delete(lm[i].reshape(68, 2), 30, axis=0)   # the centre point: not moved
        assert np.abs(rest - rest[0]).max() < 1e-6           # by rotation / scale / flip
    # the random parameters vary: the blobs did not all move the same way
    assert np.std(lm[:n_lmk, 60] - points[:, 0]) > 0.01
    flips = 0
    for i in range(n_lmk, n_lmk + n_emo):
        mirrored = np.allclose(img[i], images[i][:, ::-1], atol=1e-6)
        assert mirrored or np.allclose(img[i], images[i], atol=1e-6)
        flips += mirrored
    assert 0 < flips < n_emo
    np.testing.assert_array_equal(lm[n_lmk:], 0.0)
    np.testing.assert_allclose(img[n_lmk + n_emo:], images[n_lmk + n_emo:], atol=1e-6)
    off = augment_batch(batch, {**cfg, "emotion_flip": False})
    np.testing.assert_allclose(np.asarray(off["image"])[n_lmk:, :, :, 0], images[n_lmk:],
                               atol=1e-6)


def test_flip_of_a_frontal_synthetic_face_keeps_its_shape():
    """The permutation agrees with the iBUG geometry of the synthetic faces: a
    frontal ``lab`` face is about mirror-symmetric, so mirroring its landmarks
    and renumbering them gives about the same points."""
    from components import synthetic

    faces = [s for s in synthetic.generate(n_subjects=3, samples_per_emotion=1,
                                           domains=("lab",), emotions=("neutral",), size=48,
                                           seed=0)]
    lm = np.stack([f.landmarks.reshape(-1) for f in faces])
    flipped = np.asarray(transform_landmarks(lm, *(tf.constant(v, tf.float32) for v in (
        [1.0] * len(faces), [0.0] * len(faces), [1.0] * len(faces),
        [[0.0, 0.0]] * len(faces)))))
    err = np.abs(flipped - lm).reshape(len(faces), 68, 2).max(-1).max(-1)
    unpermuted = np.abs(1.0 - lm.reshape(-1, 68, 2)[:, :, 0] - lm.reshape(-1, 68, 2)[:, :, 0])
    assert err.max() < 0.05 and unpermuted.max() > 0.2, (err, unpermuted.max())
