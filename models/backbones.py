"""Convolutional backbones shared by the methods (Keras functional API).

Each builder takes a Keras tensor (``image`` ``[B, S, S, C]``) and returns the
pooled feature tensor ``[B, D]``; the caller adds its heads.

* :func:`cifar_resnet` — He et al., "Deep Residual Learning for Image
  Recognition", CVPR 2016, Sec. 4.2 (the CIFAR-10 networks): a 3x3 stem with
  ``width`` filters, three stages of ``n`` BasicBlocks with ``width``,
  ``2*width``, ``4*width`` filters (stride 2 at the start of stages 2 and 3),
  global average pooling; ``depth = 6n + 2``. Shortcuts are option A
  (identity; subsampled and zero-padded when the shape changes), so that
  ResNet-32 has 0.46M and ResNet-110 1.7M parameters as in the paper's
  Table 6. Used by SJMT (Pons & Masip 2018).
* :func:`resnet34` — He et al. 2016, Table 1 (34-layer): 7x7/2 stem (+3x3/2
  max-pool), BasicBlocks ``[3, 4, 6, 3]`` with ``width * (1, 2, 4, 8)``
  filters, option-B projection shortcuts (1x1 conv) where the shape changes.
  Every 3x3/7x7 convolution is named ``f"{name}_conv{k}"`` (k = 0 for the
  stem, 1..32 for the blocks in order), so two task networks built with
  different ``name`` have identically shaped kernels that pair by ``k``
  (trace-norm MTL, Yang & Hospedales 2017); :func:`conv_layers` returns them
  in order. The 3 projection shortcuts are named ``f"{name}_proj{s}"`` and are
  *not* counted: ``len(conv_layers(...)) == 33``.
* :func:`vgg_small` — a small VGG-style CNN (Simonyan & Zisserman 2015:
  stacks of 3x3 conv + BN + ReLU, 2x2 max-pool per block) for the single-task
  baseline.
"""

from __future__ import annotations

import re
from typing import Iterable, List, Optional, Sequence, Union

import keras
from keras import layers


def _regularizer(weight_decay: float):
    return keras.regularizers.L2(weight_decay) if weight_decay else None


