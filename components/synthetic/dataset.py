"""The synthetic dataset: every subject in every domain x emotion x sample as
contract samples, a TFRecord + manifest writer and a contact sheet."""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Iterator, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from components import contract
from components.synthetic.expressions import (AU_JITTER, EMOTION_PROTOTYPES, MIN_INTENSITY,
                                              NOISE_AU_MAX, NOISE_AU_PROBABILITY,
                                              UNILATERAL_AUS, sample_aus)
from components.synthetic.identities import DATASET_NAME, subject_params
from components.synthetic.render import DEFAULT_SIZE, DOMAINS, measure_speed, render_face

VERSION = 2    # 2: samples carry the contract's `sequence` (render group)


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
    # Late: importing the package stays TF-free; TF loads here, before the timer and
    # the progress bar start, rather than inside contract.write_tfrecord.
    import tensorflow  # noqa: F401

    bar = tqdm(total=total, desc="synthetic faces", unit="face") if progress else None

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
    parser = argparse.ArgumentParser(
        prog="python -m components.synthetic",
        description="Procedural synthetic faces: write a dataset, a contact sheet, or the "
                    "rendering speed.")
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
