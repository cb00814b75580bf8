"""Gradient reversal layer and the DANN lambda schedule.

Seed: Ganin & Lempitsky, "Unsupervised Domain Adaptation by
Backpropagation" (ICML 2015), Eq 13 (pseudo-function ``R_lambda``):
``R(x) = x`` in the forward pass and ``dR/dx = -lambda I`` in the backward
pass; and Sec. 5 (schedule) ``lambda_p = 2 / (1 + exp(-gamma p)) - 1`` with
``gamma = 10`` and ``p`` the training progress in [0, 1].  Used by the
invariant-representation (domain-adversarial) branch of the multi-task
networks: in the trace-norm method it turns Hu et al.'s (ECCV 2018) Eq 4,
``max_Theta min_Phi l(g_Phi(Z), y)``, into one minimisation (``models/tracenorm``).
"""

from __future__ import annotations

import math
from typing import Iterable

import keras
import tensorflow as tf

__all__ = ["GradientReversal", "DANNLambdaSchedule", "dann_lambda"]


def dann_lambda(progress: float, gamma: float = 10.0, max_lambda: float = 1.0) -> float:
    """``max_lambda * (2 / (1 + exp(-gamma * p)) - 1)`` with ``p`` clipped to [0, 1]."""
    p = min(max(float(progress), 0.0), 1.0)
    return float(max_lambda) * (2.0 / (1.0 + math.exp(-float(gamma) * p)) - 1.0)


@keras.saving.register_keras_serializable(package="fermtl")
class GradientReversal(keras.layers.Layer):
    """Identity forward, ``-lambda * grad`` backward (Ganin & Lempitsky 2015, Eq 13).

    ``lambda`` lives in ``self.lambda_var``, a non-trainable scalar Keras
    variable (backed by a ``tf.Variable``, created in ``__init__``) that is read
    at run time, so ``layer.lambda_var.assign(x)`` -- e.g. from
    :class:`DANNLambdaSchedule` -- takes effect inside already-traced
    ``tf.function``s / ``model.fit``.  ``lambda_`` in the config is the initial
    value; the current value is saved with the weights.
    """

    def __init__(self, lambda_: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.lambda_ = float(lambda_)
        self.lambda_var = self.add_weight(
            name="lambda", shape=(), dtype="float32",
            initializer=keras.initializers.Constant(self.lambda_), trainable=False)
        self.built = True

    def call(self, inputs):
        x = tf.convert_to_tensor(inputs)
        lam = tf.convert_to_tensor(self.lambda_var)  # read outside the custom-gradient fn

        @tf.custom_gradient
        def _reverse(t):
            def grad(dy):
                return -tf.cast(lam, dy.dtype) * dy

            return tf.identity(t), grad

        return _reverse(x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(lambda_=self.lambda_)
        return config


class DANNLambdaSchedule(keras.callbacks.Callback):
    """Sets ``lambda_var`` of GradientReversal layer(s) to the DANN schedule.

    Before every training batch, ``p = min(step / total_steps, 1)`` where
    ``step`` counts the batches already run by this callback (across epochs
    and ``fit`` calls, starting at ``initial_step``) and
    ``lambda_p = max_lambda * (2 / (1 + exp(-gamma p)) - 1)``.
    With ``steps_per_execution > 1`` Keras calls batch hooks once per
    execution; the step counter then advances by that many steps.
    """

    def __init__(self, layer_or_layers, total_steps: int, gamma: float = 10.0,
                 max_lambda: float = 1.0, initial_step: int = 0):
        super().__init__()
        if isinstance(layer_or_layers, keras.layers.Layer):
            layers: Iterable = [layer_or_layers]
        else:
            layers = list(layer_or_layers)
        for layer in layers:
            if not hasattr(layer, "lambda_var"):
                raise TypeError(f"{layer!r} has no `lambda_var` (not a GradientReversal)")
        if int(total_steps) <= 0:
            raise ValueError("total_steps must be positive")
        self.layers_ = list(layers)
        self.total_steps = int(total_steps)
        self.gamma = float(gamma)
        self.max_lambda = float(max_lambda)
        self.step = int(initial_step)
        self._epoch_base = self.step

    @property
    def progress(self) -> float:
        return min(self.step / self.total_steps, 1.0)

    def current_lambda(self) -> float:
        return dann_lambda(self.progress, self.gamma, self.max_lambda)

    def _apply(self):
        value = self.current_lambda()
        for layer in self.layers_:
            layer.lambda_var.assign(value)

    def on_train_begin(self, logs=None):
        self._epoch_base = self.step
        self._apply()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_base = self.step

    def on_train_batch_begin(self, batch, logs=None):
        self._apply()

    def on_train_batch_end(self, batch, logs=None):
        # ``batch`` is the index (within the epoch) of the last step just run;
        # with steps_per_execution > 1 it advances by that many steps.
        self.step = self._epoch_base + int(batch) + 1
