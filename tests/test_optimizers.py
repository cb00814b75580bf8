"""models/optimizers.py: FusedAdam against Keras Adam, and optimizer_from_cfg."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.optimizers import FusedAdam, optimizer_from_cfg


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


def test_optimizer_from_cfg():
    sgd = optimizer_from_cfg({"optimizer": "SGD", "learning_rate": 0.05, "momentum": 0.9,
                              "nesterov": True})
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.nesterov
    assert sgd.momentum == 0.9 and float(sgd.learning_rate) == pytest.approx(0.05)
    adam = optimizer_from_cfg({"optimizer": "adam", "learning_rate": 2e-3, "beta_1": 0.5})
    assert isinstance(adam, FusedAdam) and adam.beta_1 == 0.5
    with pytest.raises(ValueError, match="optimizer"):
        optimizer_from_cfg({"optimizer": "rmsprop", "learning_rate": 0.1})
