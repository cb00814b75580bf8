"""Backbones (models/backbones.py): shapes, parameter counts, layer naming.

Parameter counts are for 3-channel inputs, as in the papers:
He et al. 2016 Table 6 gives 0.46M for ResNet-32 and 1.7M for ResNet-110
(CIFAR, option-A shortcuts); ResNet-34 without its classifier has 21.28M
(torchvision's 21.80M minus the 513k of the 1000-way fc layer).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from models import backbones


def _model(builder, shape, **kw):
    inputs = keras.Input(shape)
    return keras.Model(inputs, builder(inputs, **kw))


@pytest.mark.parametrize("depth,low,high", [(32, 0.45e6, 0.47e6), (110, 1.70e6, 1.76e6)])
def test_cifar_resnet_parameter_counts(depth, low, high):
    model = _model(backbones.cifar_resnet, (32, 32, 3), depth=depth, width=16)
    assert low <= model.count_params() <= high
    assert model.output.shape == (None, 64)
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert len(convs) == depth - 1  # + the classifier = depth weighted layers


def test_cifar_resnet_options():
    with pytest.raises(ValueError):
        _model(backbones.cifar_resnet, (32, 32, 1), depth=21)
    m = _model(backbones.cifar_resnet, (48, 48, 1), depth=8, width=8, stem_stride=2,
               pool_grid=3)
    assert m.output.shape == (None, 32 * 9)
    x = np.random.default_rng(0).random((2, 48, 48, 1), np.float32)
    assert np.asarray(m(x)).shape == (2, 288)


def test_zero_pad_shortcut_is_subsample_and_pad():
    x = np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
    y = np.asarray(backbones.ZeroPadShortcut(8, 2)(x))
    assert y.shape == (2, 2, 2, 8)
    np.testing.assert_array_equal(y[..., 2:5], x[:, ::2, ::2, :])
    assert not y[..., :2].any() and not y[..., 5:].any()


def test_cifar_resnet_keras_round_trip(tmp_path):
    m = _model(backbones.cifar_resnet, (16, 16, 1), depth=8, width=4)
    x = np.random.default_rng(1).random((3, 16, 16, 1), np.float32)
    path = str(tmp_path / "r8.keras")
    m.save(path)
    np.testing.assert_allclose(np.asarray(keras.models.load_model(path)(x)), np.asarray(m(x)),
                               atol=1e-6)


def test_resnet34_counts_and_conv_pairing():
    m = _model(backbones.resnet34, (224, 224, 3), width=64, name="r34")
    assert 21.2e6 <= m.count_params() <= 21.4e6
    assert m.output.shape == (None, 512)
    convs = backbones.conv_layers(m, "r34")
    # 33 = the 7x7 stem + 2 x (3 + 4 + 6 + 3) block convs; the three 1x1
    # projection shortcuts (r34_proj2..4) are not counted.
    assert len(convs) == 33
    assert [c.name for c in convs] == [f"r34_conv{k}" for k in range(33)]
    assert len([l for l in m.layers if l.name.startswith("r34_proj")
                and isinstance(l, keras.layers.Conv2D)]) == 3


def test_resnet34_two_task_nets_pair_kernels():
    image = keras.Input((32, 32, 1))
    feats = [backbones.resnet34(image, width=8, name=t, small_input=True)
             for t in ("emotion", "au")]
    m = keras.Model(image, feats)
    pairs = list(zip(backbones.conv_layers(m, "emotion"), backbones.conv_layers(m, "au")))
    assert len(pairs) == 33
    for a, b in pairs:
        assert a.kernel.shape == b.kernel.shape and a is not b
    assert feats[0].shape == (None, 64)
    # conv_layers also takes a plain list of layers.
    assert len(backbones.conv_layers(m.layers, "au")) == 33


def test_resnet34_pool_size():
    m = _model(backbones.resnet34, (64, 64, 1), width=8, pool_size=2)
    # 64 px -> stem /2 -> maxpool /2 -> 3 strided stages /8 -> 2 x 2; pooled to 1 x 1.
    assert m.output.shape == (None, 64)


def test_vgg_small_presets():
    paper = _model(backbones.vgg_small, (48, 48, 1), filters=(32, 64, 128, 256),
                   convs_per_block=2, dense=(256,))
    assert 1.7e6 <= paper.count_params() <= 1.85e6
    small = _model(backbones.vgg_small, (48, 48, 1), filters=(16, 32, 64), convs_per_block=1,
                   dense=(64,))
    assert small.output.shape == (None, 64)
    gap = _model(backbones.vgg_small, (48, 48, 1), filters=(8, 16), dense=(), global_pool=True)
    assert gap.output.shape == (None, 16)
