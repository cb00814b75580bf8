"""Does FERSNet's discriminator learn on real faces? (issue 16)

Fits FERSNet (``--preset`` + ``--override key=json``) on one fold of a k-fold
data spec (default CK+48, fold 0, the CK+ benchmark's 48 px small preset) and
records, per epoch, the discriminator's accuracy on the training batches
(``d_acc``: mean patch logit > 0 for a real face, < 0 for a fake, the mean of
the two rates, 0.5 = chance) and its loss ``gan_d`` (Eq 6, log 2 = chance).
Then, on the fold's held-out faces ``x`` (label ``z``) with the final ``D``
and ``G``, the share of right calls for:

* real: ``D(x, z)`` called real;
* fake: ``D(G(x, t), t)`` called fake, ``t`` a random other expression;
* real, wrong label: ``D(x, t)`` called fake. Near 0 means ``D`` ignores the
  label and can only catch pixel artefacts of ``G``; high means it checks
  that the face shows ``t``.

Two diagnostics on the training batches, ``G`` frozen after the fit:

* the cosine between D's gradients from its real and its fake terms (Eq 6),
  and the norm of their sum over the sum of their norms: near -1 and near 0
  mean the two halves of the batch teach D opposite things about nearly the
  same inputs, and D's step is what little is left;
* ``--frozen-steps`` further D steps (its own optimizer, the same loss)
  against the frozen ``G``: does D's update learn once ``G`` stands still?

Prints one JSON line, writes ``result.json`` and ``d_acc.png`` to ``--results``::

    .venv/bin/python benchmarks/fersnet_discriminator.py --epochs 40 \\
        --results docs/results/fersnet_discriminator
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def held_out_calls(model, images: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict:
    """Right-call rates of the final discriminator on held-out faces (see the
    module docstring); ``images`` ``[N,S,S,1]`` in [0,1], ``labels`` ``[N]``
    in 0..7 (faces without a label left out by the caller)."""
    import tensorflow as tf

    from models.fersnet import synthesize
    from models.fersnet.networks import NUM_CLASSES

    rng = np.random.default_rng(seed)
    seen = np.flatnonzero(np.asarray(model.emotions_seen) > 0)
    other = np.array([rng.choice(seen[seen != z]) for z in labels])
    fakes = synthesize(model, images, other)

    def called_real(x, t):
        logits = model.discriminator([tf.constant(x), tf.one_hot(t, NUM_CLASSES)],
                                     training=False)
        return np.asarray(tf.reduce_mean(logits, axis=[1, 2, 3])) > 0

    real = called_real(images, labels)
    fake = called_real(fakes, other)
    wrong = called_real(images, other)
    return {"real_called_real": float(real.mean()), "fake_called_fake": float(1 - fake.mean()),
            "wrong_label_called_fake": float(1 - wrong.mean()),
            "accuracy": float(0.5 * (real.mean() + 1 - fake.mean())), "n": int(len(labels))}


def _objective_inputs(model, data):
    """The joint step's pairing (as ``FERSNetModel.train_step``) for one batch."""
    import tensorflow as tf

    from models.fersnet.pairing import pair_targets

    x = tf.convert_to_tensor(data["image"], tf.float32)
    emotion = tf.reshape(tf.cast(data["emotion"], tf.int64), [-1])
    mask = tf.cast(data["emotion_mask"], tf.float32)
    sid = tf.reshape(tf.cast(data["subject_id"], tf.int64), [-1])
    target, partner, pair_mask = pair_targets(
        sid, emotion, mask, model.cfg["pair_prob"],
        allowed=tf.convert_to_tensor(model.emotions_seen), sequence_id=data.get("sequence_id"),
        within=model.cfg["pair_within"])
    return x, emotion, mask, target, partner, pair_mask


def gradient_cancellation(model, batches) -> dict:
    """Cosine of D's real-term and fake-term gradients and ``|g_r + g_f| /
    (|g_r| + |g_f|)``, averaged over ``batches``."""
    import tensorflow as tf

    from models.fersnet.losses import adversarial_loss
    from models.fersnet.networks import NUM_CLASSES
    from models.losses.classification import masked_mean

    D, kind = model.discriminator, model.cfg["gan_loss"]
    cos, net = [], []
    for data in batches:
        x, emotion, _, target, _, _ = _objective_inputs(model, data)
        fake = model.synthesize(x, target, training=True)
        labelled = tf.cast(emotion >= 0, tf.float32)
        with tf.GradientTape(persistent=True) as tape:
            real = masked_mean(adversarial_loss(D([x, tf.one_hot(emotion, NUM_CLASSES)],
                                                  training=True), True, kind), labelled)
            fk = tf.reduce_mean(adversarial_loss(D([fake, tf.one_hot(target, NUM_CLASSES)],
                                                   training=True), False, kind))
        flat = [tf.concat([tf.reshape(g, [-1]) for g in tape.gradient(t, D.trainable_variables)],
                          0) for t in (real, fk)]
        gr, gf = flat
        cos.append(float(tf.reduce_sum(gr * gf) / (tf.norm(gr) * tf.norm(gf))))
        net.append(float(tf.norm(gr + gf) / (tf.norm(gr) + tf.norm(gf))))
    return {"cosine": round(float(np.mean(cos)), 4), "net_over_sum": round(float(np.mean(net)), 4),
            "batches": len(cos)}


