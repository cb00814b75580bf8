"""Optimizers and learning-rate schedules built from a method's config.

* :class:`FusedAdam` -- Keras Adam whose update is one fused op per variable.
* :func:`learning_rate` -- ``cfg["learning_rate"]`` under ``cfg["lr_schedule"]``
  (absent: ``constant``), as a float or a Keras ``LearningRateSchedule``:

  - ``constant``: the float itself;
  - ``cosine``: ``keras.optimizers.schedules.CosineDecay`` to 0 over
    ``cfg["schedule_steps"]`` optimizer steps, ``lr_t = lr_0 (1 + cos(pi t / T)) / 2``
    (Loshchilov & Hutter 2017, SGDR without restarts);
  - ``exponential``: ``ExponentialDecay``, ``lr_t = lr_0 * lr_decay_rate **
    (t / lr_decay_steps)`` (``lr_staircase``: the exponent rounded down).

  ``cfg["schedule_steps"]`` is the total number of optimizer steps of the
  planned fit (all epochs, not the remainder of a resumed one); the training
  core sets it before ``method.build(cfg)``. A schedule is evaluated at the
  optimizer's ``iterations``, which checkpoints save, so a resumed fit
  continues the curve where it stopped.
* :func:`optimizer_from_cfg` -- SGD or Adam (``cfg["optimizer"]``) at that
  learning rate.
"""

from __future__ import annotations

from typing import Any, Dict, Union

import keras
import tensorflow as tf

LR_SCHEDULES = ("constant", "cosine", "exponential")
Schedule = keras.optimizers.schedules.LearningRateSchedule


@keras.saving.register_keras_serializable(package="fermtl")
class FusedAdam(keras.optimizers.Adam):
    """Keras Adam whose update is one ``ResourceApplyAdam`` op per variable
    (same maths as ``keras.optimizers.Adam``; amsgrad and multi-replica
    strategies fall back to the Keras implementation).  Keras' per-variable
    Adam graph is ~40 ops; with ~150 variables FERSNet's train step spent
    ~40 % of its tracing and graph optimisation time there."""

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if (self.amsgrad or tf.distribute.has_strategy()
                or tf.distribute.get_strategy().num_replicas_in_sync > 1):
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        step = tf.cast(tf.convert_to_tensor(self.iterations) + 1, tf.float32)
        b1, b2 = float(self.beta_1), float(self.beta_2)
        b1_power, b2_power = tf.pow(b1, step), tf.pow(b2, step)
        lr = tf.cast(learning_rate, tf.float32)
        for grad, var in zip(grads, trainable_variables):
            if grad is None:
                continue
            idx = self._get_variable_index(var)
            m, v = self._momentums[idx], self._velocities[idx]
            tf.raw_ops.ResourceApplyAdam(
                var=var.value.handle, m=m.value.handle, v=v.value.handle,
                beta1_power=b1_power, beta2_power=b2_power, lr=lr, beta1=b1, beta2=b2,
                epsilon=float(self.epsilon), grad=tf.cast(grad, var.dtype))


def learning_rate(cfg: Dict[str, Any]) -> Union[float, Schedule]:
    """``cfg["learning_rate"]`` under ``cfg.get("lr_schedule", "constant")`` (module
    docstring); raises ``ValueError`` for an unknown schedule, and for ``cosine``
    without a positive ``cfg["schedule_steps"]``."""
    who = cfg.get("method", "method")
    kind = cfg.get("lr_schedule", "constant")
    lr = float(cfg["learning_rate"])
    if kind == "constant":
        return lr
    if kind == "cosine":
        steps = int(cfg.get("schedule_steps") or 0)
        if steps <= 0:
            raise ValueError(
                f"{who}: lr_schedule 'cosine' decays over the fit's optimizer steps, but "
                f"cfg['schedule_steps'] is {cfg.get('schedule_steps')!r}; the training core "
                "must set it (epochs x steps per epoch) before method.build(cfg)")
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps)
    if kind == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(
            lr, decay_steps=int(cfg["lr_decay_steps"]), decay_rate=float(cfg["lr_decay_rate"]),
            staircase=bool(cfg.get("lr_staircase", False)))
    raise ValueError(f"{who}: lr_schedule must be one of {LR_SCHEDULES}, got {kind!r}")


def optimizer_from_cfg(cfg: Dict[str, Any]) -> keras.optimizers.Optimizer:
    """``cfg["optimizer"]`` at :func:`learning_rate` ``(cfg)``: ``sgd`` (with
    ``momentum``, ``nesterov``) or ``adam`` (:class:`FusedAdam`, ``beta_1``)."""
    name = cfg["optimizer"].lower()
    lr = learning_rate(cfg)
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=cfg.get("momentum", 0.0),
                                    nesterov=bool(cfg.get("nesterov", False)))
    if name == "adam":
        return FusedAdam(lr, beta_1=cfg.get("beta_1", 0.9))
    raise ValueError(f"{cfg.get('method', 'method')}: unknown optimizer "
                     f"{cfg['optimizer']!r} (sgd | adam)")