@keras.saving.register_keras_serializable(package="fermtl")
class ZeroPadShortcut(layers.Layer):
    """Option-A shortcut of He et al. 2016 (Sec. 4.2): subsample the identity by
    ``stride`` and zero-pad the channel axis to ``filters``. Parameter free."""

    def __init__(self, filters: int, stride: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.stride = int(stride)

    def call(self, x):
        if self.stride > 1:
            x = x[:, ::self.stride, ::self.stride, :]
        extra = self.filters - x.shape[-1]
        if extra > 0:
            x = keras.ops.pad(x, [[0, 0], [0, 0], [0, 0], [extra // 2, extra - extra // 2]])
        return x

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        s = self.stride
        h = None if h is None else (h + s - 1) // s
        w = None if w is None else (w + s - 1) // s
        return (b, h, w, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "stride": self.stride}


@keras.saving.register_keras_serializable(package="fermtl")
class PerImageStandardization(layers.Layer):
    """``(x - mean) / max(std, 1/sqrt(N))`` per image (``tf.image.per_image_standardization``):
    removes each face's overall brightness and contrast (skin tone, lighting),
    nuisances a briefly trained network otherwise spends its first steps on."""

    def call(self, x):
        axes = list(range(1, len(x.shape)))
        mean = keras.ops.mean(x, axis=axes, keepdims=True)
        std = keras.ops.std(x, axis=axes, keepdims=True)
        n = 1
        for d in x.shape[1:]:
            n *= d
        return (x - mean) / keras.ops.maximum(std, 1.0 / float(n) ** 0.5)


def _conv(x, filters, kernel, stride, name, weight_decay):
    return layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                         kernel_initializer="he_normal",
                         kernel_regularizer=_regularizer(weight_decay), name=name)(x)


def _bn(x, name):
    return layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)(x)


# --------------------------------------------------------------------------- #
# CIFAR ResNet (He et al. 2016, Sec. 4.2)
# --------------------------------------------------------------------------- #
def cifar_resnet(inputs, depth: int = 32, width: int = 16, name: str = "resnet",
                 weight_decay: float = 0.0, pool_grid: int = 1, stem_stride: int = 1):
    """CIFAR-style ResNet-``depth`` (``depth = 6n + 2``); returns the globally
    average-pooled ``[B, 4 * width]`` features (the paper's network).

    ``pool_grid > 1`` average-pools the last feature map to a ``g x g`` grid
    and flattens it instead (``[B, 4 * width * g * g]``): the features keep a
    coarse face layout (brows vs. mouth), which very shallow, briefly trained
    networks (the ``small`` presets) otherwise have to learn from the
    receptive field alone. ``stem_stride=2`` makes the stem a strided conv
    (a 48 px face then costs what a 24 px one does; CPU presets only)."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"cifar_resnet: depth must be 6n + 2 (20, 32, 44, 56, 110 ...), "
                         f"got {depth}")
    n = (depth - 2) // 6
    x = _conv(inputs, width, 3, stem_stride, f"{name}_stem_conv", weight_decay)
    x = _bn(x, f"{name}_stem_bn")
    x = layers.ReLU(name=f"{name}_stem_relu")(x)
    for stage in range(3):
        filters = width * 2 ** stage
        for block in range(n):
            stride = 2 if stage > 0 and block == 0 else 1
            p = f"{name}_s{stage + 1}b{block + 1}"
            shortcut = x
            if stride != 1 or x.shape[-1] != filters:
                shortcut = ZeroPadShortcut(filters, stride, name=f"{p}_shortcut")(x)
            y = _conv(x, filters, 3, stride, f"{p}_conv1", weight_decay)
            y = _bn(y, f"{p}_bn1")
            y = layers.ReLU(name=f"{p}_relu1")(y)
            y = _conv(y, filters, 3, 1, f"{p}_conv2", weight_decay)
            y = _bn(y, f"{p}_bn2")
            x = layers.Add(name=f"{p}_add")([shortcut, y])
            x = layers.ReLU(name=f"{p}_out")(x)
    if pool_grid > 1:
        x = layers.AveragePooling2D(max(x.shape[1] // pool_grid, 1), name=f"{name}_pool")(x)
        return layers.Flatten(name=f"{name}_flatten")(x)
    return layers.GlobalAveragePooling2D(name=f"{name}_pool")(x)


# --------------------------------------------------------------------------- #
# ResNet-34 (He et al. 2016, Table 1)
# --------------------------------------------------------------------------- #
RESNET34_BLOCKS = (3, 4, 6, 3)


def resnet34(inputs, width: int = 64, name: str = "resnet34", pool_size: Optional[int] = None,
             small_input: bool = False, weight_decay: float = 0.0):
    """ResNet-34 features. ``pool_size=None`` ends with global average pooling
    (``[B, 8 * width]``, i.e. 512 at ``width=64``); an int ends with
    ``AveragePooling2D(pool_size)`` + flatten instead (the paper's 7x7 pool at
    224 px). ``small_input=True`` replaces the 7x7/2 stem + max-pool with a
    3x3/1 stem for 32-64 px faces (still named ``{name}_conv0``).

    Layer names: ``{name}_conv{k}`` (k = 0..32) for the 33 main convolutions,
    ``{name}_bn{k}`` for their batch norms, ``{name}_proj{s}`` /
    ``{name}_projbn{s}`` for the projection shortcuts of stages s = 2, 3, 4.
    """
    if small_input:
        x = _conv(inputs, width, 3, 1, f"{name}_conv0", weight_decay)
    else:
        x = _conv(inputs, width, 7, 2, f"{name}_conv0", weight_decay)
    x = _bn(x, f"{name}_bn0")
    x = layers.ReLU(name=f"{name}_relu0")(x)
    if not small_input:
        x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"{name}_maxpool")(x)
    k = 1
    for stage, blocks in enumerate(RESNET34_BLOCKS):
        filters = width * 2 ** stage
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            shortcut = x
            if stride != 1 or x.shape[-1] != filters:
                shortcut = _conv(x, filters, 1, stride, f"{name}_proj{stage + 1}", weight_decay)
                shortcut = _bn(shortcut, f"{name}_projbn{stage + 1}")
            y = _conv(x, filters, 3, stride, f"{name}_conv{k}", weight_decay)
            y = _bn(y, f"{name}_bn{k}")
            y = layers.ReLU(name=f"{name}_relu{k}")(y)
            y = _conv(y, filters, 3, 1, f"{name}_conv{k + 1}", weight_decay)
            y = _bn(y, f"{name}_bn{k + 1}")
            x = layers.Add(name=f"{name}_add{k + 1}")([shortcut, y])
            x = layers.ReLU(name=f"{name}_relu{k + 1}")(x)
            k += 2
    if pool_size is None:
        return layers.GlobalAveragePooling2D(name=f"{name}_pool")(x)
    x = layers.AveragePooling2D(pool_size, name=f"{name}_pool")(x)
    return layers.Flatten(name=f"{name}_flatten")(x)


def conv_layers(model_or_layers: Union[keras.Model, Iterable[layers.Layer]],
                prefix: str) -> List[layers.Conv2D]:
    """The ``{prefix}_conv{k}`` layers of a :func:`resnet34` trunk, ordered by k
    (projection shortcuts excluded). Pair two task networks' kernels with
    ``zip(conv_layers(m, "task0"), conv_layers(m, "task1"))``."""
    found = getattr(model_or_layers, "layers", model_or_layers)
    pattern = re.compile(rf"^{re.escape(prefix)}_conv(\d+)$")
    hits = []
    for layer in found:
        m = pattern.match(layer.name)
        if m and isinstance(layer, layers.Conv2D):
            hits.append((int(m.group(1)), layer))
    return [layer for _, layer in sorted(hits, key=lambda t: t[0])]


# --------------------------------------------------------------------------- #
# Small VGG-style CNN
# --------------------------------------------------------------------------- #
def vgg_small(inputs, filters: Sequence[int] = (32, 64, 128), convs_per_block: int = 2,
              dense: Sequence[int] = (256,), dropout: float = 0.5, name: str = "vgg",
              weight_decay: float = 0.0, global_pool: bool = False):
    """VGG-style features: per block ``convs_per_block`` x (3x3 conv, BN, ReLU)
    then 2x2 max-pool; then flatten (or global average pooling when
    ``global_pool``) and ``dense`` fully connected ReLU layers with dropout.
    Returns the last dense activation (or the pooled map without ``dense``)."""
    x = inputs
    for b, f in enumerate(filters):
        for c in range(convs_per_block):
            x = _conv(x, f, 3, 1, f"{name}_b{b + 1}c{c + 1}", weight_decay)
            x = _bn(x, f"{name}_b{b + 1}bn{c + 1}")
            x = layers.ReLU(name=f"{name}_b{b + 1}relu{c + 1}")(x)
        x = layers.MaxPooling2D(2, name=f"{name}_b{b + 1}pool")(x)
    if global_pool:
        x = layers.GlobalAveragePooling2D(name=f"{name}_gap")(x)
    else:
        x = layers.Flatten(name=f"{name}_flatten")(x)
    for i, units in enumerate(dense):
        if dropout:
            x = layers.Dropout(dropout, name=f"{name}_drop{i + 1}")(x)
        x = layers.Dense(units, kernel_regularizer=_regularizer(weight_decay),
                         name=f"{name}_fc{i + 1}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_fcbn{i + 1}")(x)
        x = layers.ReLU(name=f"{name}_fcrelu{i + 1}")(x)
    return x
