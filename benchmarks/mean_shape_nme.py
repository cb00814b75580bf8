"""The yardstick for a landmark NME: the mean shape. Every test face gets the train
side's mean 68 points (no image seen), per fold of a benchmark protocol; a network
that learned nothing about landmarks scores about this.

    python benchmarks/mean_shape_nme.py --data pipeline/configs/data/ckplus48_helen.yaml \\
        --protocol kfold --k 5 --out runs/ckplus48_helen \\
        --json docs/results/ckplus48_helen/mean_shape_nme.json

``--out`` is the benchmark's output folder: its data (FaceIngestion -> Transform,
cached) is reused, so this costs seconds after the benchmark.
"""

from __future__ import annotations

import argparse
import json
from typing import Dict, Optional

import numpy as np

from benchmarks import folds as B
from models import metrics


def _landmarks(examples):
    pts, mask = [], []
    for b in examples.map(lambda e: {k: e[k] for k in ("landmarks", "landmarks_mask")}
                          ).batch(4096):
        pts.append(b["landmarks"].numpy().reshape(len(b["landmarks"]), -1))
        mask.append(b["landmarks_mask"].numpy().reshape(-1))
    return np.concatenate(pts), np.concatenate(mask)


def mean_shape_nme(train, test) -> Optional[float]:
    """NME (``models.metrics.landmark_nme``, % of the outer-eye-corner distance) of
    predicting the mean of ``train``'s labelled landmarks for every labelled face of
    ``test``; None when either side has no landmarks."""
    (train_pts, train_mask), (test_pts, test_mask) = _landmarks(train), _landmarks(test)
    if not (train_mask > 0).any() or not (test_mask > 0).any():
        return None
    mean = train_pts[train_mask > 0].mean(0)
    return metrics.landmark_nme(test_pts, np.broadcast_to(mean, test_pts.shape), test_mask)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    B.add_data_arguments(p)
    p.add_argument("--json", help="also write the per-fold numbers here")
    args = p.parse_args(argv)
    data, folds = B.benchmark_folds(args)
    nme: Dict[str, Optional[float]] = {f.name: mean_shape_nme(f.train(data), f.test(data))
                                       for f in folds}
    values = [v for v in nme.values() if v is not None]
    result = {"folds": nme, "mean": float(np.mean(values)) if values else None,
              "data": args.data, "protocol": args.protocol, "k": args.k}
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
