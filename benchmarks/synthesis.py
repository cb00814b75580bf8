"""Scoring FERSNet's synthesis with a frozen expression oracle (synthetic
faces): the set-up shared by ``benchmarks/bench_synthesis.py`` and the slow
synthesis tests of ``tests/test_fersnet.py``.

* :func:`capture_sequences` / :func:`aligned_synthesis_jobs` -- every ordered
  pair of different expressions within a capture sequence (same face, pose
  and light, so the real target image is pixel-aligned with the source);
* :func:`expression_oracle` -- the baseline CNN trained on real faces, frozen;
* :func:`synthesis_scores` / :func:`judge_synthesis` -- how the oracle reads
  the fakes ``G(x, t)`` (hit rates against chance, p(target), L1 distances).
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

from components import contract
from models import training
from models.fersnet import FERSNetModel, synthesize
from models.fersnet.fes import decode_faces


def capture_sequences(samples: Sequence[contract.FaceSample]) -> List[Dict[int, int]]:
    """``[{expression: sample index}]``, one dict per capture sequence
    (subject + ``sequence``; samples without a label are left out)."""
    groups: Dict[Tuple[str, str], Dict[int, int]] = {}
    for i, s in enumerate(samples):
        if s.emotion >= 0:
            groups.setdefault((s.subject, s.sequence), {})[int(s.emotion)] = i
    return list(groups.values())


def aligned_synthesis_jobs(samples: Sequence[contract.FaceSample]) -> np.ndarray:
    """``[N, 3]`` int64 ``(source index, target expression, real target index)``:
    every ordered pair of different expressions within each capture sequence
    (same face, pose and light: the real target is pixel-aligned)."""
    jobs = [(g[a], b, g[b]) for g in capture_sequences(samples) for a in g for b in g
            if a != b]
    return np.asarray(jobs, np.int64).reshape(-1, 3)


def synthesis_scores(oracle, x, labels, fakes, jobs,
                     n_expressions: int = len(contract.BASIC7)) -> Dict[str, float]:
    """How a frozen expression ``oracle`` (a model returning ``probabilities``)
    reads the fakes ``G(x[src], t)`` of :func:`aligned_synthesis_jobs` ``jobs``.

    ``hit``: argmax is the target (chance ``1 / n_expressions``);
    ``hit_excluding_source``: the same with the source's own expression left
    out of the argmax (chance ``1 / (n_expressions - 1)``: a blur that only
    flattens the oracle's output stays at chance); ``p_target_fake`` against
    ``p_target_real_source`` (the target's probability on the real source);
    ``p_source_*`` likewise; ``l1_fake_target`` against ``l1_source_target``
    (below: G drew some of the real change) and ``l1_fake_source`` (how much
    G changed).  ``labels``: the real faces' expressions.
    """
    src, tgt, real = np.asarray(jobs).T
    x, fakes, labels = np.asarray(x), np.asarray(fakes), np.asarray(labels)
    p_fake = np.asarray(oracle(fakes)["probabilities"])
    p_real = np.asarray(oracle(x)["probabilities"])
    rows = np.arange(len(tgt))
    own = labels[src]
    without_source = p_fake.copy()
    without_source[rows, own] = -1.0
    return {
        "pairs": int(len(tgt)),
        "hit": float((p_fake.argmax(-1) == tgt).mean()),
        "chance": 1.0 / n_expressions,
        "hit_excluding_source": float((without_source.argmax(-1) == tgt).mean()),
        "chance_excluding_source": 1.0 / (n_expressions - 1),
        "p_target_fake": float(p_fake[rows, tgt].mean()),
        "p_target_real_source": float(p_real[src, tgt].mean()),
        "p_source_fake": float(p_fake[rows, own].mean()),
        "p_source_real_source": float(p_real[src, own].mean()),
        "oracle_acc_real": float((p_real.argmax(-1) == labels).mean()),
        "l1_fake_target": float(np.abs(fakes - x[real]).mean()),
        "l1_source_target": float(np.abs(x[src] - x[real]).mean()),
        "l1_fake_source": float(np.abs(fakes - x[src]).mean()),
    }


def expression_oracle(samples: Sequence[contract.FaceSample], size: int, epochs: int = 6,
                      seed: int = 1):
    """A frozen expression *oracle* to judge fakes with: the project's baseline
    CNN (``small`` preset at ``size`` px, no mirror or crop) trained
    ``epochs`` on the real ``samples``; returns its inference model."""
    method, model, cfg, _ = training.train(
        "baseline", list(samples), preset="small", epochs=epochs, seed=seed,
        overrides={"image_size": size, "flip": False, "crop_padding": 0})
    return method.inference_model(model, cfg)


def judge_synthesis(model: FERSNetModel, oracle, samples: Sequence[contract.FaceSample]):
    """Synthesize every :func:`aligned_synthesis_jobs` job of ``samples`` and
    score the fakes with ``oracle`` (:func:`synthesis_scores`).  Returns
    ``(scores, x, fakes, jobs)``; ``x``: the real faces at the model's size."""
    x = decode_faces(samples, int(model.cfg["image_size"]))
    jobs = aligned_synthesis_jobs(samples)
    fakes = synthesize(model, x[jobs[:, 0]], jobs[:, 1])
    scores = synthesis_scores(oracle, x, [s.emotion for s in samples], fakes, jobs)
    return scores, x, fakes, jobs
