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

``--generator-only``: instead of the whole FERSNet objective, train only its
generator (both encoder streams, the ConvFLU transfers, label transformer and
decoder) on aligned ``(x, t, x_t)`` pairs of the training subjects with
``lambda_rec * reconstruction_loss(G(x, t), x_t)`` (Eq 7) alone, ``--steps`` Adam steps at
``--lr`` (batch 16).  It isolates what the architecture and the
reconstruction loss can learn from what the GAN, cycle and classification
terms add (docs/methods.md, FERSNet, the small preset's synthesis side).

Prints one JSON line (the figures), saves a grid (source, ``G(x, t)`` for the
seven targets, the real targets) as PNG::

    make bench-synthesis     # 40 subjects, 100 epochs (3500 steps, ~9 min): the slow test's run
    .venv/bin/python benchmarks/bench_synthesis.py --seed 0 \
        --png docs/figures/synthetic_fersnet_synthesis_l2_3500_steps.png   # RESULTS' figure
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

from benchmarks import synthesis  # noqa: E402
from components import contract, synthetic  # noqa: E402
from models import fersnet  # noqa: E402
from models.fersnet.fes import decode_faces  # noqa: E402
from models.fersnet.losses import reconstruction_loss  # noqa: E402

SIZE = 64
K = len(contract.BASIC7)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def save_grid(path, x, fakes_of, samples, rows: int = 3) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    neutral = contract.EMOTIONS.index("neutral")
    picked = [g for g in synthesis.capture_sequences(samples)
              if neutral in g and len(g) == K][:rows]
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


def train_generator(train, overrides, steps: int, lr: float, seed: int, batch: int = 16):
    """``--generator-only``: a ``FERSNetModel`` (small preset + ``overrides``)
    whose generator was trained alone on aligned pairs of ``train``."""
    import tensorflow as tf
    import keras

    cfg = fersnet.FERSNet().config("small", **overrides)
    tf.random.set_seed(seed)
    model = fersnet.FERSNetModel(cfg, load_embedding=False)
    x = decode_faces(train, SIZE)
    jobs = synthesis.aligned_synthesis_jobs(train)
    params = (model.encoder.trainable_variables + model.decoder.trainable_variables)
    opt = keras.optimizers.Adam(lr, beta_1=cfg["beta_1"])
    weight = float(cfg["lambda_rec"])

    @tf.function
    def step(src, target, real):
        with tf.GradientTape() as tape:
            fake = model.synthesize(src, target, training=True)
            loss = weight * tf.reduce_mean(reconstruction_loss(fake, real))
        opt.apply(tape.gradient(loss, params), params)
        return loss

    rng = np.random.default_rng(seed)
    for i in range(1, steps + 1):
        b = jobs[rng.integers(0, len(jobs), batch)]
        loss = step(x[b[:, 0]], b[:, 1], x[b[:, 2]])
        if i % 250 == 0 or i == steps:
            log(f"step {i}/{steps}: {weight:g} x L_rec = {float(loss):.5f}")
    return model, cfg


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-subjects", type=int, default=40)
    p.add_argument("--test-subjects", type=int, default=6)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--oracle-epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--override", action="append", default=[], metavar="KEY=JSON",
                   help="FERSNet config override, e.g. residual_output=false")
    p.add_argument("--generator-only", action="store_true",
                   help="train the generator alone on aligned pairs (recon loss only)")
    p.add_argument("--steps", type=int, default=1000, help="--generator-only: Adam steps")
    p.add_argument("--lr", type=float, default=5e-4, help="--generator-only: learning rate")
    p.add_argument("--png", default="", help="save the grid of fakes here")
    p.add_argument("--save", default="", help="save the trained FERSNet here (.keras)")
    args = p.parse_args(argv)

    from models import training

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
    if args.generator_only:
        model, cfg = train_generator(train, overrides, args.steps, args.lr, args.seed)
        run = {"generator_only": True, "steps": args.steps, "lr": args.lr}
    else:
        _, model, cfg, hist = training.train(fersnet.FERSNet(), train, test, preset="small",
                                             epochs=args.epochs, seed=args.seed,
                                             overrides=overrides, verbose=2)
        run = {"epochs": args.epochs,
               "steps": int(args.epochs * (len(train) // int(cfg["batch_size"]))),
               "recognition_val_accuracy": float(hist.history["val_accuracy"][-1])}
    train_s = time.time() - t0
    log(f"FERSNet: {train_s:.0f} s")
    oracle = synthesis.expression_oracle(train + test, SIZE, epochs=args.oracle_epochs,
                                       seed=args.seed + 1)
    result, x, _, _ = synthesis.judge_synthesis(model, oracle, test)
    result.update({"train_subjects": args.train_subjects, **run,
                   "train_seconds": round(train_s), "overrides": overrides})
    print(json.dumps(result), flush=True)
    if args.save:
        model.save(args.save)
        log(f"model -> {args.save}")
    if args.png:
        save_grid(args.png, x, lambda im, t: fersnet.synthesize(model, im, t), test)
    return 0


if __name__ == "__main__":
    sys.exit(main())
