"""Does FERSNet's synthesis show the target expression? (synthetic lab faces)

Trains FERSNet (``small`` preset + ``--override key=json``) on the lab faces of
``--train-subjects`` subjects for ``--epochs``, and a frozen expression
*oracle* (the baseline CNN, trained on the training *and* held-out subjects'
real faces, so it reads their expressions well). Then, for every held-out
face ``x`` and every other basic expression ``t`` of its capture sequence
(the same render conditions, so the real ``x_t`` exists pixel-aligned):

* hit: the oracle's argmax on ``G(x, t)`` is ``t`` (chance 1/7);
* hit_excluding_source: the same with the source's own expression left out
  of the argmax (chance 1/6): does ``G`` push *towards t*, even where the
  oracle still reads the source? A blur or noise that only flattens the
  oracle's output stays at chance here;
* p(target): the oracle's mean probability of ``t`` on ``G(x, t)``, and on
  the real ``x`` ("before"); p(source) on ``G(x, t)`` and on ``x``;
* L1 fake->target against L1 source->target: below means ``G`` drew some of
  the real change of expression; L1 fake->source: how much ``G`` changed.

Prints one JSON line (the figures), saves a grid (source, ``G(x, t)`` for the
seven targets, the real targets) as PNG::

    .venv/bin/python benchmarks/bench_synthesis.py --train-subjects 40 --epochs 40 \
        --png docs/figures/synthetic_fersnet_synthesis.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from components import contract, synthetic  # noqa: E402

SIZE = 64
K = len(contract.BASIC7)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sequences(samples):
    """``[{expression: sample index}]``, one dict per capture sequence."""
    groups = {}
    for i, s in enumerate(samples):
        groups.setdefault((s.subject, s.sequence), {})[s.emotion] = i
    return list(groups.values())


def aligned_jobs(samples):
    """``(source, target expression, real target)`` index triples within each
    capture sequence (subject + sequence)."""
    jobs = [(g[a], b, g[b]) for g in sequences(samples) for a in g for b in g if a != b]
    return np.asarray(jobs, np.int64).reshape(-1, 3)


def measure(oracle, x, labels, fakes, jobs) -> dict:
    """The figures of the module docstring; ``labels`` the real faces' expressions."""
    src, tgt, real = jobs.T
    p_fake = np.asarray(oracle(fakes)["probabilities"])
    p_real = np.asarray(oracle(x)["probabilities"])
    rows = np.arange(len(tgt))
    own = np.asarray(labels)[src]
    without_source = p_fake.copy()
    without_source[rows, own] = -1.0
    return {
        "pairs": int(len(tgt)),
        "hit": float((p_fake.argmax(-1) == tgt).mean()),
        "chance": 1.0 / K,
        "hit_excluding_source": float((without_source.argmax(-1) == tgt).mean()),
        "chance_excluding_source": 1.0 / (K - 1),
        "p_target_fake": float(p_fake[rows, tgt].mean()),
        "p_target_real_source": float(p_real[src, tgt].mean()),
        "p_source_fake": float(p_fake[rows, own].mean()),
        "p_source_real_source": float(p_real[src, own].mean()),
        "oracle_acc_real": float((p_real.argmax(-1) == np.asarray(labels)).mean()),
        "l1_fake_target": float(np.abs(fakes - x[real]).mean()),
        "l1_source_target": float(np.abs(x[src] - x[real]).mean()),
        "l1_fake_source": float(np.abs(fakes - x[src]).mean()),
    }


def save_grid(path, x, fakes_of, samples, rows: int = 3) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    neutral = contract.EMOTIONS.index("neutral")
    picked = [g for g in sequences(samples) if neutral in g and len(g) == K][:rows]
    fig, ax = plt.subplots(2 * len(picked), K + 1, figsize=(1.5 * (K + 1), 3.1 * len(picked)))
    ax = np.atleast_2d(ax)
    for r, g in enumerate(picked):
        fakes = fakes_of(np.repeat(x[g[neutral]][None], K, 0), np.arange(K))
        ax[2 * r, 0].imshow(x[g[neutral], ..., 0], cmap="gray", vmin=0, vmax=1)
        ax[2 * r, 0].set_title("source", fontsize=8)
        for t in range(K):
            name = contract.EMOTIONS[t][:5]
            ax[2 * r, t + 1].imshow(fakes[t, ..., 0], cmap="gray", vmin=0, vmax=1)
            ax[2 * r, t + 1].set_title(f"G(x, {name})", fontsize=8)
            ax[2 * r + 1, t + 1].imshow(x[g[t], ..., 0], cmap="gray", vmin=0, vmax=1)
            ax[2 * r + 1, t + 1].set_title(f"real {name}", fontsize=8)
    for a in ax.ravel():
        a.axis("off")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=80)
    log(f"grid -> {path}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-subjects", type=int, default=40)
    p.add_argument("--test-subjects", type=int, default=6)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--oracle-epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--override", action="append", default=[], metavar="KEY=JSON",
                   help="FERSNet config override, e.g. residual_output=false")
    p.add_argument("--png", default="", help="save the grid of fakes here")
    p.add_argument("--save", default="", help="save the trained FERSNet here (.keras)")
    args = p.parse_args(argv)

    from models import fersnet, training

    overrides = {}
    for item in args.override:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    common = dict(samples_per_emotion=2, domains=("lab",), emotions=contract.BASIC7,
                  size=SIZE, seed=args.seed)
    train = list(synthetic.generate(n_subjects=args.train_subjects, **common))
    test = list(synthetic.generate(n_subjects=args.test_subjects,
                                   subject_offset=args.train_subjects, **common))
    log(f"{len(train)} training faces, {len(test)} held-out faces")

    t0 = time.time()
    _, model, cfg, hist = training.train(fersnet.FERSNet(), train, test, preset="small",
                                         epochs=args.epochs, seed=args.seed,
                                         overrides=overrides, verbose=2)
    train_s = time.time() - t0
    log(f"FERSNet: {train_s:.0f} s")
    bmethod, bmodel, bcfg, _ = training.train(
        "baseline", train + test, preset="small", epochs=args.oracle_epochs, seed=args.seed + 1,
        overrides={"image_size": SIZE, "flip": False, "crop_padding": 0})
    oracle = bmethod.inference_model(bmodel, bcfg)

    x = fersnet._decode_to_size(test, SIZE)
    jobs = aligned_jobs(test)
    fakes = fersnet.synthesize(model, x[jobs[:, 0]], jobs[:, 1])
    result = measure(oracle, x, [s.emotion for s in test], fakes, jobs)
    result.update({"train_subjects": args.train_subjects, "epochs": args.epochs,
                   "steps": int(args.epochs * (len(train) // int(cfg["batch_size"]))),
                   "train_seconds": round(train_s), "overrides": overrides,
                   "recognition_val_accuracy": float(hist.history["val_accuracy"][-1])})
    print(json.dumps(result), flush=True)
    if args.save:
        model.save(args.save)
        log(f"model -> {args.save}")
    if args.png:
        save_grid(args.png, x, lambda im, t: fersnet.synthesize(model, im, t), test)
    return 0


if __name__ == "__main__":
    sys.exit(main())
