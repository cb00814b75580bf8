"""GoogLeNet-style Inception module of the multi-dataset FER network.

Seed: Yang et al. (multi-dataset facial expression network with center loss /
MD loss), whose backbone stacks Inception modules of Szegedy et al., "Going
Deeper with Convolutions" (CVPR 2015), Fig. 2(b) / Table 1.  Output::

    concat([ relu(conv1x1(x)),                                  # filters_1x1
             relu(conv3x3(relu(conv1x1(x)))),                   # 3x3_reduce -> 3x3
             relu(conv5x5(relu(conv1x1(x)))),                   # 5x5_reduce -> 5x5
             relu(conv1x1(maxpool3x3_stride1(x))) ], axis=-1)   # pool_proj

All convolutions stride 1, ``"same"`` padding, with bias.  Output channels =
``filters_1x1 + filters_3x3 + filters_5x5 + filters_pool_proj``.
"""

from __future__ import annotations

import keras
from keras import layers, ops

__all__ = ["InceptionModule"]


@keras.saving.register_keras_serializable(package="fermtl")
class InceptionModule(keras.layers.Layer):
    """Four-branch Inception module (1x1 | 1x1->3x3 | 1x1->5x5 | pool->1x1), NHWC."""

    def __init__(self, filters_1x1: int, filters_3x3_reduce: int, filters_3x3: int,
                 filters_5x5_reduce: int, filters_5x5: int, filters_pool_proj: int,
                 activation="relu", kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.filters_1x1 = int(filters_1x1)
        self.filters_3x3_reduce = int(filters_3x3_reduce)
        self.filters_3x3 = int(filters_3x3)
        self.filters_5x5_reduce = int(filters_5x5_reduce)
        self.filters_5x5 = int(filters_5x5)
        self.filters_pool_proj = int(filters_pool_proj)
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

        def conv(filters, size, name):
            return layers.Conv2D(filters, size, padding="same", activation=self.activation,
                                 kernel_initializer=self.kernel_initializer, name=name)

        self.branch1 = conv(self.filters_1x1, 1, "b1_1x1")
        self.branch3_reduce = conv(self.filters_3x3_reduce, 1, "b3_reduce")
        self.branch3 = conv(self.filters_3x3, 3, "b3_3x3")
        self.branch5_reduce = conv(self.filters_5x5_reduce, 1, "b5_reduce")
        self.branch5 = conv(self.filters_5x5, 5, "b5_5x5")
        self.pool = layers.MaxPooling2D(3, strides=1, padding="same", name="pool")
        self.pool_proj = conv(self.filters_pool_proj, 1, "pool_proj")

    def build(self, input_shape):
        shape = tuple(input_shape)
        self.branch1.build(shape)
        self.branch3_reduce.build(shape)
        self.branch3.build(shape[:-1] + (self.filters_3x3_reduce,))
        self.branch5_reduce.build(shape)
        self.branch5.build(shape[:-1] + (self.filters_5x5_reduce,))
        self.pool_proj.build(shape)

    def call(self, inputs):
        b1 = self.branch1(inputs)
        b3 = self.branch3(self.branch3_reduce(inputs))
        b5 = self.branch5(self.branch5_reduce(inputs))
        bp = self.pool_proj(self.pool(inputs))
        return ops.concatenate([b1, b3, b5, bp], axis=-1)

    def compute_output_shape(self, input_shape):
        out = (self.filters_1x1 + self.filters_3x3 + self.filters_5x5 + self.filters_pool_proj)
        return tuple(input_shape)[:-1] + (out,)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters_1x1=self.filters_1x1, filters_3x3_reduce=self.filters_3x3_reduce,
            filters_3x3=self.filters_3x3, filters_5x5_reduce=self.filters_5x5_reduce,
            filters_5x5=self.filters_5x5, filters_pool_proj=self.filters_pool_proj,
            activation=keras.activations.serialize(self.activation),
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
        return config
