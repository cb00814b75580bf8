"""`fermtl benchmark`: every method under one protocol (holdout, subject-independent
k-fold, k-fold with a validation group that selects the epoch, cross-dataset); writes a
results table and the seeds' figures.

    fermtl benchmark --data pipeline/configs/data/fer2013.yaml --methods all \\
        --protocol holdout --settings pipeline/configs/benchmarks/fer2013.yaml --out runs/bench

``--settings`` is an optional YAML with per-method ``preset`` / ``overrides`` /
``epochs`` / ``minutes``, the numbers each seed paper reports, and the committed
results folder (relative to the YAML's folder; ``--results`` overrides it)::

    methods:
      baseline: {preset: paper, minutes: 15}
      fersnet: {preset: small, overrides: {image_size: 48}, minutes: 15}
    seed_reported:
      ddmtl: "CK+ 99.2 % (10-fold)"
    results: ../../../docs/results/ckplus_kfold

Cross-dataset: ``--protocol cross --train-datasets A --test-datasets B``, with
``--train-split`` / ``--test-split`` (``all``, ``train``, ``eval``) to keep a side
to one split of the spec (FER2013 -> CK+48: ``--train-split train``; CK+48 ->
FER2013 PublicTest: ``--test-split eval``). Test examples of a class the train
datasets never label are left out and counted (benchmarks/protocols.py).

Mixed datasets, one folded: ``--protocol kfold --fold-datasets ckplus48`` on a spec
with FER2013 and CK+ tests CK+ fold i, trains on the other CK+ folds plus FER2013
Training in every fold, and scores FER2013 PublicTest beside (``side_scores``).

Each finished fold's ``result.json``, ``predictions.csv`` and confusion matrix go
to ``RESULTS/<method>/<fold>/`` (commit them). Rerunning the same command skips
every fold whose result there (or in ``--out``) was made with the same settings
and the same method code, and reruns the others (benchmarks/resume.py).
"""

from __future__ import annotations

import logging
import os
import time

import yaml

log = logging.getLogger("fermtl")


def register(sub) -> None:
    p = sub.add_parser("benchmark", help="train every method under one protocol; results "
                                         "table (Markdown + CSV) and figures")
    p.add_argument("--data", required=True,
                   help="data spec YAML (docs/ingestion.md), or a run config with a data section")
    p.add_argument("--methods", default="all", help="'all' or comma-separated method names")
    p.add_argument("--protocol", default="holdout",
                   choices=["holdout", "kfold", "kfold_val", "cross"],
                   help="holdout: the spec's train -> eval split; kfold: fold i tests group i "
                        "and trains on the rest; kfold_val: fold i tests group i, selects the "
                        "epoch with the best accuracy on group (i + 1) %% k and trains on the "
                        "other k - 2 (DDMTL's CK+ protocol); cross: --train-datasets -> "
                        "--test-datasets")
    p.add_argument("--k", type=int, default=10,
                   help="kfold, kfold_val: number of folds (subject-disjoint groups, default 10)")
    p.add_argument("--folds", type=int, help="kfold, kfold_val: run only the first N folds")
    p.add_argument("--fold-datasets", default="",
                   help="kfold, kfold_val: fold only these datasets (comma-separated); the "
                        "others train in every fold from their train split, and their eval "
                        "split is scored beside the test fold (e.g. CK+ folds beside FER2013)")
    p.add_argument("--train-datasets", default="", help="cross: comma-separated dataset names")
    p.add_argument("--test-datasets", default="", help="cross: comma-separated dataset names")
    p.add_argument("--train-split", default="all", choices=["all", "train", "eval"],
                   help="cross: the spec split the train side reads (default all: both "
                        "splits; train: e.g. FER2013 Training only)")
    p.add_argument("--test-split", default="all", choices=["all", "train", "eval"],
                   help="cross: the spec split the test side reads (default all: both "
                        "splits; eval: e.g. FER2013 PublicTest)")
    p.add_argument("--settings", help="YAML with per-method settings and seed-reported numbers")
    p.add_argument("--preset", default="small", help="preset for methods without settings")
    p.add_argument("--epochs", type=int,
                   help="epochs per run for every method (overrides --settings)")
    p.add_argument("--minutes", type=float,
                   help="CPU budget per run for every method: epochs are calibrated to fit "
                        "it (overrides --settings)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/benchmark", help="output folder (resumable)")
    p.add_argument("--results",
                   help="committed results folder: each finished fold's result.json, "
                        "predictions.csv and confusion matrix go to RESULTS/<method>/<fold>/; "
                        "a fold there with the same settings and method code is skipped "
                        "(overrides the settings file's 'results')")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--redo-figures", action="store_true",
                   help="finished runs: rebuild each model from its weights and redraw "
                        "its figures")
    p.set_defaults(func=cmd_benchmark)


def data_spec_of(path: str):
    """A ``DataSpec`` from a data spec YAML or a run config's ``data`` section."""
    from components.ingestion import DataSpec
    from pipeline.config import load_config

    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    if "sources" in raw:
        return DataSpec.from_yaml(path)
    if "data" in raw:
        return DataSpec.load(load_config(path).data)
    raise SystemExit(f"{path}: neither a data spec (sources: ...) nor a run config (data: ...)")


def _names(text: str):
    return [t.strip() for t in text.split(",") if t.strip()]


def log_path(out: str) -> str:
    """``<out>/logs/benchmark-<UTC time>.log``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return os.path.join(out, "logs", f"benchmark-{stamp}.log")


def cmd_benchmark(args) -> int:
    """Quiet by default: the data components and each run's progress on the
    console, the full log in ``--out``/logs (``-v`` prints it)."""
    from pipeline.console import quiet_run

    path = log_path(os.path.abspath(args.out))
    print(f"benchmark: full log in {path}{'' if args.verbose else ' (-v prints it)'}")
    with quiet_run(path, args.verbose, echo=(log.name + ".benchmark",)):
        return _benchmark(args)


def _benchmark(args) -> int:
    from benchmarks.protocols import run_benchmark
    from benchmarks.tables import BenchmarkError, load_settings

    try:
        settings = load_settings(args.settings) if args.settings else {}
    except BenchmarkError as exc:
        raise SystemExit(f"benchmark: {exc}")
    methods_settings = settings.get("methods") or {}
    if args.epochs is not None or args.minutes is not None:  # explicit flags win over the file
        methods_settings = {name: {k: v for k, v in setting.items()
                                   if k not in ("epochs", "minutes")}
                            for name, setting in methods_settings.items()}
    try:
        result = run_benchmark(
            data_spec_of(args.data), os.path.abspath(args.out), methods=args.methods,
            protocol=args.protocol, k=args.k, train_datasets=_names(args.train_datasets),
            test_datasets=_names(args.test_datasets), train_split=args.train_split,
            test_split=args.test_split, fold_datasets=_names(args.fold_datasets),
            method_settings=methods_settings, preset=args.preset,
            epochs=args.epochs, minutes=args.minutes, seed=args.seed, folds_limit=args.folds,
            figures_on=not args.no_figures, seed_reported=settings.get("seed_reported") or {},
            redo_figures=args.redo_figures,
            results_dir=(os.path.abspath(args.results) if args.results
                         else settings.get("results")))
    except BenchmarkError as exc:
        raise SystemExit(f"benchmark: {exc}")
    print(f"\nresults: {result['table']['markdown']} and {result['table']['csv']}\n")
    with open(result["table"]["markdown"]) as f:
        print(f.read())
    return 0
