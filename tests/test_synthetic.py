"""Tests of the procedural synthetic-face generator (components/synthetic/)."""

import json
import os

import numpy as np
import pytest

from components import contract
from components import synthetic as S

SIZE = 48


def _aus(**intensities) -> np.ndarray:
    """AU vector from keywords like ``au12=1.0``."""
    vec = np.zeros(contract.NUM_AUS, np.float32)
    for name, value in intensities.items():
        vec[contract.au_index(name)] = value
    return vec


def _landmarks(aus, subject=3, domain="lab", seed=7, **kw):
    params = S.subject_params(0, subject)
    return S.render_face(params, aus, SIZE, domain, np.random.default_rng(seed), **kw)[1]


def _pixel(pixels, point, radius=1):
    """Mean intensity of a (2r+1)^2 window at normalized (x, y)."""
    size = pixels.shape[0]
    x, y = (np.asarray(point) * size).astype(int)
    window = pixels[max(0, y - radius):y + radius + 1, max(0, x - radius):x + radius + 1]
    return float(window.mean())


def _eye_opening(lm):
    return (np.mean(lm[[40, 41, 46, 47], 1]) - np.mean(lm[[37, 38, 43, 44], 1]))


# --------------------------------------------------------------------------- determinism
def _content(sample):
    """A sample's fields as bytes (Example maps serialize in no fixed order)."""
    return (sample.image, sample.uid, sample.subject, sample.dataset, sample.domain,
            sample.emotion, sample.aus.tobytes(), sample.landmarks.tobytes())


def test_generate_is_deterministic():
    def generated(seed):
        return [_content(s) for s in S.generate(n_subjects=2, samples_per_emotion=1,
                                                emotions=("happiness", "fear"), size=SIZE,
                                                seed=seed)]

    first, again, other = generated(0), generated(0), generated(1)
    assert first == again
    assert all(a[0] != b[0] and a[6] != b[6] for a, b in zip(first, other))


def test_subsets_reproduce_the_same_samples():
    full = {s.uid: s.image for s in S.generate(n_subjects=3, samples_per_emotion=1, size=SIZE)}
    part = list(S.generate(n_subjects=1, samples_per_emotion=1, domains=("wild",),
                           emotions=("sadness",), size=SIZE, subject_offset=2))
    assert len(part) == 1 and part[0].uid == "synth_s0002_wild_sadness_00"
    assert part[0].image == full[part[0].uid]


