"""FERSNet's two encoder streams, classifier, decoder and discriminator
(architecture in the package docstring, :mod:`models.fersnet`)."""

from __future__ import annotations

from typing import Any, Dict

import keras

from components import contract
from models.layers import ConvFLUTransfer, FusedBatchNorm

NUM_CLASSES = contract.NUM_EMOTIONS


def _conv_norm_act(x, filters, name, momentum, norm: bool = True, leaky: bool = False):
    """conv3x3 + [BN] + ReLU / LeakyReLU(0.2)."""
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=not norm,
                            kernel_initializer="he_normal", name=f"{name}_conv")(x)
    return _norm_act(x, name, momentum, norm, leaky)


def _norm_act(x, name, momentum, norm: bool, leaky: bool):
    """[BN] + ReLU or LeakyReLU(0.2)."""
    if norm:
        x = FusedBatchNorm(momentum=momentum, scale=False, name=f"{name}_bn")(x)
    if leaky:
        return keras.layers.LeakyReLU(0.2, name=f"{name}_lrelu")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _block(x, filters, name, momentum, norm: bool = True, leaky: bool = False):
    x = _conv_norm_act(x, filters, f"{name}_1", momentum, norm, leaky)
    x = _conv_norm_act(x, filters, f"{name}_2", momentum, norm, leaky)
    return keras.layers.MaxPooling2D(2, name=f"{name}_pool")(x)


def _bottleneck(cfg) -> int:
    size = int(cfg["image_size"])
    if size % 16:
        raise ValueError(f"fersnet: image_size must be a multiple of 16, got {size}")
    return size // 16


def build_encoder(cfg: Dict[str, Any]) -> keras.Model:
    """Both encoder streams with a ConvFLU transfer after each block:
    image -> ``[f_x4, f_y4]`` (recognition, synthesis features), followed by
    the synthesis stream's ``f_y1, f_y2, f_y3`` when ``decoder_skips``."""
    if len(cfg["filters"]) != 4:
        raise ValueError("fersnet: filters must have 4 entries (4 encoder blocks)")
    size = int(cfg["image_size"])
    image = keras.Input((size, size, 1), name="image")
    fx = fy = image
    skips = []
    syn_norm = cfg.get("synthesis_batchnorm", True)
    syn_leaky = cfg.get("synthesis_activation", "relu") == "leaky_relu"
    for k, f in enumerate(cfg["filters"], 1):
        fx = _block(fx, f, f"rec_b{k}", cfg["bn_momentum"])
        fy = _block(fy, f, f"syn_b{k}", cfg["bn_momentum"], syn_norm, syn_leaky)
        fx, fy, *_ = ConvFLUTransfer(cfg["convflu_kernel"], return_gates=True,
                                     name=f"transfer{k}")([fx, fy])
        skips.append(fy)
    outputs = [fx, fy] + (skips[:3] if cfg.get("decoder_skips") else [])
    return keras.Model(image, outputs, name="encoder")


def build_classifier(cfg: Dict[str, Any]) -> keras.Model:
    """Two FC layers on the recognition stream's last features -> 8 logits."""
    b, f = _bottleneck(cfg), cfg["filters"][-1]
    feat = keras.Input((b, b, f), name="rec_features")
    x = keras.layers.Flatten(name="cls_flatten")(feat)
    if cfg.get("fc_batchnorm", True):
        x = keras.layers.Dense(cfg["fc_units"], use_bias=False, name="cls_fc1")(x)
        x = keras.layers.BatchNormalization(momentum=cfg["bn_momentum"], name="cls_fc1_bn")(x)
        x = keras.layers.ReLU(name="cls_fc1_relu")(x)
    else:
        x = keras.layers.Dense(cfg["fc_units"], activation="relu", name="cls_fc1")(x)
    x = keras.layers.Dropout(cfg["dropout"], name="cls_dropout")(x)
    logits = keras.layers.Dense(NUM_CLASSES, name="cls_logits")(x)
    return keras.Model(feat, logits, name="classifier")


def decoder_takes_image(cfg: Dict[str, Any]) -> bool:
    """The image is a decoder input for the last skip and for the residual output."""
    return bool(cfg.get("decoder_skips") or cfg.get("residual_output"))


