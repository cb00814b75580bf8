"""Is the input pipeline the bottleneck? The training core against a bare ``model.fit``.

For the baseline (``--preset``, default ``paper``: the 1.77 M-parameter CNN), on the
same synthetic faces, batch and network, measure training images/s after the
first (compiling) step of:

* **core**: ``models.training.train`` — contract examples decoded as Transform
  does, cached, shuffled, augmented, batched and prefetched by ``models.inputs``;
* **bare**: ``model.fit`` on the already decoded in-memory NumPy arrays (Keras'
  own array adapter, no augmentation).

Prints both and their ratio (the issue asks for >= 0.9)::

    make bench-input          # = .venv/bin/python benchmarks/bench_input.py
    .venv/bin/python benchmarks/bench_input.py --preset small --steps 400
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from components import contract, synthetic  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--steps", type=int, default=200,
                        help="optimizer steps per measurement (the first, compiling, not timed)")
    parser.add_argument("--subjects", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import tensorflow as tf

    from models import inputs, registry, training

    samples = list(synthetic.generate(n_subjects=args.subjects, samples_per_emotion=2,
                                      domains=("lab", "wild"), emotions=contract.BASIC7,
                                      size=48, seed=args.seed))
    method = registry.get_method("baseline")
    cfg = method.config(args.preset)
    batch = int(cfg["batch_size"])
    per_epoch = len(samples) // batch
    epochs = -(-args.steps // per_epoch)
    print(f"baseline/{args.preset}: {len(samples)} faces, batch {batch}, {epochs} epochs of "
          f"{per_epoch} steps each way; tf {tf.__version__}, {os.cpu_count()} CPUs, "
          f"GPUs: {len(tf.config.list_physical_devices('GPU'))}", file=sys.stderr)

    core = training.TimeBudget(1e9, batch)
    training.train(method, samples, preset=args.preset, epochs=epochs, seed=args.seed,
                   callbacks=[core], post_fit=False)

    cfg["datasets"] = list(training.dataset_names(samples))
    cfg["schedule_steps"] = epochs * per_epoch
    arrays = {k: [] for k in ("image", "emotion", "emotion_mask", "dataset_id")}
    for b in inputs.dataset_from_samples(samples, int(cfg["image_size"]), 256,
                                         cfg["datasets"]):
        for k in arrays:
            arrays[k].append(b[k].numpy())
    arrays = {k: np.concatenate(v) for k, v in arrays.items()}
    arrays = {k: v[:per_epoch * batch] for k, v in arrays.items()}   # whole batches, as the core
    bare = training.TimeBudget(1e9, batch)
    model = method.build(cfg)
    model.fit(arrays, batch_size=batch, epochs=epochs, shuffle=True, callbacks=[bare],
              verbose=0)

    ratio = core.images_per_second / bare.images_per_second
    print("| path | train img/s | steps |")
    print("|---|---|---|")
    print(f"| core (models.training.train) | {core.images_per_second:.0f} | {core.steps} |")
    print(f"| bare model.fit on arrays | {bare.images_per_second:.0f} | {bare.steps} |")
    print(f"\nratio core / bare: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
