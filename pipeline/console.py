"""What ``fermtl run`` / ``fermtl demo`` print: quiet by default.

:func:`quiet_run` sends every log record (TFX/absl, Beam, TF, our own,
Python warnings) to a file under the run, and prints one line per component
instead: its name, seconds, whether it was cached and its key figure (the
summary line our component code logs). Keras still prints one line per
training epoch. ``-v`` keeps the full log on the console as well.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from typing import Dict, Optional, TextIO

_RUNNING = re.compile(r"^Component (\S+) is running\.$")
_FINISHED = re.compile(r"^Component (\S+) is finished\.$")
_CACHED = re.compile(r"^A cached execution \d+ is used\.$")
_OWN_LOGGERS = ("components", "models", "pipeline", "fermtl")
# The line that sums a component up, when it logs several.
KEY_FIGURES: Dict[str, re.Pattern] = {
    "FaceIngestion": re.compile(r"^ingestion: \d+ examples"),
    "Trainer": re.compile(r"^method \S+ \(.*\): \d+ training examples"),
}


class ComponentLines(logging.Handler):
    """Turns TFX's "Component X is running/finished" records into one line
    per component on ``out``."""

    def __init__(self, out: Optional[TextIO] = None):
        super().__init__(logging.INFO)
        self.out = out or sys.stdout
        self.current: Optional[str] = None
        self.started = 0.0
        self.cached = False
        self.figure = ""
        self.lines = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is not ours to fix
            return
        running, finished = _RUNNING.match(msg), _FINISHED.match(msg)
        if running:
            self.current, self.started = running.group(1), time.perf_counter()
            self.cached, self.figure = False, ""
            if self.out.isatty():
                self.out.write(f"{self.current} ...")
                self.out.flush()
        elif finished and finished.group(1) == self.current:
            seconds = time.perf_counter() - self.started
            tail = " (cached)" if self.cached else (f"  {self.figure}" if self.figure else "")
            start = "\r" if self.out.isatty() else ""
            self.out.write(f"{start}{self.current:<24s} {seconds:7.1f} s{tail}\n")
            self.out.flush()
            self.lines += 1
            self.current = None
        elif self.current and _CACHED.match(msg):
            self.cached = True
        elif self.current and record.name.split(".")[0] in _OWN_LOGGERS:
            line = msg.splitlines()[0][:160] if msg else ""
            wanted = KEY_FIGURES.get(self.current)
            if line and (wanted is None or wanted.match(line)):
                self.figure = line      # the last own line, or the one that sums it up


def run_log_path(pipeline_root: str) -> str:
    """``<pipeline_root>/logs/run-<UTC time>.log``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return os.path.join(pipeline_root, "logs", f"run-{stamp}.log")


@contextlib.contextmanager
def quiet_run(log_path: str, verbose: bool = False, out: Optional[TextIO] = None):
    """Log everything to ``log_path``; unless ``verbose``, console handlers
    only show errors and :class:`ComponentLines` prints the progress."""
    from absl import logging as absl_logging

    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    root = logging.getLogger()
    saved_levels = [(h, h.level) for h in root.handlers]
    saved_root, saved_absl = root.level, absl_logging.get_verbosity()
    to_file = logging.FileHandler(log_path)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    lines = ComponentLines(out)
    if not verbose:
        for handler in root.handlers:
            handler.setLevel(logging.ERROR)
        root.addHandler(lines)
    root.addHandler(to_file)
    root.setLevel(min(saved_root or logging.INFO, logging.INFO))
    absl_logging.set_verbosity(absl_logging.INFO)
    logging.captureWarnings(True)
    try:
        yield lines
    finally:
        logging.captureWarnings(False)
        absl_logging.set_verbosity(saved_absl)
        root.removeHandler(to_file)
        root.removeHandler(lines)
        to_file.close()
        root.setLevel(saved_root)
        for handler, level in saved_levels:
            handler.setLevel(level)