def build_decoder(cfg: Dict[str, Any]) -> keras.Model:
    """Label transformer + decoder: ``[f_y4, one_hot(t)] -> G(x, t)`` in [0, 1].

    With ``decoder_skips`` the inputs also take ``f_y3, f_y2, f_y1`` (the
    synthesis features after transfers 3, 2, 1) and the image ``x``: decoder
    block k concatenates the encoder features of its resolution (U-Net), the
    last one ``x``.  With ``residual_output`` the output is
    ``clip(x + tanh(conv(.)), 0, 1)``: G draws the *change* of expression.
    """
    b, f = _bottleneck(cfg), cfg["filters"][-1]
    size = int(cfg["image_size"])
    skips_on = bool(cfg.get("decoder_skips"))
    residual = bool(cfg.get("residual_output"))
    feat = keras.Input((b, b, f), name="syn_features")
    label = keras.Input((NUM_CLASSES,), name="target")
    inputs = [feat, label]
    lateral = []
    if skips_on:
        # the encoder features at S/8, S/4, S/2, then the image at S
        for k in (3, 2, 1):
            r, fk = size // 2 ** k, cfg["filters"][k - 1]
            lateral.append(keras.Input((r, r, fk), name=f"syn_skip{k}"))
        inputs += lateral
    if decoder_takes_image(cfg):
        image = keras.Input((size, size, 1), name="image")
        inputs.append(image)
        if skips_on:
            lateral.append(image)
    lc = cfg["label_channels"]
    l = keras.layers.Dense(cfg["label_units"], activation="relu", name="label_fc")(label)
    l = keras.layers.Reshape((1, 1, cfg["label_units"]), name="label_reshape")(l)
    l = keras.layers.Conv2DTranspose(lc, b, padding="valid", activation="relu",
                                     name="label_deconv1")(l)
    l = keras.layers.Conv2DTranspose(lc, 3, padding="same", activation="relu",
                                     name="label_deconv2")(l)
    x = keras.layers.Concatenate(name="bottleneck_concat")([feat, l])
    m = cfg["bn_momentum"]
    norm = cfg.get("decoder_batchnorm", True)
    leaky = cfg.get("decoder_activation", "relu") == "leaky_relu"
    for k, df in enumerate(cfg["decoder_filters"], 1):
        x = keras.layers.Conv2DTranspose(df, 2, strides=2, use_bias=not norm,
                                         kernel_initializer="he_normal", name=f"dec{k}_up")(x)
        x = _norm_act(x, f"dec{k}_up", m, norm, leaky)
        if skips_on:
            x = keras.layers.Concatenate(name=f"dec{k}_skip")([x, lateral[k - 1]])
        x = _conv_norm_act(x, df, f"dec{k}", m, norm, leaky)
    if residual:
        delta = keras.layers.Conv2D(1, 3, padding="same", activation="tanh", name="synth_delta")(x)
        out = keras.layers.Add(name="synth_residual")([image, delta])
        out = keras.layers.ReLU(max_value=1.0, name="synth")(out)
    else:
        out = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid", name="synth")(x)
    return keras.Model(inputs, out, name="decoder")


def build_discriminator(cfg: Dict[str, Any]) -> keras.Model:
    """Label-conditioned PatchGAN: ``[image, one_hot(t)] -> patch logits``."""
    size = int(cfg["image_size"])
    image = keras.Input((size, size, 1), name="image")
    label = keras.Input((NUM_CLASSES,), name="target")
    lmap = keras.layers.Reshape((1, 1, NUM_CLASSES), name="label_reshape")(label)
    lmap = keras.layers.UpSampling2D(size, name="label_tile")(lmap)
    x = keras.layers.Concatenate(name="concat")([image, lmap])
    for k, f in enumerate(cfg["disc_filters"], 1):
        x = keras.layers.Conv2D(f, 4, strides=2, padding="same", name=f"d{k}_conv")(x)
        x = keras.layers.LeakyReLU(0.2, name=f"d{k}_lrelu")(x)
    out = keras.layers.Conv2D(1, 3, padding="same", name="patch_logits")(x)
    return keras.Model([image, label], out, name="discriminator")
