"""Convolutional Feature Leaky Unit (ConvFLU) of FERSNet.

Zhao, Liu, Xiao, Lun, Lam, "Deep Multi-task Learning for Facial Expression
Recognition and Synthesis Based on Selective Feature Sharing" (FERSNet, ICPR
2020), Eqs 1-4.  The unit fuses the features of two task branches in a
GRU-like way; for the target branch ``x`` receiving from the source branch
``y`` (``*`` = 2-D convolution, ``[., .]`` = channel concatenation)::

    r      = sigmoid(W_r * [F_x, F_y] + b_r)            (Eq 1, leaky gate)
    F~     = tanh(W * (r . F_y) + U * F_x + b)          (Eq 2, candidate)
    z      = sigmoid(W_z * [F_x, F_y] + b_z)            (Eq 3, memory gate)
    F_x'   = (1 - z) . F_x + z . F~                     (Eq 4)

``r`` has the channels of ``F_y`` (it filters what leaks from the source);
``z``, ``F~`` and ``F_x'`` have the channels of ``F_x``.  All convolutions use
``"same"`` padding and stride 1.  ``kernel_size`` defaults to 1, the paper's
size (Sec. IV-A: "all the convolutional kernels are of size 3×3, with padding
1 and stride 1, except for those in ConvFLUs, where the kernel size is 1×1
with padding 0"; "same" padding of a 1 x 1 kernel is padding 0).

Deviations and reading choices: docs/methods.md, section FERSNet.
"""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["ConvFLU", "ConvFLUTransfer"]


@keras.saving.register_keras_serializable(package="fermtl")
class ConvFLU(keras.layers.Layer):
    """One-directional ConvFLU ``F_x' = FLU(F_x <- F_y)`` (FERSNet Eqs 1-4).

    Call on ``[f_x, f_y]`` (NHWC, same spatial size, channels may differ).
    Returns ``f_x'`` or, with ``return_gates=True``, ``(f_x', r, z)``.
    """

    def __init__(self, kernel_size: int = 1, return_gates: bool = False,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = int(kernel_size)
        self.return_gates = bool(return_gates)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2:
            raise ValueError("ConvFLU expects a list of two inputs [f_x, f_y]")
        shape_x, shape_y = (tuple(s) for s in input_shape)
        cx, cy = int(shape_x[-1]), int(shape_y[-1])
        k = self.kernel_size

        def kernel(name, cin, cout):
            return self.add_weight(name=name, shape=(k, k, cin, cout),
                                   initializer=self.kernel_initializer, trainable=True)

        def bias(name, c):
            return self.add_weight(name=name, shape=(c,), initializer=self.bias_initializer,
                                   trainable=True)

        self.w_r = kernel("w_r", cx + cy, cy)
        self.b_r = bias("b_r", cy)
        self.w = kernel("w", cy, cx)
        self.u = kernel("u", cx, cx)
        self.b = bias("b", cx)
        self.w_z = kernel("w_z", cx + cy, cx)
        self.b_z = bias("b_z", cx)
        self.channels_x, self.channels_y = cx, cy

    def _conv(self, x, kernel):
        return ops.conv(x, kernel, strides=1, padding="same")

    def call(self, inputs):
        f_x, f_y = inputs
        xy = ops.concatenate([f_x, f_y], axis=-1)
        r = ops.sigmoid(self._conv(xy, self.w_r) + self.b_r)
        cand = ops.tanh(self._conv(r * f_y, self.w) + self._conv(f_x, self.u) + self.b)
        z = ops.sigmoid(self._conv(xy, self.w_z) + self.b_z)
        out = (1.0 - z) * f_x + z * cand
        if self.return_gates:
            return out, r, z
        return out

    def compute_output_shape(self, input_shape):
        shape_x, shape_y = (tuple(s) for s in input_shape)
        if self.return_gates:
            return shape_x, shape_y, shape_x
        return shape_x

    def get_config(self):
        config = super().get_config()
        config.update(kernel_size=self.kernel_size, return_gates=self.return_gates,
                      kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
                      bias_initializer=keras.initializers.serialize(self.bias_initializer))
        return config


@keras.saving.register_keras_serializable(package="fermtl")
class ConvFLUTransfer(keras.layers.Layer):
    """Bidirectional FERSNet feature transfer: two independent ConvFLUs.

    ``call([f_x, f_y]) -> (f_x', f_y')`` with ``f_x' = FLU_x(f_x <- f_y)`` and
    ``f_y' = FLU_y(f_y <- f_x)``, both computed from the *pre-fusion* features
    (Eqs 1-4 applied once in each direction).  With ``return_gates=True``
    returns ``(f_x', f_y', r_x, z_x, r_y, z_y)``.
    """

    def __init__(self, kernel_size: int = 1, return_gates: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = int(kernel_size)
        self.return_gates = bool(return_gates)
        self.flu_x = ConvFLU(kernel_size, return_gates=True, name="flu_x")
        self.flu_y = ConvFLU(kernel_size, return_gates=True, name="flu_y")

    def build(self, input_shape):
        shape_x, shape_y = (tuple(s) for s in input_shape)
        self.flu_x.build([shape_x, shape_y])
        self.flu_y.build([shape_y, shape_x])

    def call(self, inputs):
        f_x, f_y = inputs
        new_x, r_x, z_x = self.flu_x([f_x, f_y])
        new_y, r_y, z_y = self.flu_y([f_y, f_x])
        if self.return_gates:
            return new_x, new_y, r_x, z_x, r_y, z_y
        return new_x, new_y

    def compute_output_shape(self, input_shape):
        shape_x, shape_y = (tuple(s) for s in input_shape)
        if self.return_gates:
            return shape_x, shape_y, shape_y, shape_x, shape_x, shape_y
        return shape_x, shape_y

    def get_config(self):
        config = super().get_config()
        config.update(kernel_size=self.kernel_size, return_gates=self.return_gates)
        return config
