"""The metrics every path reports: one confusion matrix, one accuracy.

The training core (``models.training.evaluate``), the benchmark, the figures and
the pipeline report all call these functions, so a number means the same thing
wherever it is printed. ``tests/test_pipeline.py`` holds :func:`emotion_metrics`'
accuracy equal to the Evaluator's TFMA ``SparseCategoricalAccuracy`` on the same
model and examples.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
from sklearn.metrics import confusion_matrix as _sk_confusion

from components import contract


def confusion_matrix(y_true, y_pred, num_classes: int = contract.NUM_EMOTIONS) -> np.ndarray:
    """``[n, n]`` int64 counts, rows = truth, columns = prediction, over the
    canonical emotion indices; samples with ``y_true < 0`` (no emotion label)
    are left out."""
    y_true = np.asarray(y_true, np.int64).reshape(-1)
    y_pred = np.asarray(y_pred, np.int64).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{len(y_true)} labels vs {len(y_pred)} predictions")
    keep = y_true >= 0
    return _sk_confusion(y_true[keep], y_pred[keep],
                         labels=np.arange(num_classes)).astype(np.int64)


def emotion_metrics(y_true, probabilities) -> Dict[str, Any]:
    """Emotion metrics of argmax predictions.

    Returns ``accuracy`` (over samples with an emotion; TFMA's
    ``SparseCategoricalAccuracy``), ``balanced_accuracy`` (mean recall over the
    classes present), ``per_class_recall`` / ``per_class_precision`` (emotion
    name -> value, None where undefined), ``confusion_matrix`` (nested list,
    :func:`confusion_matrix`) and ``num_examples``.
    """
    probabilities = np.asarray(probabilities)
    cm = confusion_matrix(y_true, probabilities.argmax(-1), probabilities.shape[-1])
    total = int(cm.sum())
    support, predicted = cm.sum(1), cm.sum(0)
    recall = {e: (float(cm[i, i] / support[i]) if support[i] else None)
              for i, e in enumerate(contract.EMOTIONS[:len(cm)])}
    precision = {e: (float(cm[i, i] / predicted[i]) if predicted[i] else None)
                 for i, e in enumerate(contract.EMOTIONS[:len(cm)])}
    present = [r for r in recall.values() if r is not None]
    return {
        "accuracy": float(np.trace(cm) / total) if total else float("nan"),
        "balanced_accuracy": float(np.mean(present)) if present else float("nan"),
        "per_class_recall": recall,
        "per_class_precision": precision,
        "confusion_matrix": cm.tolist(),
        "num_examples": total,
    }


def au_metrics(aus_true, aus_mask, aus_score, threshold: float = 0.5) -> Optional[Dict[str, Any]]:
    """Per-AU occurrence metrics at ``threshold`` over the labelled entries
    (``aus_mask > 0``): ``au_accuracy`` ((TP + TN) / N, SJMT's Table 1 metric),
    ``au_f1`` (AU name -> value, None where unlabelled) and their means
    ``au_mean_accuracy`` / ``au_mean_f1``. None when nothing is labelled."""
    mask = np.asarray(aus_mask) > 0
    if not mask.any():
        return None
    truth = np.asarray(aus_true) >= threshold
    pred = np.asarray(aus_score) >= threshold
    tp = (mask & truth & pred).sum(0)
    tn = (mask & ~truth & ~pred).sum(0)
    fp = (mask & ~truth & pred).sum(0)
    fn = (mask & truth & ~pred).sum(0)
    n = mask.sum(0)
    acc, f1 = {}, {}
    for i, name in enumerate(contract.AU_NAMES[:mask.shape[1]]):
        if not n[i]:
            acc[name] = f1[name] = None
            continue
        acc[name] = float((tp[i] + tn[i]) / n[i])
        denom = 2 * tp[i] + fp[i] + fn[i]
        f1[name] = float(2 * tp[i] / denom) if denom else 0.0
    return {"au_accuracy": acc, "au_f1": f1,
            "au_mean_accuracy": float(np.mean([v for v in acc.values() if v is not None])),
            "au_mean_f1": float(np.mean([v for v in f1.values() if v is not None]))}


#: 0-based iBUG indices of the outer eye corners (points 37 and 46, 1-based).
OUTER_EYE_CORNERS = (36, 45)


def landmark_nme(true, pred, mask, normalisation: str = "outer_corners") -> Optional[float]:
    """Normalised mean error of 68-point landmarks, in % (Hu et al. Sec. 4.1, Table 6):
    per face ``mean_k ||pred_k - true_k||_2 / d``, averaged over the faces with
    ``mask > 0``. ``d`` is the inter-ocular distance ``||true_36 - true_45||``
    (outer eye corners, 0-based) or, with ``normalisation="pupils"``, the distance
    of the eye centres (means of points 36-41 and 42-47). ``true`` / ``pred``:
    ``[N, 136]`` or ``[N, 68, 2]``; None when no face is labelled; a labelled face
    with ``d = 0`` raises ValueError."""
    n_points = contract.NUM_LANDMARKS
    true = np.asarray(true, np.float64).reshape(-1, n_points, 2)
    pred = np.asarray(pred, np.float64).reshape(-1, n_points, 2)
    keep = np.asarray(mask).reshape(-1) > 0
    if true.shape != pred.shape or keep.shape[0] != true.shape[0]:
        raise ValueError(f"landmark_nme: shapes {true.shape}, {pred.shape}, mask {keep.shape}")
    if not keep.any():
        return None
    true, pred = true[keep], pred[keep]
    if normalisation == "outer_corners":
        a, b = true[:, OUTER_EYE_CORNERS[0]], true[:, OUTER_EYE_CORNERS[1]]
    elif normalisation == "pupils":
        a, b = true[:, 36:42].mean(1), true[:, 42:48].mean(1)
    else:
        raise ValueError(f"normalisation must be 'outer_corners' or 'pupils', "
                         f"got {normalisation!r}")
    d = np.linalg.norm(a - b, axis=-1)
    if np.any(d <= 0):
        raise ValueError(f"landmark_nme: {int((d <= 0).sum())} labelled face(s) with "
                         f"zero inter-ocular distance")
    err = np.linalg.norm(pred - true, axis=-1).mean(-1) / d
    return float(100.0 * err.mean())
