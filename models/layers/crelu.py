"""Concatenated ReLU.

Seed: Shang et al., "Understanding and Improving Convolutional Neural Networks
via Concatenated Rectified Linear Units" (ICML 2016), Eq 1 (as used in the
seed multi-task FER networks):  ``CReLU(x) = [ReLU(x), ReLU(-x)]`` concatenated
along ``axis`` (the channel count doubles).
"""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["CReLU"]


@keras.saving.register_keras_serializable(package="fermtl")
class CReLU(keras.layers.Layer):
    """``concat([relu(x), relu(-x)], axis)``; output has twice the size on ``axis``."""

    def __init__(self, axis: int = -1, **kwargs):
        super().__init__(**kwargs)
        self.axis = int(axis)

    def call(self, inputs):
        return ops.concatenate([ops.relu(inputs), ops.relu(-inputs)], axis=self.axis)

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        if shape[self.axis] is not None:
            shape[self.axis] = 2 * shape[self.axis]
        return tuple(shape)

    def get_config(self):
        config = super().get_config()
        config.update(axis=self.axis)
        return config
