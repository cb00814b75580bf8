"""What ``fermtl run`` / ``fermtl demo`` print: quiet by default.

:func:`quiet_run` sends every log record (TFX/absl, Beam, TF, our own,
Python warnings) to a file under the run, and prints one line per component
instead: its name, seconds, whether it was cached and its key figure (the
summary line our component code logs). Keras's own output (its per-epoch
lines) is sent to the log too, and training epochs show as one progress bar
(updated in place on a terminal, a plain line per epoch otherwise). ``-v``
keeps the full log on the console as well. ``fermtl benchmark`` also shows its
own progress records (``echo``: run N of M, epochs, each fold's accuracy) between
the components of its data preparation.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from typing import Dict, Optional, TextIO, Tuple

_RUNNING = re.compile(r"^Component (\S+) is running\.$")
_FINISHED = re.compile(r"^Component (\S+) is finished\.$")
_CACHED = re.compile(r"^A cached execution \d+ is used\.$")
# Keras's ProgbarLogger (verbose=2), through absl once interactive logging is off.
_EPOCH = re.compile(r"^Epoch (\d+)/(\d+)$")
_EPOCH_END = re.compile(r"^\s*\d+/\d+ - \d+s - ")
_METRIC = re.compile(r" - ([\w./]+): (\S+)")
_TASK = re.compile(r"^\[\d+/\d+\] (.+)$")     # fermtl benchmark: "[3/60] ddmtl on fold2"
BAR_WIDTH = 20
_OWN_LOGGERS = ("components", "models", "pipeline", "fermtl")
# The line that sums a component up, when it logs several.
KEY_FIGURES: Dict[str, re.Pattern] = {
    "FaceIngestion": re.compile(r"^ingestion: \d+ examples"),
    "Trainer": re.compile(r"^method \S+ \(.*\): \d+ training examples"),
}


class ComponentLines(logging.Handler):
    """Turns TFX's "Component X is running/finished" records into one line
    per component on ``out``."""

    def __init__(self, out: Optional[TextIO] = None, echo: Tuple[str, ...] = ()):
        super().__init__(logging.INFO)
        self.out = out or sys.stdout
        self.echo = echo
        self.current: Optional[str] = None
        self.started = 0.0
        self.cached = False
        self.figure = ""
        self.lines = 0
        self.epoch, self.epochs = 0, 0
        self.epoch_figures = ""
        self.task: Optional[str] = None
        self.bar_open = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is not ours to fix
            return
        running, finished = _RUNNING.match(msg), _FINISHED.match(msg)
        if running:
            self._end_bar()
            self.current, self.started = running.group(1), time.perf_counter()
            self.cached, self.figure = False, ""
            self.epoch, self.epochs = 0, 0
            if self.out.isatty():
                self.out.write(f"{self.current} ...")
                self.out.flush()
        elif finished and finished.group(1) == self.current:
            seconds = time.perf_counter() - self.started
            if not self.figure and self.epoch:     # training: its last epoch's figures
                self.figure = f"{self.epoch} epochs  {self.epoch_figures}".rstrip()
            tail = " (cached)" if self.cached else (f"  {self.figure}" if self.figure else "")
            start = "\r\x1b[K" if self.out.isatty() else ""
            self.out.write(f"{start}{self.current:<24s} {seconds:7.1f} s{tail}\n")
            self.out.flush()
            self.lines += 1
            self.current = None
        elif self.current and _CACHED.match(msg):
            self.cached = True
        elif (self.current or self.task) and _EPOCH.match(msg):
            self.epochs = int(_EPOCH.match(msg).group(2))
        elif (self.current or self.task) and _EPOCH_END.match(msg):
            self.epoch += 1
            self.epochs = max(self.epochs, self.epoch)
            self._progress(dict(_METRIC.findall(msg)))
        elif self.current and record.name.split(".")[0] in _OWN_LOGGERS:
            line = msg.splitlines()[0][:160] if msg else ""
            wanted = KEY_FIGURES.get(self.current)
            if line and (wanted is None or wanted.match(line)):
                self.figure = line      # the last own line, or the one that sums it up
        elif self.current is None and record.name in self.echo and msg:
            self._end_bar()
            self.out.write(msg.splitlines()[0][:200] + "\n")
            self.out.flush()
            task = _TASK.match(msg)
            if task:                # a benchmark run: its epochs show as a bar
                self.task, self.epoch, self.epochs = task.group(1), 0, 0

    def _end_bar(self) -> None:
        """Ends a benchmark run's in-place bar before the next line."""
        if self.bar_open:
            self.out.write("\n")
            self.bar_open = False

    def _progress(self, metrics: Dict[str, str]) -> None:
        """The training progress bar: epochs done, loss and a validation figure."""
        done = round(BAR_WIDTH * self.epoch / self.epochs)
        shown = ["loss"] + [k for k in ("val_loss",) if k in metrics]
        shown += [k for k in metrics if k.startswith("val_") and "acc" in k][:1]
        self.epoch_figures = "  ".join(f"{k} {metrics[k]}" for k in shown if k in metrics)
        label = self.current or self.task
        line = (f"{label:<24s} [{'#' * done}{'.' * (BAR_WIDTH - done)}] "
                f"epoch {self.epoch}/{self.epochs}  {self.epoch_figures}".rstrip())
        if self.out.isatty():
            self.out.write(f"\r{line}\x1b[K")
            self.bar_open = self.current is None
        else:
            self.out.write(line + "\n")
        self.out.flush()


def run_log_path(pipeline_root: str) -> str:
    """``<pipeline_root>/logs/run-<UTC time>.log``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return os.path.join(pipeline_root, "logs", f"run-{stamp}.log")


@contextlib.contextmanager
def quiet_run(log_path: str, verbose: bool = False, out: Optional[TextIO] = None,
              echo: Tuple[str, ...] = ()):
    """Log everything to ``log_path``; unless ``verbose``, console handlers
    only show errors and :class:`ComponentLines` prints the progress (and the
    records of the loggers named in ``echo``, outside components)."""
    from absl import logging as absl_logging

    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    root = logging.getLogger()
    saved_levels = [(h, h.level) for h in root.handlers]
    saved_root, saved_absl = root.level, absl_logging.get_verbosity()
    to_file = logging.FileHandler(log_path)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    lines = ComponentLines(out, echo)
    if not verbose:
        for handler in root.handlers:
            handler.setLevel(logging.ERROR)
        root.addHandler(lines)
    root.addHandler(to_file)
    root.setLevel(min(saved_root or logging.INFO, logging.INFO))
    absl_logging.set_verbosity(absl_logging.INFO)
    logging.captureWarnings(True)
    import keras    # (after the handlers: what its import logs goes to the file)

    interactive = keras.config.is_interactive_logging_enabled()
    keras.config.disable_interactive_logging()    # Keras's prints become log records
    try:
        yield lines
    finally:
        logging.captureWarnings(False)
        if interactive:
            keras.config.enable_interactive_logging()
        absl_logging.set_verbosity(saved_absl)
        root.removeHandler(to_file)
        root.removeHandler(lines)
        to_file.close()
        root.setLevel(saved_root)
        for handler, level in saved_levels:
            handler.setLevel(level)
