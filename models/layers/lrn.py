"""Local Response Normalization across channels (AlexNet style).

Seed: Krizhevsky et al. (2012), Sec. 3.3, as used after every conv layer of
DDMTL (Zheng, Wang, Ji, Zong, Wong, Lai, Lv, "Discriminative deep multi-task
learning for facial expression recognition", 2020, Sec. 4; the paper gives no
LRN constants, so AlexNet's are the defaults)::

    b^i_{x,y} = a^i_{x,y} / (k + alpha * sum_{j=max(0, i-n)}^{min(C-1, i+n)} (a^j_{x,y})^2)^beta

with ``n = depth_radius`` (window of ``2n + 1`` channels), ``k = bias``.
``alpha`` multiplies the plain sum, as in AlexNet and
``tf.nn.local_response_normalization`` (Caffe's ACROSS_CHANNELS mode divides
alpha by the window size; pass ``alpha / (2n + 1)`` to reproduce it).
Defaults: AlexNet's ``n = 2`` (5 channels), ``alpha = 1e-4``, ``beta = 0.75``
with ``k = 1`` (AlexNet used ``k = 2``).  Inputs are NHWC (channels last);
computed in float32 unless the input is float16.
"""

from __future__ import annotations

import keras
import tensorflow as tf

__all__ = ["LocalResponseNormalization"]


@keras.saving.register_keras_serializable(package="fermtl")
class LocalResponseNormalization(keras.layers.Layer):
    """``b = a / (bias + alpha * sum_{|j-i|<=depth_radius} a_j^2) ** beta`` over channels."""

    def __init__(self, depth_radius: int = 2, bias: float = 1.0, alpha: float = 1e-4,
                 beta: float = 0.75, **kwargs):
        super().__init__(**kwargs)
        self.depth_radius = int(depth_radius)
        self.bias = float(bias)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def call(self, inputs):
        x = tf.convert_to_tensor(inputs)
        if x.shape.rank != 4:
            raise ValueError(f"LocalResponseNormalization expects NHWC input, got {x.shape}")
        compute = x if x.dtype in (tf.float32, tf.float16) else tf.cast(x, tf.float32)
        y = tf.nn.local_response_normalization(
            compute, depth_radius=self.depth_radius, bias=self.bias, alpha=self.alpha,
            beta=self.beta)
        return tf.cast(y, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(depth_radius=self.depth_radius, bias=self.bias, alpha=self.alpha,
                      beta=self.beta)
        return config
