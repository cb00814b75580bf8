"""models/optimizers.py: FusedAdam against Keras Adam, the learning-rate
schedules of a config against their formulas, and optimizer_from_cfg."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.optimizers import FusedAdam, learning_rate, optimizer_from_cfg


def test_fused_adam_matches_keras_adam():
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(3, 4)).astype(np.float32)
    grads = [rng.normal(size=(3, 4)).astype(np.float32) for _ in range(3)]
    out = []
    for opt in (keras.optimizers.Adam(0.01, beta_1=0.5), FusedAdam(0.01, beta_1=0.5)):
        v = keras.Variable(w0)
        opt.build([v])
        for g in grads:
            opt.apply([tf.constant(g)], [v])
        out.append(np.asarray(v))
    np.testing.assert_allclose(out[0], out[1], rtol=1e-5, atol=1e-6)


def test_fused_adam_follows_a_schedule():
    """With a schedule, each update uses the schedule's value at the step count."""
    sched = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=4)
    out = []
    for opt in (keras.optimizers.Adam(sched), FusedAdam(sched)):
        v = keras.Variable(np.ones(3, np.float32))
        opt.build([v])
        for _ in range(3):
            opt.apply([tf.constant([1.0, -2.0, 0.5])], [v])
        out.append(np.asarray(v))
    np.testing.assert_allclose(out[0], out[1], rtol=1e-5, atol=1e-6)


def _at(schedule, step):
    return float(schedule(step)) if callable(schedule) else float(schedule)


def test_cosine_schedule_matches_sgdr():
    """Loshchilov & Hutter 2017 (SGDR), Eq. 5 with eta_min = 0 and no restart:
    ``eta_t = 1/2 eta_max (1 + cos(pi T_cur / T))``, T = ``schedule_steps``; it
    stays at 0 after T."""
    lr0, total = 0.02, 37
    sched = learning_rate({"learning_rate": lr0, "lr_schedule": "cosine",
                           "schedule_steps": total})
    steps = np.random.default_rng(0).integers(0, total + 1, 20)
    got = [_at(sched, int(t)) for t in steps]
    np.testing.assert_allclose(got, 0.5 * lr0 * (1 + np.cos(np.pi * steps / total)),
                               rtol=1e-5, atol=1e-9)
    # by hand: lr0 at t = 0, lr0 / 2 half way, 0 at the end and after
    half = learning_rate({"learning_rate": 0.1, "lr_schedule": "cosine", "schedule_steps": 10})
    assert [_at(half, t) for t in (0, 5)] == pytest.approx([0.1, 0.05])
    assert _at(half, 10) == pytest.approx(0.0, abs=1e-9)
    assert _at(half, 25) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("steps", [None, 0])
def test_cosine_without_schedule_steps_is_an_error(steps):
    cfg = {"method": "baseline", "learning_rate": 0.1, "lr_schedule": "cosine"}
    if steps is not None:
        cfg["schedule_steps"] = steps
    with pytest.raises(ValueError, match="schedule_steps"):
        learning_rate(cfg)


def test_constant_exponential_and_unknown_schedules():
    """constant: the float; exponential: ``lr0 * rate ** (t / steps)`` (``lr_staircase``:
    the exponent rounded down); anything else is an error naming ``lr_schedule``."""
    assert learning_rate({"learning_rate": 0.3}) == 0.3
    assert learning_rate({"learning_rate": 0.3, "lr_schedule": "constant"}) == 0.3
    cfg = {"learning_rate": 0.05, "lr_schedule": "exponential", "lr_decay_steps": 1000,
           "lr_decay_rate": 0.5}
    steps = np.random.default_rng(1).integers(0, 5000, 10)
    np.testing.assert_allclose([_at(learning_rate(cfg), int(t)) for t in steps],
                               0.05 * 0.5 ** (steps / 1000), rtol=1e-5)
    stair = learning_rate({**cfg, "lr_staircase": True})
    assert [_at(stair, t) for t in (999, 1000, 2500)] == pytest.approx([0.05, 0.025, 0.0125])
    with pytest.raises(ValueError, match="lr_schedule"):
        learning_rate({"learning_rate": 0.1, "lr_schedule": "step"})


def test_schedule_resumes_from_the_restored_step_count(tmp_path):
    """The schedule is evaluated at ``optimizer.iterations``, which the weights
    file saves: a rebuilt optimizer restored from it continues the curve."""
    cfg = {"optimizer": "sgd", "learning_rate": 0.1, "lr_schedule": "cosine",
           "schedule_steps": 10}

    def model():
        m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        m.compile(optimizer=optimizer_from_cfg(cfg), loss="mse")
        return m

    first = model()
    first.fit(np.ones((8, 2)), np.ones((8, 1)), batch_size=2, epochs=1, verbose=0)  # 4 steps
    path = str(tmp_path / "w.weights.h5")
    first.save_weights(path)
    again = model()
    again.optimizer.build(again.trainable_variables)
    again.load_weights(path)
    assert int(again.optimizer.iterations) == 4
    assert float(again.optimizer.learning_rate) == pytest.approx(
        0.05 * (1 + np.cos(np.pi * 4 / 10)))


def test_optimizer_from_cfg():
    sgd = optimizer_from_cfg({"optimizer": "SGD", "learning_rate": 0.05, "momentum": 0.9,
                              "nesterov": True})
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.nesterov
    assert sgd.momentum == 0.9 and float(sgd.learning_rate) == pytest.approx(0.05)
    adam = optimizer_from_cfg({"optimizer": "adam", "learning_rate": 2e-3, "beta_1": 0.5})
    assert isinstance(adam, FusedAdam) and adam.beta_1 == 0.5
    cosine = optimizer_from_cfg({"optimizer": "adam", "learning_rate": 2e-3,
                                 "lr_schedule": "cosine", "schedule_steps": 100})
    assert isinstance(cosine._learning_rate, keras.optimizers.schedules.CosineDecay)
    with pytest.raises(ValueError, match="optimizer"):
        optimizer_from_cfg({"optimizer": "rmsprop", "learning_rate": 0.1})
