"""`fermtl` command line. Each command group lives in ``pipeline/commands/<group>.py``
and exposes ``register(subparsers)``; the parser sets ``func`` for the handler."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings

# Command modules, in --help order.
COMMAND_MODULES = ("data", "run", "benchmark", "serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fermtl",
        description="Multi-task facial expression recognition on TensorFlow Extended.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"pipeline.commands.{name}").register(sub)
    return parser


def user_errors() -> tuple:
    """Exceptions that mean the user's input is wrong (not a bug): reported as
    one ``error:`` line and exit code 2 (``-v`` shows the traceback). A missing
    file (model dir, image folder) counts as one."""
    import yaml

    from components.ingestion.spec import SpecError
    from pipeline.config import ConfigError

    return ConfigError, SpecError, yaml.YAMLError, FileNotFoundError


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Before TF loads: its C++ start-up errors (cuFFT/cuDNN factories) only with -v.
    verbose = bool({"-v", "--verbose"} & set(argv))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if verbose else "3")
    if not verbose:   # google-api-core's notice, printed at import by each Google client
        warnings.filterwarnings("ignore", message="You are using a non-supported Python "
                                "version", category=FutureWarning)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except user_errors() as err:
        if args.verbose:
            raise
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
