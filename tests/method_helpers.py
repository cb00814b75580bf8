"""Shared helpers for method tests: small synthetic splits and the standard checks
(fit lowers the loss, beats chance on held-out subjects, save/load, export)."""

from __future__ import annotations

import functools
from typing import Dict, Sequence, Tuple

import numpy as np

from components import contract


@functools.lru_cache(maxsize=8)
def synthetic_split(n_train: int = 16, n_test: int = 6, size: int = 48,
                    domains: Tuple[str, ...] = ("lab",), samples_per_emotion: int = 2,
                    emotions: Tuple[str, ...] = contract.BASIC7, seed: int = 0):
    """(train, test) lists of FaceSample with disjoint subjects."""
    from components import synthetic

    def gen(n, offset):
        return list(synthetic.generate(n_subjects=n, samples_per_emotion=samples_per_emotion,
                                       domains=domains, emotions=emotions, size=size,
                                       seed=seed, subject_offset=offset))

    return gen(n_train, 0), gen(n_test, n_train)


def accuracy(inference_model, dataset) -> float:
    """Emotion accuracy of ``inference_model`` over a model-input dataset."""
    correct = total = 0
    for batch in dataset:
        probs = np.asarray(inference_model(batch["image"], training=False)["probabilities"])
        y = np.asarray(batch["emotion"])
        keep = y >= 0
        correct += int((probs.argmax(-1)[keep] == y[keep]).sum())
        total += int(keep.sum())
    return correct / max(total, 1)


def datasets_of(samples: Sequence[contract.FaceSample]) -> Tuple[str, ...]:
    return tuple(sorted({s.dataset for s in samples}))


def chance(emotions: Sequence[str] = contract.BASIC7) -> float:
    return 1.0 / len(emotions)


def summarize(history) -> Dict[str, float]:
    return {k: float(v[-1]) for k, v in history.history.items()}


def images_of(samples: Sequence[contract.FaceSample], size: int):
    """Model-input images ``[B, size, size, 1]`` of ``samples``, decoded as in training."""
    from models import inputs

    return next(iter(inputs.dataset_from_samples(samples, size, len(samples))))["image"]


def assert_export_answers_raw_images(method, model, cfg, samples, export_dir) -> Dict:
    """Export with ``models/export.py``; ``serving_default`` must answer the raw
    encoded images of ``samples`` like the in-memory inference model. Returns the
    signature's outputs (numpy)."""
    import tensorflow as tf

    from models.export import export_saved_model

    export_saved_model(method, model, cfg, str(export_dir))
    serve = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
    (name, spec), = serve.structured_input_signature[1].items()
    assert spec.dtype == tf.string
    res = {k: np.asarray(v) for k, v in
           serve(**{name: tf.constant([s.image for s in samples])}).items()}
    probs = res["probabilities"]
    assert probs.shape == (len(samples), contract.NUM_EMOTIONS)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-4)
    ref = method.inference_model(model, cfg)(images_of(samples, cfg["image_size"]))
    np.testing.assert_allclose(probs, np.asarray(ref["probabilities"]), atol=1e-4)
    return res
