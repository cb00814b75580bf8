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

Modules: :mod:`.identities` (subjects), :mod:`.expressions` (AU prototypes and
sampling), :mod:`.geometry` (the face's curves and landmarks), :mod:`.drawing`
(the rasteriser and the painter), :mod:`.render` (domains, pose, light, noise:
:func:`render_face`), :mod:`.dataset` (:func:`generate`, :func:`write_dataset`).

Usage::

    from components import synthetic
    for sample in synthetic.generate(n_subjects=4, samples_per_emotion=1):
        ...
    synthetic.write_dataset("out/synth", n_subjects=20)

or ``python -m components.synthetic --out out/synth --sheet /tmp/sheet.png``.
"""

from components.synthetic.dataset import (VERSION, contact_sheet, generate, sample_rngs,
                                          write_dataset)
from components.synthetic.drawing import _Canvas  # _Canvas, _affine, _supersample: for tests
from components.synthetic.expressions import (AU_JITTER, EMOTION_PROTOTYPES, MIN_INTENSITY,
                                              NOISE_AU_MAX, NOISE_AU_PROBABILITY,
                                              UNILATERAL_AUS, prototype_aus, sample_aus)
from components.synthetic.identities import (DATASET_NAME, SubjectParams, subject_id,
                                             subject_params)
from components.synthetic.render import (DEFAULT_SIZE, DOMAINS, _affine, _supersample,
                                         measure_speed, render_face)

__all__ = ["AU_JITTER", "DATASET_NAME", "DEFAULT_SIZE", "DOMAINS", "EMOTION_PROTOTYPES",
           "MIN_INTENSITY", "NOISE_AU_MAX", "NOISE_AU_PROBABILITY", "SubjectParams",
           "UNILATERAL_AUS", "VERSION", "contact_sheet", "generate", "measure_speed",
           "prototype_aus", "render_face", "sample_aus", "sample_rngs", "subject_id",
           "subject_params", "write_dataset"]
