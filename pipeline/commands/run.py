"""`fermtl demo`, `fermtl run`, `fermtl report`: run the TFX pipeline and read its results."""

from __future__ import annotations

import logging
import os
import time

from pipeline.config import CONFIG_DIR, load_config, preflight

log = logging.getLogger("fermtl")


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on the embedded synthetic faces")
    p.add_argument("--root", default="runs/demo", help="pipeline root (default runs/demo)")
    p.add_argument("--method", help="method name (default: the demo config's)")
    p.add_argument("--no-cache", action="store_true", help="do not reuse cached component runs")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="run the pipeline from a run config YAML")
    p.add_argument("--config", required=True, help="run config (see pipeline/configs/)")
    p.add_argument("--method", help="override method.name")
    p.add_argument("--preset", help="override method.preset (small | paper)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config value, e.g. train.epochs=2 or "
                        "data.sources.0.path=DIR (YAML value; numbers index lists)")
    p.add_argument("--fes-augment", action="store_true",
                   help="FERSNet: after training, synthesize every expression for each "
                        "training face (FES) and fine-tune the recognition stream on the "
                        "balanced set (= --set method.overrides.fes_augment=true)")
    p.add_argument("--no-cache", action="store_true")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="write a Markdown report with TFMA slices and plots")
    p.add_argument("root", help="pipeline root of a run (e.g. runs/demo)")
    p.add_argument("--out", help="output folder (default ROOT/report)")
    p.set_defaults(func=cmd_report)


def _overrides(args) -> dict:
    out: dict = {}
    if getattr(args, "method", None):
        out.setdefault("method", {})["name"] = args.method
    if getattr(args, "preset", None):
        out.setdefault("method", {})["preset"] = args.preset
    if getattr(args, "fes_augment", False):
        out.setdefault("method", {}).setdefault("overrides", {})["fes_augment"] = True
    return out   # --set items go to load_config(sets=...): they may index lists


def run_and_report(config, enable_cache: bool, verbose: bool = False) -> int:
    from pipeline.console import quiet_run, run_log_path

    preflight(config)     # user mistakes end here, before any component runs
    start = time.time()
    log_path = run_log_path(config.pipeline_root)
    print(f"pipeline {config.name}: full log in {log_path}{'' if verbose else ' (-v prints it)'}")
    with quiet_run(log_path, verbose):
        from pipeline.pipeline import run_local   # (TFX and Beam log while they import)
        from pipeline.report import latest_push, write_report

        log.info("pipeline %s: root %s, method %s (%s)", config.name, config.pipeline_root,
                 config.method["name"], config.method.get("preset"))
        run_local(config, enable_cache=enable_cache)
        report = write_report(config.pipeline_root)
        push = latest_push(config.metadata_path)
    print(f"\npipeline finished in {time.time() - start:.0f} s")
    if push["pushed"]:
        print(f"model pushed to: {push['destination']}")
    else:
        print("model NOT pushed: the Evaluator did not bless it")
    print(f"report: {report}\n")
    with open(report) as f:
        print(f.read())
    return 0


def cmd_demo(args) -> int:
    overrides = {"pipeline_root": os.path.abspath(args.root)}
    if args.method:
        overrides["method"] = {"name": args.method}
    config = load_config(os.path.join(CONFIG_DIR, "demo.yaml"), overrides=overrides)
    return run_and_report(config, enable_cache=not args.no_cache, verbose=args.verbose)


def cmd_run(args) -> int:
    config = load_config(args.config, overrides=_overrides(args), sets=args.set)
    return run_and_report(config, enable_cache=not args.no_cache, verbose=args.verbose)


def cmd_report(args) -> int:
    from pipeline.report import write_report

    path = write_report(os.path.abspath(args.root), args.out)
    print(f"report: {path}")
    with open(path) as f:
        print(f.read())
    return 0
