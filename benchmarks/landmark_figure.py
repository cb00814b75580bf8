"""Landmarks of finished benchmark runs on held-out faces: the true 68 points, each
run's prediction and the mean shape (the train side's mean points, the yardstick of
``benchmarks/mean_shape_nme.py``), drawn on the first faces of a fold's test side that
have landmarks.

    python benchmarks/landmark_figure.py --data pipeline/configs/data/ckplus48_helen.yaml \\
        --protocol kfold --k 5 --out runs/ckplus48_helen --fold fold0 \\
        --runs tracenorm,tracenorm-no_ada,tracenorm-hard,tracenorm-single \\
        --png docs/results/figures_ckplus48/tracenorm_helen_fold0_landmarks.png

The runs are rebuilt from their weights in ``OUT/runs/<run>/<fold>``; the data is the
benchmark's (cached).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from benchmarks import folds as F
from benchmarks.mean_shape_nme import _landmarks
from benchmarks.protocols import load_run_model
from models import training
from pipeline import figures


def first_landmark_faces(examples, n: int):
    """The first ``n`` examples with landmarks: images ``[n, S, S, 1]``, points ``[n, 136]``
    and the examples themselves (a dataset, to predict on)."""
    with_points = examples.filter(lambda e: e["landmarks_mask"][0] > 0).take(n)
    batch = next(iter(with_points.batch(n)))
    return batch["image"].numpy(), batch["landmarks"].numpy(), with_points


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    F.add_data_arguments(p)
    p.add_argument("--fold", default="fold0")
    p.add_argument("--runs", required=True, help="comma-separated run names")
    p.add_argument("--faces", type=int, default=6)
    p.add_argument("--png", required=True)
    args = p.parse_args(argv)
    data, folds = F.benchmark_folds(args)
    (fold,) = [f for f in folds if f.name == args.fold]
    faces, true, examples = first_landmark_faces(fold.test(data), args.faces)
    train_pts, train_mask = _landmarks(fold.train(data))
    predicted = {}
    for run in args.runs.split(","):
        method, model, cfg = load_run_model(os.path.join(args.out, "runs", run, args.fold),
                                            data.datasets)
        out = [o["landmarks"] for _, o in training.predict(method, model, cfg, examples)]
        predicted[run] = np.concatenate(out)
    predicted["mean shape"] = np.broadcast_to(train_pts[train_mask > 0].mean(0), true.shape)
    print(figures.landmarks_plot(faces, true, predicted, args.png,
                                 title=f"{args.fold}: held-out faces, true points (white)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
