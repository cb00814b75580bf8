"""Face detection + alignment (components.ingestion.align) on rendered fixtures."""

import math
import pickle

import numpy as np
import pytest

from components import contract, synthetic
from components.ingestion import align
from components.ingestion.align import Detector, Face, FaceAligner, NoFaceFound


def _blobs(size, points, sigma=2.5):
    """Image with a gaussian blob centred at each (x, y) continuous pixel point."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5  # pixel centres, continuous coordinates
    img = np.zeros((size, size))
    for x, y in points:
        img += 255 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))
    return np.clip(img, 0, 255).astype(np.uint8)


def _centroid(img, near, radius=6):
    """Intensity centroid (continuous coordinates) of ``img`` around ``near``."""
    yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]] + 0.5
    w = img.astype(np.float64) * ((xx - near[0]) ** 2 + (yy - near[1]) ** 2 <= radius ** 2)
    w = np.where(w > 0.2 * w.max(), w, 0)
    return np.array([(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()])


def _face(size=128, domain="lab", subject=0, emotion="neutral"):
    """A rendered synthetic face: pixels (size, size) and landmarks (68, 2) in [0, 1]."""
    sample = next(synthetic.generate(n_subjects=1, samples_per_emotion=1, domains=(domain,),
                                     emotions=(emotion,), size=size, subject_offset=subject))
    return sample.pixels(), sample.landmarks.copy()


def _eyes(landmarks, scale):
    pts = np.asarray(landmarks).reshape(-1, 2) * scale
    return pts[36:42].mean(0), pts[42:48].mean(0)


def _rotate(pixels, landmarks, degrees):
    """Rotate image and landmarks by ``degrees`` about the image centre
    (independently of the code under test)."""
    import cv2

    size = pixels.shape[0]
    m = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), degrees, 1.0)
    out = cv2.warpAffine(pixels, m, (size, size), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
    # same rotation in continuous coordinates: about (size/2, size/2)
    c = np.array([size / 2, size / 2])
    pts = (landmarks * size - c) @ m[:, :2].T + c
    return out, (pts / size).astype(np.float32)


# --- affine math --------------------------------------------------------------
def test_similarity_maps_both_eye_points_exactly():
    src = ((31.0, 72.5), (88.0, 41.0))
    dst = ((19.2, 24.32), (44.8, 24.32))
    m = align.similarity_from_eyes(src, dst)
    np.testing.assert_allclose(align.apply_affine(m, np.array(src)), np.array(dst), atol=1e-9)
    # a similarity: no shear, equal scale on both axes
    assert m[0, 0] == pytest.approx(m[1, 1]) and m[0, 1] == pytest.approx(-m[1, 0])


@pytest.mark.parametrize("eyes", [((40.0, 70.0), (95.0, 50.0)),     # scale < 0.5: pre-shrink
                                  ((50.5, 60.0), (88.0, 52.0))])    # scale > 0.5: direct
def test_eye_points_land_where_asked_and_landmarks_follow_the_pixels(eyes):
    size = 128
    extra = (64.0, 100.0)  # a third point: landmarks must follow it like the pixels do
    img = _blobs(size, list(eyes) + [extra])
    lm = np.zeros((68, 2), np.float32)
    lm[36:42] = np.array(eyes[0]) / size
    lm[42:48] = np.array(eyes[1]) / size
    lm[30] = np.array(extra) / size
    aligner = FaceAligner(detector="none", output_size=64, eye_distance=0.4, eye_y=0.38)
    result = aligner.align_pixels(img, landmarks=lm)
    assert result.method == "landmarks"
    assert result.pixels.shape == (64, 64) and result.pixels.dtype == np.uint8
    target_l, target_r = aligner.target_eyes
    assert target_l == pytest.approx((0.3 * 64, 0.38 * 64))
    assert target_r == pytest.approx((0.7 * 64, 0.38 * 64))
    # pixels: the blobs sit on the target eye positions
    np.testing.assert_allclose(_centroid(result.pixels, target_l), target_l, atol=0.5)
    np.testing.assert_allclose(_centroid(result.pixels, target_r), target_r, atol=0.5)
    # landmarks: same transform, [0, 1] of the output
    out_lm = result.landmarks * 64
    np.testing.assert_allclose(out_lm[36], target_l, atol=1e-3)
    np.testing.assert_allclose(out_lm[42], target_r, atol=1e-3)
    np.testing.assert_allclose(_centroid(result.pixels, out_lm[30]), out_lm[30], atol=0.5)


def test_landmarks_stay_in_unit_square_of_the_output():
    img, lm = _face(96)
    lm[8] = (0.5, 0.999)  # a chin point far below the crop
    out = FaceAligner("none", output_size=48).align_pixels(img, landmarks=lm)
    assert out.landmarks.min() >= 0.0 and out.landmarks.max() <= 1.0


def test_rotated_face_comes_back_upright():
    img, lm = _face(128)
    rot_img, rot_lm = _rotate(img, lm, 25.0)
    assert abs(align.eye_line_angle(_eyes(rot_lm, 128))) > 20  # really rotated
    aligner = FaceAligner("haar", output_size=64)
    sample = contract.FaceSample(image=contract.encode_png(rot_img), dataset="t", uid="t/1",
                                 landmarks=rot_lm, landmarks_mask=1.0)
    out, method = aligner.align(sample)
    assert method == "landmarks"
    left, right = _eyes(out.landmarks, 64)
    assert abs(align.eye_line_angle((left, right))) < 1.0
    np.testing.assert_allclose(left, aligner.target_eyes[0], atol=0.05)
    # the pixels turned with the landmarks: the upright original aligns to the same crop
    upright, _ = aligner.align(contract.FaceSample(
        image=contract.encode_png(img), dataset="t", uid="t/0", landmarks=lm,
        landmarks_mask=1.0))
    a = out.pixels().astype(np.float64)
    b = upright.pixels().astype(np.float64)
    inner = (slice(8, 56), slice(8, 56))
    assert np.corrcoef(a[inner].ravel(), b[inner].ravel())[0, 1] > 0.9
    assert np.abs(a[inner] - b[inner]).mean() < 12


def test_aligned_samples_are_only_resized():
    img, lm = _face(96)
    sample = contract.FaceSample(image=contract.encode_png(img), dataset="t", uid="t/a",
                                 landmarks=lm, landmarks_mask=1.0)
    out, method = FaceAligner("haar", output_size=48).align(sample, aligned=True)
    assert method == "resized"
    assert out.pixels().shape == (48, 48)
    np.testing.assert_allclose(out.landmarks, lm)  # [0, 1] coordinates survive a resize


# --- detection -------------------------------------------------------------------
def test_no_face_on_a_blank_image():
    aligner = FaceAligner("haar", output_size=64)
    with pytest.raises(NoFaceFound):
        aligner.align_pixels(np.full((160, 160), 128, np.uint8))


def test_haar_finds_nothing_in_blank_or_noise():
    det = align.HaarDetector()
    rng = np.random.default_rng(0)
    assert det.detect(np.zeros((120, 120), np.uint8)) == []
    assert det.detect(np.full((48, 48), 200, np.uint8)) == []
    assert det.detect(rng.integers(0, 256, (200, 200)).astype(np.uint8)) == []


def test_haar_detects_a_rendered_face_and_its_eyes():
    size = 128
    img, lm = _face(size, subject=1)
    det = align.HaarDetector()
    faces = det.detect(img)
    assert faces, "the frontal-face cascade fires on a rendered 128 px face"
    face = max(faces, key=lambda f: f.area)
    true_l, true_r = _eyes(lm, size)
    x, y, w, h = face.box
    for px, py in (true_l, true_r):
        assert x < px < x + w and y < py < y + h
    eyes = det.locate_eyes(img, face)
    assert eyes is not None
    np.testing.assert_allclose(eyes[0], true_l, atol=0.06 * size)
    np.testing.assert_allclose(eyes[1], true_r, atol=0.06 * size)
    # the whole path: eyes from the cascade put the true eyes near the targets
    aligner = FaceAligner("haar", output_size=64)
    result = aligner.align_pixels(img)
    assert result.method == "eyes"
    got = align.apply_affine(result.matrix, np.array([true_l, true_r]))
    np.testing.assert_allclose(got, np.array(aligner.target_eyes), atol=4.0)


class _FakeDetector(Detector):
    name = "fake"

    def __init__(self, faces):
        self.faces = faces

    def detect(self, gray):
        return list(self.faces)


def test_largest_face_and_keypoint_eyes_from_a_detector():
    img = _blobs(120, [(30.0, 40.0), (70.0, 44.0)])
    small = Face(box=(0, 0, 20, 20), eyes=((2.0, 5.0), (12.0, 5.0)))
    big = Face(box=(10, 10, 80, 80), eyes=((30.0, 40.0), (70.0, 44.0)))
    aligner = FaceAligner(_FakeDetector([small, big]), output_size=64)
    result = aligner.align_pixels(img)
    assert result.method == "keypoints" and result.face == big
    got = align.apply_affine(result.matrix, np.array(big.eyes))
    np.testing.assert_allclose(got, np.array(aligner.target_eyes), atol=1e-6)


def test_no_eyes_falls_back_to_the_face_box():
    img = _blobs(120, [(60.0, 60.0)])
    aligner = FaceAligner(_FakeDetector([Face(box=(20, 10, 80, 80))]), output_size=64)
    result = aligner.align_pixels(img)
    assert result.method == "no_eyes_fallback"
    # the box is mapped upright and framed like an aligned face: box corners go
    # to an axis-aligned square
    corners = align.apply_affine(result.matrix, np.array([[20, 10], [100, 10], [20, 90]]))
    assert corners[0][1] == pytest.approx(corners[1][1])
    assert corners[0][0] == pytest.approx(corners[2][0])
    lx, rx, ey = align.HAAR_BOX_EYES
    np.testing.assert_allclose(
        align.apply_affine(result.matrix, np.array([[20 + lx * 80, 10 + ey * 80]]))[0],
        aligner.target_eyes[0], atol=1e-6)


def test_no_detector_resizes_whole_images():
    img = _blobs(100, [(50.0, 50.0)])
    result = FaceAligner("none", output_size=32).align_pixels(img)
    assert result.method == "resized" and result.pixels.shape == (32, 32)


def test_aligner_pickles_after_use():
    aligner = FaceAligner("haar")
    aligner.detector.detect(np.zeros((50, 50), np.uint8))  # loads the cascades
    clone = pickle.loads(pickle.dumps(aligner))
    assert clone.detector.detect(np.zeros((50, 50), np.uint8)) == []


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown detector"):
        FaceAligner("mtcnn")
    with pytest.raises(ValueError):
        FaceAligner("none", output_size=4)
    with pytest.raises(ValueError, match="coincide"):
        align.similarity_from_eyes(((1, 1), (1, 1)), ((0, 0), (1, 0)))
    assert math.isclose(align.eye_line_angle(((0, 0), (1, 1))), 45.0)
