"""Every registered method under the same CPU budget on synthetic faces.

For each method of ``models.registry`` (a method whose module does not import,
or whose training fails, is listed with a note): build its ``small`` preset,
train it with :func:`models.training.train` for a fixed wall-clock budget on
the synthetic *lab + wild* faces of the training subjects (all labels:
emotions, AUs, landmarks), then evaluate emotion accuracy on the *wild* faces
of held-out subjects. Prints a Markdown table:

* parameters: all weights of the training model (every head);
* train img/s: training images per second after the first (compiling) step;
* steps: optimizer steps done within the budget;
* wild acc / bal. acc: accuracy and mean per-class recall on the test faces
  (chance = 1/7: the synthetic set uses the seven basic emotions);
* AU F1: mean F1 of the AU outputs at 0.5 (binarised truth) when the method
  predicts AUs.

The budget (``--seconds``, default 60) counts the whole ``fit``, compilation
included. Images are generated once at 64 px; each method resizes them to its
own ``image_size``. Progress goes to stderr, the table to stdout::

    make bench-methods            # = .venv/bin/python benchmarks/bench_methods.py
    .venv/bin/python benchmarks/bench_methods.py --methods baseline,sjmt --seconds 30
    .venv/bin/python benchmarks/bench_methods.py --methods fersnet --set identity_embedding=false

``--set KEY=VALUE`` (repeatable; VALUE read as YAML) overrides the preset of
every method run, and the table's note column lists the overrides.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from components import contract, synthetic  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_data(args):
    """(train, wild test) samples with disjoint subjects."""
    common = dict(samples_per_emotion=args.samples_per_emotion, emotions=contract.BASIC7,
                  size=args.size, seed=args.seed)
    train = list(synthetic.generate(n_subjects=args.train_subjects, domains=("lab", "wild"),
                                    **common))
    test = list(synthetic.generate(n_subjects=args.test_subjects, domains=("wild",),
                                   subject_offset=args.train_subjects, **common))
    return train, test


def bench_one(name: str, train, test, args) -> dict:
    """One row of the table (``note`` set when the method was skipped or failed)."""
    from models import registry, training

    row = {"method": name}
    try:
        method = registry.get_method(name)
    except Exception as exc:  # the module is not written yet / does not import
        row["note"] = f"skipped: does not import ({type(exc).__name__}: {exc})"[:160]
        return row
    try:
        cfg = method.config(args.preset, **args.overrides)
        batch = int(cfg.get("batch_size", 32))
        budget = training.TimeBudget(args.seconds, batch)
        steps = max(len(train) // batch, 1)
        start = time.perf_counter()
        method, model, cfg, _ = training.train(
            method, train, preset=args.preset, epochs=10 ** 6, steps_per_epoch=steps,
            batch_size=batch, seed=args.seed, callbacks=[budget], verbose=0,
            overrides=args.overrides)
        fit_s = time.perf_counter() - start
        result = training.evaluate(method, model, cfg, test)
        row.update(
            preset=args.preset, image_size=cfg["image_size"], params=model.count_params(),
            images_per_s=budget.images_per_second, steps=budget.steps, fit_s=fit_s,
            first_step_s=(budget.first_done - budget.start) if budget.first_done else None,
            accuracy=result["accuracy"], balanced=result["balanced_accuracy"],
            au_f1=result.get("au_mean_f1"),
            note=", ".join(f"{k}={v}" for k, v in args.overrides.items()))
    except Exception as exc:
        log(traceback.format_exc())
        row["note"] = f"failed: {type(exc).__name__}: {exc}"[:160]
    return row


def markdown(rows, args, chance: float) -> str:
    head = ("| method | preset | input | parameters | train img/s | steps | first step s "
            "| wild acc | wild bal. acc | AU F1 | note |")
    lines = [head, "|" + "---|" * 11]

    def f(v, fmt):
        return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else fmt.format(v)

    for r in rows:
        lines.append("| " + " | ".join([
            r["method"], r.get("preset", "—"),
            f(r.get("image_size"), "{0}x{0}"), f(r.get("params"), "{:,}"),
            f(r.get("images_per_s"), "{:.0f}"), f(r.get("steps"), "{}"),
            f(r.get("first_step_s"), "{:.1f}"), f(r.get("accuracy"), "{:.1%}"),
            f(r.get("balanced"), "{:.1%}"), f(r.get("au_f1"), "{:.2f}"),
            r.get("note", "")]) + " |")
    lines.append("")
    lines.append(f"Budget {args.seconds:.0f} s of `fit` per method (compilation included); "
                 f"train: {args.train_subjects} subjects x lab+wild x 7 emotions x "
                 f"{args.samples_per_emotion}; test: {args.test_subjects} held-out subjects, "
                 f"wild only; chance {chance:.1%}.")
    return "\n".join(lines)


def main(argv=None) -> int:
    from models import registry

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="wall-clock training budget per method")
    parser.add_argument("--methods", default=",".join(registry.method_names()),
                        help="comma-separated method names (default: all registered)")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--train-subjects", type=int, default=40)
    parser.add_argument("--test-subjects", type=int, default=10)
    parser.add_argument("--samples-per-emotion", type=int, default=2)
    parser.add_argument("--size", type=int, default=64, help="generated image size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="preset override for every method (VALUE as YAML); repeatable")
    args = parser.parse_args(argv)
    args.overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--set {item!r}: expected KEY=VALUE")
        args.overrides[key] = yaml.safe_load(value)

    import tensorflow as tf

    start = time.perf_counter()
    train, test = make_data(args)
    log(f"data: {len(train)} train / {len(test)} test faces "
        f"({time.perf_counter() - start:.0f}s); tf {tf.__version__}, "
        f"{os.cpu_count()} CPUs, GPUs: {len(tf.config.list_physical_devices('GPU'))}")
    rows = []
    for name in [m.strip() for m in args.methods.split(",") if m.strip()]:
        log(f"--- {name}")
        row = bench_one(name, train, test, args)
        log(str(row))
        rows.append(row)
    print(markdown(rows, args, 1.0 / len(contract.BASIC7)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
