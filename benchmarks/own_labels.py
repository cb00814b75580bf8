"""Add ``accuracy_own_labels`` to committed folds scored before the benchmark
computed it (:func:`benchmarks.folds.own_label_scores`), from each fold's
``predictions.csv`` (the per-class probabilities of its test faces) and the data
spec's label sets. A fold that has the score already is left alone.

    python -m benchmarks.own_labels --data pipeline/configs/data/fer2013_ckplus48.yaml \\
        docs/results/fer2013_ckplus48_kfold
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
from typing import Dict, List, Mapping

import numpy as np

from components import contract
from components.ingestion import DataSpec
from benchmarks.folds import own_label_scores
from benchmarks.tables import BenchmarkError


def label_set_masks(spec: DataSpec) -> Dict[str, np.ndarray]:
    """Dataset name -> ``emotion_mask`` of the spec's sources that name a label set."""
    return {s.dataset: contract.label_set_mask(s.label_set) for s in spec.sources
            if s.label_set}


def predictions_arrays(path: str, masks: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """``emotion``, ``probabilities`` and ``emotion_mask`` arrays of a committed
    ``predictions.csv``; a dataset in it without a label set is an error."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = sorted({r["dataset"] for r in rows} - set(masks))
    if missing:
        raise BenchmarkError(f"{path}: no label set for {missing} in the data spec "
                             "(its source needs `label_set:`)")
    return {
        "emotion": np.asarray([contract.EMOTIONS.index(r["emotion"]) for r in rows]),
        "probabilities": np.asarray([[float(r[f"p_{e}"]) for e in contract.EMOTIONS]
                                     for r in rows]),
        "emotion_mask": np.stack([masks[r["dataset"]] for r in rows]),
    }


def backfill(results_dir: str, masks: Mapping[str, np.ndarray]) -> List[str]:
    """Write the own-label scores into every ``<run>/<fold>/result.json`` under
    ``results_dir`` that lacks them; returns the files changed."""
    changed = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*", "*", "result.json"))):
        with open(path) as f:
            row = json.load(f)
        predictions = os.path.join(os.path.dirname(path), "predictions.csv")
        if "accuracy_own_labels" in row or not os.path.exists(predictions):
            continue
        scores = own_label_scores(predictions_arrays(predictions, masks))
        if not scores:
            continue
        row.update(scores, own_labels_from="predictions.csv")
        with open(path, "w") as f:
            json.dump(row, f, indent=2)
        changed.append(path)
    return changed


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the benchmark's data spec")
    parser.add_argument("results", nargs="+", help="committed results folders")
    args = parser.parse_args(argv)
    masks = label_set_masks(DataSpec.load(args.data))
    for folder in args.results:
        for path in backfill(folder, masks):
            print(path)


if __name__ == "__main__":
    main()
