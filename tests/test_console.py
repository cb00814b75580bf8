"""Quiet by default: during a run the console gets one line per component
(seconds, cached, key figure) and nothing else below ERROR; the full log,
TFX/absl, Beam, our own records and Python warnings, goes to the run's log
file; -v keeps the console log too."""

import io
import logging
import warnings

import pytest
from absl import logging as absl_logging

from pipeline.console import quiet_run, run_log_path


def _fake_run():
    """What TFX's LocalDagRunner and our components log, in order."""
    absl_logging.info("Using deployment config:\n executor_specs {...}")
    absl_logging.info("Component FaceIngestion is running.")
    logging.getLogger("components.ingestion.executor").info("ingestion: 1 source(s) [...]")
    logging.getLogger("components.ingestion.executor").info(
        "ingestion: 96 examples (train 64 / eval 32; subjects 12 / 4), 0 quarantined {}")
    logging.getLogger("components.ingestion.executor").info("ingestion metric x = 3")
    logging.getLogger("apache_beam.runners").warning("a Beam warning")
    with warnings.catch_warnings():
        warnings.simplefilter("always")         # (pytest records warnings itself)
        warnings.warn("a deprecation", FutureWarning)
    absl_logging.info("Component FaceIngestion is finished.")
    absl_logging.info("Component StatisticsGen is running.")
    absl_logging.info("A cached execution 7 is used.")
    absl_logging.info("Component StatisticsGen is finished.")
    absl_logging.info("Component Pusher is running.")
    logging.getLogger("pipeline.x").info("pushed version 17")
    absl_logging.info("Component Pusher is finished.")


@pytest.fixture
def console():
    """A console log handler, as ``logging.basicConfig`` installs one."""
    text = io.StringIO()
    stream = logging.StreamHandler(text)
    logging.getLogger().addHandler(stream)
    yield text
    logging.getLogger().removeHandler(stream)


def test_one_line_per_component_and_everything_in_the_file(tmp_path, console):
    out = io.StringIO()
    path = run_log_path(str(tmp_path / "run"))
    with quiet_run(path, out=out) as lines:
        _fake_run()
    printed = out.getvalue().splitlines()
    assert lines.lines == 3 and len(printed) == 3
    assert printed[0].startswith("FaceIngestion") and printed[0].endswith(
        "ingestion: 96 examples (train 64 / eval 32; subjects 12 / 4), 0 quarantined {}")
    assert printed[1].startswith("StatisticsGen") and printed[1].endswith("(cached)")
    assert printed[2].endswith("pushed version 17") and " s " in printed[2]
    assert console.getvalue() == "", "console handlers show errors only"
    logged = open(path).read()
    for text in ("Using deployment config", "ingestion metric x = 3", "a Beam warning",
                 "a deprecation", "Component Pusher is finished."):
        assert text in logged
    assert path.startswith(str(tmp_path / "run" / "logs" / "run-"))


def test_verbose_keeps_the_console_log(tmp_path, console):
    out = io.StringIO()
    with quiet_run(str(tmp_path / "v.log"), verbose=True, out=out):
        _fake_run()
    assert out.getvalue() == "" and "Component Pusher is finished." in console.getvalue()