def test_render_face_seeding():
    params = S.subject_params(0, 0)
    aus = S.prototype_aus("surprise")
    a = S.render_face(params, aus, SIZE, "wild", 5)
    b = S.render_face(params, aus, SIZE, "wild", np.random.default_rng(5))
    c = S.render_face(params, aus, SIZE, "wild", 6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert a[0].dtype == np.uint8 and a[0].shape == (SIZE, SIZE)
    assert a[1].dtype == np.float32 and a[1].shape == (68, 2)


@pytest.mark.parametrize("size", [48, 64, 96])
def test_sizes(size):
    pixels, lm = S.render_face(S.subject_params(0, 1), S.prototype_aus("anger"), size)
    assert pixels.shape == (size, size)
    assert (lm > 0).all() and (lm < 1).all()


# --------------------------------------------------------------------------- identities
def test_subject_params_persist_and_differ():
    assert S.subject_params(0, 7) == S.subject_params(0, 7)
    assert S.subject_params(0, 7).subject == "synth_s0007"
    assert S.subject_params(0, 7) != S.subject_params(0, 8)
    assert S.subject_params(0, 7) != S.subject_params(1, 7)
    widths = [S.subject_params(0, i).face_half_width for i in range(20)]
    tones = [S.subject_params(0, i).skin_tone for i in range(20)]
    assert np.std(widths) > 0.01 and np.std(tones) > 15


def test_identity_is_shared_across_expressions_and_domains():
    samples = list(S.generate(n_subjects=2, samples_per_emotion=2, size=SIZE))
    by_subject = {}
    for s in samples:
        by_subject.setdefault(s.subject, set()).add((s.domain, s.emotion))
    assert set(by_subject) == {"synth_s0000", "synth_s0001"}
    for combos in by_subject.values():  # paired renders: every subject in every emotion
        assert combos == {(d, e) for d in S.DOMAINS for e in range(contract.NUM_EMOTIONS)}
    # the same subject's neutral lab faces look alike, other subjects less so
    neutral = {(s.subject, s.uid[-2:]): s.pixels().astype(float) for s in samples
               if s.domain == "lab" and s.emotion == contract.EMOTIONS.index("neutral")}
    same = np.abs(neutral["synth_s0000", "00"] - neutral["synth_s0000", "01"]).mean()
    other = np.abs(neutral["synth_s0000", "00"] - neutral["synth_s0001", "00"]).mean()
    assert same < other


def test_paired_renders_share_pose_and_light():
    samples = {(s.domain, contract.EMOTIONS[s.emotion]): s for s in
               S.generate(n_subjects=1, samples_per_emotion=1, size=SIZE, subject_offset=5)}
    for domain in S.DOMAINS:
        neutral, happy = samples[domain, "neutral"], samples[domain, "happiness"]
        corners = [36, 39, 42, 45]  # eye corners do not move with any AU
        np.testing.assert_allclose(neutral.landmarks[corners], happy.landmarks[corners], atol=1e-6)
        diff = np.abs(neutral.pixels().astype(float) - happy.pixels().astype(float))
        rows = slice(int(happy.landmarks[:, 1].min() * SIZE), int(happy.landmarks[8, 1] * SIZE) + 2)
        assert diff[rows].sum() > 0.9 * diff.sum()  # the change lies on the face


# --------------------------------------------------------------------------- AUs -> geometry
def test_au12_pulls_lip_corners_up_and_out():
    neutral, smile = _landmarks(_aus()), _landmarks(_aus(au12=1.0))
    assert smile[48, 1] < neutral[48, 1] - 0.01 and smile[54, 1] < neutral[54, 1] - 0.01
    assert smile[48, 0] < neutral[48, 0] and smile[54, 0] > neutral[54, 0]


def test_au15_depresses_and_au20_stretches_lip_corners():
    neutral = _landmarks(_aus())
    down, wide = _landmarks(_aus(au15=1.0)), _landmarks(_aus(au20=1.0))
    assert down[48, 1] > neutral[48, 1] + 0.01 and down[54, 1] > neutral[54, 1] + 0.01
    width = lambda lm: lm[54, 0] - lm[48, 0]  # noqa: E731
    assert width(wide) > width(neutral) * 1.1


def test_au25_au26_open_the_mouth():
    inner = lambda lm: lm[66, 1] - lm[62, 1]  # noqa: E731
    neutral, parted = _landmarks(_aus()), _landmarks(_aus(au25=1.0))
    dropped = _landmarks(_aus(au25=1.0, au26=1.0))
    assert inner(neutral) == pytest.approx(0.0, abs=1e-6)
    assert inner(parted) > 0.01
    assert inner(dropped) > inner(parted) + 0.03
    assert dropped[8, 1] > neutral[8, 1] + 0.02  # the chin drops with the jaw


def test_open_mouth_is_dark_between_inner_lips():
    params = S.subject_params(0, 3)
    closed, lm0 = S.render_face(params, _aus(), SIZE, "lab", 1)
    opened, lm1 = S.render_face(params, _aus(au25=1.0, au26=1.0), SIZE, "lab", 1)
    middle = (lm1[62] + lm1[66]) / 2
    assert _pixel(opened, middle, 0) < min(60.0, _pixel(closed, middle, 0) - 20)


def test_au1_au2_raise_and_au4_lowers_brows():
    neutral = _landmarks(_aus())
    raised, lowered = _landmarks(_aus(au1=1.0, au2=1.0)), _landmarks(_aus(au4=1.0))
    assert (raised[17:27, 1] < neutral[17:27, 1] - 0.005).all()
    assert (lowered[17:27, 1] > neutral[17:27, 1] + 0.005).all()
    gap = lambda lm: lm[22, 0] - lm[21, 0]  # noqa: E731
    assert gap(lowered) < gap(neutral) - 0.01  # brows drawn together
    inner_only = _landmarks(_aus(au1=1.0))  # AU1 lifts the inner ends more than the outer
    lift = neutral[17:27, 1] - inner_only[17:27, 1]
    assert lift[[4, 5]].mean() > 2 * lift[[0, 9]].mean()


def test_lid_aus_change_the_eye_opening():
    neutral = _eye_opening(_landmarks(_aus()))
    assert _eye_opening(_landmarks(_aus(au5=1.0))) > 1.3 * neutral
    assert _eye_opening(_landmarks(_aus(au6=1.0))) < 0.8 * neutral
    assert _eye_opening(_landmarks(_aus(au7=1.0))) < 0.8 * neutral


def test_nose_and_chin_aus():
    neutral = _landmarks(_aus())
    assert (_landmarks(_aus(au9=1.0))[31:36, 1] < neutral[31:36, 1] - 0.005).all()
    assert _landmarks(_aus(au10=1.0))[51, 1] < neutral[51, 1] - 0.005
    assert _landmarks(_aus(au17=1.0))[57, 1] < neutral[57, 1] - 0.003


def test_unilateral_contempt_moves_only_the_subjects_right_corner():
    neutral = _landmarks(_aus())
    contempt = _landmarks(S.prototype_aus("contempt"), right_only=S.UNILATERAL_AUS["contempt"])
    assert contempt[48, 1] < neutral[48, 1] - 0.004  # image left = subject's right
    assert contempt[54, 1] == pytest.approx(neutral[54, 1], abs=1e-6)
    px_n = S.render_face(S.subject_params(0, 3), _aus(), SIZE, "lab", 7)[0].astype(float)
    px_c = S.render_face(S.subject_params(0, 3), S.prototype_aus("contempt"), SIZE, "lab", 7,
                         right_only=(12, 14))[0].astype(float)
    diff = np.abs(px_c - px_n)
    assert diff[:, :SIZE // 2].sum() > 3 * diff[:, SIZE // 2:].sum()


def test_every_au_changes_the_pixels():
    params = S.subject_params(0, 2)
    base = S.render_face(params, _aus(), SIZE, "lab", 3)[0].astype(float)
    for au in contract.AUS:
        moved = S.render_face(params, _aus(**{f"au{au}": 1.0}), SIZE, "lab", 3)[0].astype(float)
        assert np.abs(moved - base).sum() > 100, f"AU{au} leaves no trace"


# --------------------------------------------------------------------------- landmarks <-> pixels
def test_landmarks_agree_with_pixels():
    darker = 0
    for subject in range(6):
        params = S.subject_params(0, subject)
        pixels, lm = S.render_face(params, _aus(), SIZE, "lab", subject)
        assert (lm > 0).all() and (lm < 1).all()
        for eye in (lm[36:42], lm[42:48]):
            centre = eye.mean(axis=0)
            cheek = np.array([centre[0], lm[29, 1]])
            darker += _pixel(pixels, centre) < _pixel(pixels, cheek) - 15
        assert lm[27:31, 1].tolist() == sorted(lm[27:31, 1].tolist())  # bridge runs down
        assert lm[0, 0] < lm[8, 0] < lm[16, 0] and lm[8, 1] > lm[57, 1] > lm[33, 1] > lm[27, 1]
        assert lm[36, 0] < lm[39, 0] < lm[42, 0] < lm[45, 0]
        assert lm[48, 0] < lm[51, 0] < lm[54, 0] and lm[51, 1] < lm[57, 1]
    assert darker == 12


@pytest.mark.parametrize("size", [48, 64, 96])
def test_rasteriser_is_subpixel_aligned(size):
    # a disc drawn through a rotated affine has its centroid where the affine puts its centre
    matrix = S._affine(1.07, 0.3, (0.03, -0.02))
    canvas = S._Canvas(size, S._supersample(size), 0)
    canvas.set_affine(matrix)
    canvas.ellipse(0.41, 0.57, 0.05, 0.05, 255, 48)
    canvas.flush()
    image = np.asarray(canvas.image.reduce(canvas.supersample), float)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    centroid = np.array([(image * xx).sum(), (image * yy).sum()]) / image.sum()
    expected = (matrix[:, :2] @ [0.41, 0.57] + matrix[:, 2]) * size
    np.testing.assert_allclose(centroid, expected, atol=0.1)


def test_prototype_labels_are_the_rendered_intensities():
    rng = np.random.default_rng(0)
    for emotion, proto in S.EMOTION_PROTOTYPES.items():
        for _ in range(20):
            aus = S.sample_aus(emotion, rng)
            assert aus.dtype == np.float32 and ((aus >= 0) & (aus <= 1)).all()
            for i, au in enumerate(contract.AUS):
                if au in proto:
                    assert S.MIN_INTENSITY * proto[au] - 0.25 <= aus[i] <= 1.0
                    assert aus[i] >= 0.05
                else:
                    assert aus[i] <= S.NOISE_AU_MAX + 1e-6
    # the label vector alone reproduces the drawn face
    for sample in S.generate(n_subjects=1, samples_per_emotion=1, emotions=("contempt", "fear"),
                             size=SIZE, subject_offset=4):
        name = contract.EMOTIONS[sample.emotion]
        _, rng = S.sample_rngs(0, 4, sample.domain, sample.emotion, 0)
        pixels, lm = S.render_face(S.subject_params(0, 4), sample.aus, SIZE, sample.domain, rng,
                                   right_only=S.UNILATERAL_AUS.get(name, ()))
        np.testing.assert_array_equal(pixels, sample.pixels())
        np.testing.assert_allclose(lm, sample.landmarks, atol=1e-6)
        active = {contract.AUS[i] for i in np.flatnonzero(sample.aus >= 0.05)}
        assert set(S.EMOTION_PROTOTYPES[name]) <= active


# --------------------------------------------------------------------------- domains
def test_wild_differs_from_lab_but_landmarks_follow_the_face():
    stats = {}
    for domain in S.DOMAINS:
        rolls, means, centres, darker = [], [], [], 0
        for i in range(24):
            params = S.subject_params(0, i % 6)
            pixels, lm = S.render_face(params, S.prototype_aus(i % 8), SIZE, domain, 100 + i)
            d = lm[45] - lm[36]
            rolls.append(np.degrees(np.arctan2(d[1], d[0])))
            means.append(pixels.mean())
            centres.append(lm.mean(axis=0))
            eyes = np.mean([_pixel(pixels, lm[36:42].mean(0)), _pixel(pixels, lm[42:48].mean(0))])
            cheek = _pixel(pixels, (lm[36:42].mean(0) + lm[48]) / 2)
            darker += eyes < cheek
            assert (lm >= 0).all() and (lm <= 1).all()
        stats[domain] = dict(roll=np.std(rolls), mean=np.std(means),
                             centre=np.std(centres, axis=0).mean(), darker=darker / 24)
    lab, wild = stats["lab"], stats["wild"]
    assert lab["roll"] < 1.5 < 5 < wild["roll"]
    assert wild["mean"] > 1.5 * lab["mean"]
    assert wild["centre"] > 2 * lab["centre"]
    assert lab["darker"] == 1.0 and wild["darker"] >= 0.7


def test_wild_rotation_is_applied_to_pixels_and_landmarks_alike():
    # mirror-free check: the dark eyes sit where the rotated landmarks say
    params = S.subject_params(0, 0)
    hits = 0
    for seed in range(10):
        pixels, lm = S.render_face(params, _aus(), 96, "wild", seed)
        eye = lm[36:42].mean(axis=0)
        # the eye centre is darker than points one eye-width above and below it (skin/brow)
        hits += _pixel(pixels, eye, 1) < _pixel(pixels, lm[29], 1)
    assert hits >= 7


def test_dataset_and_domain_fields():
    samples = list(S.generate(n_subjects=1, samples_per_emotion=1, size=SIZE))
    assert {s.dataset for s in samples} == {"synth_lab", "synth_wild"}
    assert {s.domain for s in samples} == {"lab", "wild"}
    for s in samples:
        assert s.dataset == f"synth_{s.domain}" and s.split == ""
        np.testing.assert_array_equal(s.emotion_mask, contract.label_set_mask(contract.EMOTIONS))
        np.testing.assert_array_equal(s.aus_mask, np.ones(contract.NUM_AUS))
        assert s.landmarks_mask == 1.0
        assert s.uid == f"synth_s0000_{s.domain}_{contract.EMOTIONS[s.emotion]}_00"
        assert s.sequence == f"{s.domain}_00"   # render group: shared pose, light, occlusion


# --------------------------------------------------------------------------- contract / files
def test_contract_round_trip():
    sample = next(iter(S.generate(n_subjects=1, samples_per_emotion=1, domains=("wild",),
                                  size=SIZE)))
    back = contract.FaceSample.from_example(sample.serialize())
    assert back.image == sample.image and back.uid == sample.uid
    assert (back.emotion, back.subject, back.dataset, back.domain, back.split, back.sequence) == \
        (sample.emotion, sample.subject, sample.dataset, sample.domain, sample.split,
         sample.sequence)
    np.testing.assert_allclose(back.aus, sample.aus)
    np.testing.assert_allclose(back.landmarks, sample.landmarks)
    np.testing.assert_array_equal(back.pixels(), sample.pixels())


def test_records_without_sequence_still_read():
    """``sequence`` came after the first release: older records read as ""."""
    import tensorflow as tf

    from models import preprocessing

    sample = next(iter(S.generate(n_subjects=1, samples_per_emotion=1, domains=("lab",),
                                  size=SIZE)))
    old = sample.to_example()
    del old.features.feature["sequence"]
    assert contract.FaceSample.from_example(old.SerializeToString()).sequence == ""
    parsed = tf.io.parse_example(tf.constant([old.SerializeToString(), sample.serialize()]),
                                 contract.parse_spec())
    assert parsed["sequence"].numpy().tolist() == [b"", b"lab_00"]
    ids = preprocessing.to_model_inputs(parsed, 32)["sequence_id"].numpy()
    assert ids[0] == -1 and ids[1] >= 0


def test_write_dataset(tmp_path):
    out = str(tmp_path / "synth")
    manifest = S.write_dataset(out, n_subjects=2, samples_per_emotion=1, size=SIZE, seed=3,
                               progress=False)
    n = 2 * 1 * 2 * contract.NUM_EMOTIONS
    assert manifest["num_samples"] == n
    assert manifest["counts"]["domain"] == {"lab": n // 2, "wild": n // 2}
    assert manifest["counts"]["dataset"] == {"synth_lab": n // 2, "synth_wild": n // 2}
    assert set(manifest["counts"]["emotion"].values()) == {4}
    with open(os.path.join(out, "manifest.json")) as f:
        assert json.load(f) == manifest
    samples = list(contract.read_tfrecord(os.path.join(out, "synth.tfrecord")))
    assert len(samples) == n and len({s.uid for s in samples}) == n
    assert {s.subject for s in samples} == {"synth_s0000", "synth_s0001"}


def test_contact_sheet_shape():
    sheet = S.contact_sheet(n_subjects=2, size=SIZE)
    assert sheet.shape == (8 * (SIZE + 1), 4 * (SIZE + 1)) and sheet.dtype == np.uint8
