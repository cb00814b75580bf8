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


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _tiny_fit(epochs: int):
    """A Trainer-like component: a few steps of Keras fit, as the Trainer calls it."""
    import keras
    import numpy as np

    absl_logging.info("Component Trainer is running.")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    x = np.random.default_rng(0).random((8, 3), dtype=np.float32)
    y = np.arange(8) % 2
    model.fit(x, y, batch_size=4, epochs=epochs, validation_data=(x, y), verbose=2)
    absl_logging.info("Component Trainer is finished.")


@pytest.mark.parametrize("epochs", [3, 1])
def test_training_epochs_are_one_progress_bar(tmp_path, console, capsys, epochs):
    out = io.StringIO()
    path = str(tmp_path / "t.log")
    with quiet_run(path, out=out):
        _tiny_fit(epochs)
    printed = out.getvalue().splitlines()
    assert len(printed) == epochs + 1            # one line per epoch, then the component's
    for k, line in enumerate(printed[:-1], 1):
        done = round(20 * k / epochs)
        assert line.startswith("Trainer ") and f"[{'#' * done}{'.' * (20 - done)}]" in line
        assert f"epoch {k}/{epochs}  loss " in line and "val_loss " in line
        assert "val_accuracy " in line
    # The component's line sums training up with the last epoch's figures.
    last = printed[-2].split(f"epoch {epochs}/{epochs}  ")[1]
    assert printed[-1].startswith("Trainer ") and printed[-1].endswith(
        f" s  {epochs} epochs  {last}")
    assert "Epoch" not in capsys.readouterr().out, "Keras printed to the console"
    logged = open(path).read()
    assert "2/2 - " in logged and "val_accuracy:" in logged
    assert ("Epoch 3/3" in logged) == (epochs == 3)
    import keras

    assert keras.config.is_interactive_logging_enabled(), "restored after the run"


def test_progress_bar_updates_in_place_on_a_terminal(tmp_path, console):
    out = _Terminal()
    with quiet_run(str(tmp_path / "t.log"), out=out):
        _tiny_fit(3)
    text = out.getvalue()
    assert text.count("\n") == 1 and " s  3 epochs  loss " in text    # one line in the end
    frames = text.split("\r")
    assert frames[0] == "Trainer ..."
    assert [f.split("epoch ")[1][:3] for f in frames[1:4]] == ["1/3", "2/3", "3/3"]
    assert frames[4].startswith("\x1b[KTrainer ")


def test_benchmark_progress_lines_and_a_bar_per_run(tmp_path, console):
    """``echo`` loggers (fermtl benchmark's) print outside components; a
    "[i/N] run" line starts a bar for that run's epochs; other records stay in the file."""
    out = io.StringIO()
    bench = logging.getLogger("fermtl.benchmark")
    with quiet_run(str(tmp_path / "b.log"), out=out, echo=("fermtl.benchmark",)):
        bench.info("kfold: 2 fold(s): fold0 ...")
        bench.info("[1/2] baseline on fold0")
        logging.getLogger("keras").info("Epoch 1/2")
        logging.getLogger("keras").info("4/4 - 1s - 20ms/step - accuracy: 0.5 - loss: 1.2")
        logging.getLogger("keras").info("Epoch 2/2")
        logging.getLogger("keras").info("4/4 - 1s - 20ms/step - accuracy: 0.7 - loss: 0.9")
        bench.info("baseline/fold0: accuracy 0.7000 (balanced 0.7000), 2 s")
        logging.getLogger("models.training").info("a routine line")
    printed = out.getvalue().splitlines()
    assert printed[:2] == ["kfold: 2 fold(s): fold0 ...", "[1/2] baseline on fold0"]
    assert printed[2].startswith("baseline on fold0") and "epoch 1/2" in printed[2]
    assert "epoch 2/2" in printed[3] and "loss 0.9" in printed[3]
    assert printed[4].startswith("baseline/fold0: accuracy 0.7000")
    assert len(printed) == 5 and console.getvalue() == ""
    assert "a routine line" in open(tmp_path / "b.log").read()
