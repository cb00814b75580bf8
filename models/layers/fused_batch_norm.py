"""Batch normalization of NHWC feature maps with TensorFlow's fused kernel."""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="fermtl")
class FusedBatchNorm(keras.layers.Layer):
    """Batch normalization of NHWC feature maps with TensorFlow's fused kernel.

    Same maths and variables (``gamma`` when ``scale``, ``beta``,
    ``moving_mean``, ``moving_variance``; moving averages with ``momentum``)
    as ``keras.layers.BatchNormalization(axis=-1)``, but one
    ``FusedBatchNormV3`` op forward and one backward instead of ~10
    element-wise ops each: on CPU the Keras layer cost FERSNet about 3x the
    convolution next to it (2 streams x 2 passes of full-resolution maps).
    """

    def __init__(self, momentum: float = 0.99, epsilon: float = 1e-3, scale: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.scale = bool(scale)

    def build(self, input_shape):
        c = int(input_shape[-1])
        self.gamma = (self.add_weight(name="gamma", shape=(c,), initializer="ones")
                      if self.scale else None)
        self.beta = self.add_weight(name="beta", shape=(c,), initializer="zeros")
        # "mean": under MirroredStrategy each replica's update is averaged.
        self.moving_mean = self.add_weight(name="moving_mean", shape=(c,),
                                           initializer="zeros", trainable=False,
                                           aggregation="mean")
        self.moving_variance = self.add_weight(name="moving_variance", shape=(c,),
                                               initializer="ones", trainable=False,
                                               aggregation="mean")

    def call(self, x, training=False):
        x = tf.convert_to_tensor(x)
        beta = tf.convert_to_tensor(self.beta)
        gamma = tf.convert_to_tensor(self.gamma) if self.scale else tf.ones_like(beta)
        if training:
            y, mean, var = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, epsilon=self.epsilon, is_training=True)
            # The fused kernel returns the unbiased (n / (n - 1)) batch variance;
            # Keras BN's moving variance tracks the biased one.
            n = tf.cast(tf.size(x) // tf.shape(x)[-1], var.dtype)
            var = var * (n - 1.0) / tf.maximum(n, 1.0)
            m = self.momentum
            self.moving_mean.assign(tf.convert_to_tensor(self.moving_mean) * m + mean * (1 - m))
            self.moving_variance.assign(
                tf.convert_to_tensor(self.moving_variance) * m + var * (1 - m))
            return y
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            x, gamma, beta, mean=tf.convert_to_tensor(self.moving_mean),
            variance=tf.convert_to_tensor(self.moving_variance), epsilon=self.epsilon,
            is_training=False)
        return y

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon,
                "scale": self.scale}