def train_d_against_frozen_g(model, batches, report_every: int = 20) -> list:
    """D alone (its optimizer, Eq 6's ``gan_d``) against the frozen ``G``;
    returns the mean ``d_acc`` of every ``report_every`` steps."""
    import tensorflow as tf

    D, opt = model.discriminator, model.d_optimizer

    @tf.function
    def step(data):
        with tf.GradientTape() as tape:
            t = model.objective(*_objective_inputs(model, data))
        opt.apply(tape.gradient(t["gan_d"], D.trainable_variables), D.trainable_variables)
        return t["d_acc"]

    accs = [float(step(b)) for b in batches]
    return [round(float(np.mean(accs[i:i + report_every])), 4)
            for i in range(0, len(accs), report_every)]


def plot(path: str, history: dict, title: str, frozen: list = (), every: int = 20) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(history["d_acc"]) + 1)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(epochs, history["d_acc"], label="D accuracy, joint fit (training batches)")
    if frozen:
        steps_per_epoch = history.get("steps_per_epoch", 1)
        xs = epochs[-1] + (np.arange(1, len(frozen) + 1) * every) / steps_per_epoch
        a.plot(xs, frozen, label="then D alone, G frozen")
    a.axhline(0.6, ls="--", c="grey", lw=0.8, label="0.6")
    a.axhline(0.5, ls=":", c="grey", lw=0.8, label="chance")
    a.set_xlabel("epoch"), a.set_ylabel("accuracy"), a.legend(fontsize=8)
    b.plot(epochs, history["gan_d"], label="D loss gan_d (Eq 6)")
    b.plot(epochs, history["gan_g"], label="G adversarial gan_g")
    b.axhline(np.log(2), ls=":", c="grey", lw=0.8, label="log 2")
    b.set_xlabel("epoch"), b.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.path.join(ROOT, "pipeline/configs/data/ckplus48.yaml"))
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--preset", default="small")
    p.add_argument("--override", action="append", default=[], metavar="KEY=JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frozen-steps", type=int, default=400)
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "fersnet_discriminator"),
                   help="work folder (prepared data, log)")
    p.add_argument("--results", default="", help="write result.json and d_acc.png here")
    args = p.parse_args(argv)
    overrides = {"image_size": 48}
    for item in args.override:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)

    from pipeline.console import quiet_run

    os.makedirs(args.out, exist_ok=True)
    with quiet_run(os.path.join(args.out, "log.txt")):
        from benchmarks import protocols, tables      # (inside: their import logs go to the file)
        from components.ingestion import DataSpec
        from models import inputs, training
        from models.fersnet import FERSNet

        spec = DataSpec.load(args.data)
        k = int(spec.split.kfold[0])
        spec = protocols.benchmark_spec(spec, "kfold", k)
        method = FERSNet()
        cfg = method.config(args.preset, **overrides)
        data = protocols.prepare_data(spec, os.path.join(args.out, "data"), cfg["image_size"])
        cfg["datasets"] = list(data.datasets)
        fold = protocols.make_folds(data, "kfold", k)[args.fold]
        print(f"{fold.name}: {fold.describe()}; {args.epochs} epochs", file=sys.stderr)
        t0 = time.time()
        fitted = training.fit(method, cfg, fold.train(data), plan=training.Plan(
            epochs=args.epochs, seed=args.seed, post_fit=False, verbose=2))
        train_s = time.time() - t0
        batch = next(iter(inputs.batches(fold.test(data), 100000)))
        labelled = np.asarray(batch["emotion"]).reshape(-1) >= 0
        held = held_out_calls(fitted.model, np.asarray(batch["image"], np.float32)[labelled],
                              np.asarray(batch["emotion"]).reshape(-1)[labelled].astype(np.int64),
                              args.seed)
        train_batches = inputs.batches(
            fold.train(data).cache(), int(cfg["batch_size"]), training=True, seed=args.seed,
            repeat=True, augment=lambda b: method.augment(b, cfg),
            group_size=int(cfg.get("batch_group_size", 0)), group_key=cfg["pair_within"])
        cancel = gradient_cancellation(fitted.model, train_batches.take(10))
        frozen = train_d_against_frozen_g(fitted.model, train_batches.take(args.frozen_steps))
    h = {k: [round(float(v), 4) for v in vals] for k, vals in fitted.history.history.items()
         if k in ("d_acc", "gan_d", "gan_g", "rec", "accuracy")}
    result = {
        "data": os.path.relpath(args.data, ROOT), "fold": fold.name, "preset": args.preset,
        "overrides": overrides, "epochs": args.epochs, "steps": args.epochs * fitted.steps_per_epoch,
        "train_seconds": round(train_s), "history": h,
        "max_d_acc": max(h["d_acc"]), "first_epoch_over_0.6": next(
            (i + 1 for i, v in enumerate(h["d_acc"]) if v > 0.6), None),
        "held_out": held,
        "gradient_cancellation": cancel,
        "frozen_g": {"steps": args.frozen_steps, "d_acc_per_20_steps": frozen},
        "hardware": tables.hardware(), "commit": tables.git_commit(ROOT),
        "command": "benchmarks/fersnet_discriminator.py " + " ".join(argv or sys.argv[1:]),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "history"}), flush=True)
    if args.results:
        os.makedirs(args.results, exist_ok=True)
        with open(os.path.join(args.results, "result.json"), "w") as f:
            json.dump(result, f, indent=2)
        plot(os.path.join(args.results, "d_acc.png"),
             {**h, "steps_per_epoch": fitted.steps_per_epoch}, frozen=frozen, title=
             f"FERSNet D on {fold.name} of {result['data']} ({args.preset}, "
             f"{result['steps']} steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
