"""FERSNet's two encoder streams, classifier, decoder and discriminator
(docs/methods.md, FERSNet, has the paper beside each)."""

from __future__ import annotations

from typing import Any, Dict

import keras
from keras import ops

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


SHARING = ("convflu", "hard")


def build_encoder(cfg: Dict[str, Any]) -> keras.Model:
    """The encoder: image -> ``[f_x4, f_y4]`` (recognition, synthesis
    features), followed by the synthesis stream's ``f_y1, f_y2, f_y3`` when
    ``decoder_skips``.

    ``sharing`` ``"convflu"`` (the paper): two streams (``rec_b*``, ``syn_b*``)
    with a ConvFLU transfer after each block; ``"hard"`` (ablation "w/o
    ConvFLU"): one stream ``shared_b*`` feeds both the classifier and the
    decoder (``f_x4 = f_y4``). ``synthesis`` False (ablation "w/o MTL"): the
    recognition stream alone, outputs ``[f_x4]``.
    """
    if len(cfg["filters"]) != 4:
        raise ValueError("fersnet: filters must have 4 entries (4 encoder blocks)")
    sharing = cfg.get("sharing", "convflu")
    if sharing not in SHARING:
        raise ValueError(f"fersnet: sharing must be one of {SHARING}, got {sharing!r}")
    size = int(cfg["image_size"])
    image = keras.Input((size, size, 1), name="image")
    m = cfg["bn_momentum"]
    if not cfg.get("synthesis", True):
        fx = image
        for k, f in enumerate(cfg["filters"], 1):
            fx = _block(fx, f, f"rec_b{k}", m)
        return keras.Model(image, [fx], name="encoder")
    fx = fy = image
    skips = []
    syn_norm = cfg.get("synthesis_batchnorm", True)
    syn_leaky = cfg.get("synthesis_activation", "relu") == "leaky_relu"
    for k, f in enumerate(cfg["filters"], 1):
        if sharing == "hard":
            fx = fy = _block(fx, f, f"shared_b{k}", m)
        else:
            fx = _block(fx, f, f"rec_b{k}", m)
            fy = _block(fy, f, f"syn_b{k}", m, syn_norm, syn_leaky)
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


DECODER_BLOCKS = ("paper", "up_conv")


def decoder_takes_image(cfg: Dict[str, Any]) -> bool:
    """The image is a decoder input for the last skip and for the residual output."""
    return bool(cfg.get("decoder_skips") or cfg.get("residual_output"))


def build_decoder(cfg: Dict[str, Any]) -> keras.Model:
    """Label transformer + decoder: ``[f_y4, one_hot(t)] -> G(x, t)`` in [0, 1].

    ``decoder_block`` ``"paper"`` (Sec. IV-A): each of the four blocks is
    2 x (conv3x3-BN-ReLU) and a 2x2/2 transposed convolution in place of the
    encoder's max pooling; ``"up_conv"`` (the small preset): transposed
    conv-[BN]-act, [skip], conv3x3-[BN]-act.

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
    block = cfg.get("decoder_block", "paper")
    if block not in DECODER_BLOCKS:
        raise ValueError(f"fersnet: decoder_block must be one of {DECODER_BLOCKS}, "
                         f"got {block!r}")
    for k, df in enumerate(cfg["decoder_filters"], 1):
        if block == "paper":
            # the encoder block with its max pooling replaced by a 2x2/2 deconvolution
            x = _conv_norm_act(x, df, f"dec{k}_1", m, norm, leaky)
            x = _conv_norm_act(x, df, f"dec{k}_2", m, norm, leaky)
            x = keras.layers.Conv2DTranspose(df, 2, strides=2, kernel_initializer="he_normal",
                                             name=f"dec{k}_up")(x)
            if skips_on:
                x = keras.layers.Concatenate(name=f"dec{k}_skip")([x, lateral[k - 1]])
            continue
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


DISC_CONDITIONING = ("concat", "projection")


@keras.saving.register_keras_serializable(package="fermtl.fersnet")
class LabelProjection(keras.layers.Layer):
    """Projection conditioning of a patch discriminator (Miyato & Koyama,
    ICLR 2018) per patch: ``<h[b, i, j, :], embedding[b, :]>`` -> ``[B, h, w, 1]``."""

    def call(self, inputs):
        features, embedding = inputs
        return ops.sum(features * embedding[:, None, None, :], axis=-1, keepdims=True)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:-1]) + (1,)


def build_discriminator(cfg: Dict[str, Any]) -> keras.Model:
    """Label-conditioned PatchGAN (Isola et al.'s ``[7]``): ``[image, one_hot(t)]
    -> patch logits``: conv4x4 (stride ``disc_strides``, default 2) [+ BN except
    the first, ``disc_batchnorm``] + LeakyReLU(0.2) per ``disc_filters`` entry,
    and a final conv (``disc_out_kernel``) to one logit per patch.
    ``disc_conditioning`` ``"concat"``: the one-hot label tiled as extra input
    channels; ``"projection"``: the logit plus the inner product of the last
    features with a learnt embedding of the label (:class:`LabelProjection`)."""
    size = int(cfg["image_size"])
    image = keras.Input((size, size, 1), name="image")
    label = keras.Input((NUM_CLASSES,), name="target")
    cond = cfg.get("disc_conditioning", "concat")
    if cond not in DISC_CONDITIONING:
        raise ValueError(f"fersnet: disc_conditioning must be one of {DISC_CONDITIONING}, "
                         f"got {cond!r}")
    x = image
    if cond == "concat":
        lmap = keras.layers.Reshape((1, 1, NUM_CLASSES), name="label_reshape")(label)
        lmap = keras.layers.UpSampling2D(size, name="label_tile")(lmap)
        x = keras.layers.Concatenate(name="concat")([image, lmap])
    filters = list(cfg["disc_filters"])
    strides = list(cfg.get("disc_strides") or [2] * len(filters))
    if len(strides) != len(filters):
        raise ValueError("fersnet: disc_strides must have one entry per disc_filters entry")
    norm = bool(cfg.get("disc_batchnorm", False))
    for k, (f, st) in enumerate(zip(filters, strides), 1):
        use_bn = norm and k > 1
        x = keras.layers.Conv2D(f, 4, strides=st, padding="same", use_bias=not use_bn,
                                name=f"d{k}_conv")(x)
        if use_bn:
            x = keras.layers.BatchNormalization(momentum=cfg["bn_momentum"],
                                                name=f"d{k}_bn")(x)
        x = keras.layers.LeakyReLU(0.2, name=f"d{k}_lrelu")(x)
    out = keras.layers.Conv2D(1, int(cfg.get("disc_out_kernel", 3)), padding="same",
                              name="patch_logits")(x)
    if cond == "projection":
        emb = keras.layers.Dense(filters[-1], use_bias=False, name="label_embedding")(label)
        out = keras.layers.Add(name="projected_logits")(
            [out, LabelProjection(name="label_projection")([x, emb])])
    return keras.Model([image, label], out, name="discriminator")
