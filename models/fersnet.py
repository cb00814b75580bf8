"""FERSNet: joint facial expression recognition and synthesis with selective
feature sharing (ConvFLU).

Paper relied on: R. Zhao, T. Liu, J. Xiao, D. P. K. Lun, K.-M. Lam, "Deep
Multi-task Learning for Facial Expression Recognition and Synthesis Based on
Selective Feature Sharing", ICPR 2020 (arXiv:2007.04514).  The ConvFLU unit
itself (its Eqs 1-4) lives in :mod:`models.layers.convflu`.  We had no copy of
the paper offline, so the loss terms below are cited by name, in the order
of the paper's total objective, rather than by equation number:

    L = L_cls + lambda1 L_GAN + lambda2 L_rec + lambda3 L_cyc + lambda4 L_idt      (total)

    lambda1 = 0.3, lambda2 = 1, lambda3 = 0.5, lambda4 ramps 0.1 -> 0.5 (callback)

Architecture (``F = cfg["filters"]``, four entries, ``S = image_size``)::

    image x [B,S,S,1]
     |- recognition stream  rec_b{k}: 2 x (conv3x3-BN-ReLU) + maxpool2, k = 1..4
     |- synthesis  stream   syn_b{k}: same blocks (own weights)
     |  after block k:  (f_x, f_y) <- ConvFLUTransfer_k([f_x, f_y])   (transfer{k})
     |- classifier  f_x4 -> Flatten -> FC(fc_units)+BN+ReLU -> Dropout -> FC(8) = logits
     |- label transformer  one-hot(t) -> FC -> 1x1 map -> 2 transposed convs ->
     |                     [S/16, S/16, label_channels], concatenated to f_y4
     |- decoder  4 x (ConvTranspose 2x2/2 -BN-ReLU [+ skip] + conv3x3-BN-ReLU)
     |           -> conv3x3 + sigmoid = G(x, t) in [0, 1]
     |           (small preset: skips f_y3, f_y2, f_y1, x; G = clip(x + tanh(conv3x3)))
    discriminator D(img, t): PatchGAN (conv4x4/2 + LeakyReLU)^n -> conv3x3 -> patch logits,
                             the one-hot target tiled as extra input channels.

Loss terms of one batch (per-sample means; ``c_x`` = source expression):

* ``L_cls``: masked softmax cross-entropy of the recognition logits (logits of
  emotions outside the sample's ``emotion_mask`` excluded; unlabelled samples
  contribute 0).
* ``L_GAN``: conditional adversarial loss, generator side
  ``-log sigmoid D(G(x,t), t)`` ("bce") or ``(D(G(x,t),t) - 1)^2`` ("lsgan");
  the discriminator is trained on ``D(x, c_x)`` (real, labelled samples only)
  vs ``D(G(x,t), t)`` (fake) with its own optimizer in the same step.
* ``L_rec``: ``|G(x, t) - x_t|_1`` where ``x_t`` is a *same-subject* image with
  expression ``t`` taken from the batch (:func:`pair_targets`); samples
  without such a partner have no ``L_rec`` (only GAN + cycle (+identity)).
* ``L_cyc``: ``|G(G(x, t), c_x) - x|_1``.
* ``L_idt``: ``1 - cos(e(G(x, t)), e(x))`` with ``e`` a frozen face-identity
  embedding (:mod:`models.face_embedding`; see "Identity network" below).

Interpretation choices (the paper leaves these open or cannot be reproduced):

* **Target selection** (:func:`pair_targets`): for each sample, when the
  batch holds another labelled sample of the same face the target is the
  expression of one such partner drawn at random and ``x_t`` is that partner
  (``pair_mask`` 1) -- with probability ``pair_prob``; otherwise a random
  expression of the sample's label set (restricted to the expressions seen in
  training so far, and different from ``c_x`` where possible) with
  ``pair_mask`` 0.  "The same face" is the same capture *sequence* (the
  contract's ``sequence``: same pose, framing and light) when the sample's
  sequence is known, else the same ``subject``.  The paper's datasets (CK+,
  Oulu-CASIA, MMI) pair frames of one video; pairing across sequences makes
  ``L_rec`` compare pose and light more than expression (on the synthetic
  faces, renders of one subject differ by L1 0.054 across render conditions
  and 0.005 within one) and teaches blur.
* **Pairs in the batch**: ``batch_group_size`` (2) makes the input pipeline
  put runs of that many same-face samples in each training batch
  (``models.inputs.group_by_face``), so nearly every sample has a partner;
  with plain shuffling about a third had one at batch 16.
* **Source expression** ``c_x`` of unlabelled samples (``emotion == -1``) is
  the recognition stream's prediction (no gradient); their real image does not
  enter the discriminator.
* **BatchNorm** statistics are only accumulated on real images: the moving
  averages are restored after the cycle pass on synthesized images.
* **Identity network**: the paper's pre-trained Light CNN cannot be
  downloaded; we use :mod:`models.face_embedding`, a small CNN trained by this
  project to classify subject identity (``train_face_embedding``), loaded
  frozen from ``face_embedding_weights``.  Choice when no weights are given:
  ``L_idt`` is **disabled with a logged warning** (we do not train an
  embedding on the fly: the training batches' subjects are too few and it
  would make ``build`` depend on data).  For real data, train the embedding on
  an identity-labelled set (see ``models/face_embedding.py``).
* **Augmentation** (:meth:`FERSNet.augment`): the paper's "crop 96x96 from
  110x110, random mirror, rotation +-15 deg in 5 deg steps".  Serving feeds
  whole ``S x S`` faces without a crop, so the crop is implemented as a random
  *translation* of up to ``(crop_from - S) / 2`` pixels at scale 1 (its
  centre crop is the identity); rotation angles are multiples of
  ``rotation_step`` in ``[-max_rotation, max_rotation]``.  All samples of the
  same subject in a batch get the *same* transform so that ``L_rec``'s pairs
  stay aligned.  Landmarks are not moved (FERSNet does not use them).
* **FES augmentation** (the paper's synthesis-based data augmentation): after training,
  :func:`synthesize_balanced` renders every other expression of the label set
  for each labelled training face (so each class then counts exactly one
  image per face: balanced) and :func:`fine_tune_with_fes` fine-tunes the
  recognition stream (``rec_*`` blocks + classifier; transfers and synthesis
  stream frozen) on real + synthesized faces with ``L_cls`` only.  Config flag
  ``fes_augment`` tells a trainer to do it (:meth:`FERSNet.post_fit`, called
  by ``models.training.train`` and the TFX Trainer module with the training
  ``FaceSample`` list or a finite dataset of Transform-output batches;
  ``fermtl run --fes-augment`` sets the flag).
* **Exported ``synthesize`` signature** takes *float* images ``[B,S,S,1]`` in
  [0, 1] (already decoded, like the inference model) and ``target`` int64
  ``[B]`` (index into ``contract.EMOTIONS``) and returns ``{"image":
  [B,S,S,1]}`` in [0, 1].
* **Decoder** (ours, small preset only; the paper preset keeps the plain
  decoder): ``decoder_skips`` concatenates the synthesis stream's features
  of the same resolution (after the ConvFLU transfers) and, in the last
  block, the image itself (U-Net style); ``residual_output`` makes
  ``G(x, t) = clip(x + tanh(conv(.)), 0, 1)``, the "ultimate skip" of
  US-GAN (Akram & Khan, arXiv:2112.13002), so the network draws the
  *change* of expression and the identity comes through untouched.  Why:
  from the S/16 bottleneck alone the decoder returns a blur of the face
  (L1 0.083 from its source after the tests' 140 steps, against
  0.001-0.008 with both options), and a blur is what FES augmentation then
  trains on.
* **Classifier**: the first FC layer is followed by batch normalization
  (``fc_batchnorm``; not stated in the paper, it speeds up training of the
  small preset noticeably).
* **Small preset**: 64 x 64 input (at 48 x 48 the synthetic faces' expression
  cues are a few pixels and nothing generalises to new subjects within a few
  epochs), filters 12-24-32-48 (8-16-24-32 learnt about half as fast),
  random mirror only (shift and rotation slow down learning on ~200 faces;
  set ``crop_from`` / ``max_rotation`` to turn them on), batch 16 (twice the
  updates of batch 32 for the same compute; held-out accuracy after 9
  epochs went from ~0.35-0.55 to ~0.6).
* **Synthesis side of the small preset** (ours; the paper preset keeps
  conv-BN-ReLU and L1): the synthesis stream's blocks and the decoder are
  conv + LeakyReLU(0.2) without batch normalization
  (``synthesis_batchnorm`` / ``decoder_batchnorm`` False,
  ``synthesis_activation`` / ``decoder_activation`` "leaky_relu"; the
  recognition stream keeps conv-BN-ReLU), and ``L_rec`` / ``L_cyc`` are
  mean *squared* errors (``recon_loss`` "l2") weighted ``lambda_rec`` 100,
  ``lambda_cyc`` 5, learning rate 1e-3.  Why: an expression change on the
  synthetic faces is thin lines (brows, forehead, mouth) covering 3-6 % of
  the pixels, and where a line lands varies with the drawn intensity, so at
  most pixels fewer than half of the real targets differ from the source;
  the per-pixel *median* (what L1 fits) is then the source itself, and with
  L1 the oracle kept reading the source in every run.  The mean (what L2
  fits) keeps the change.  Batch normalization on the synthesis side kept
  the oracle at chance even with L2.  The generator alone on aligned pairs
  (``bench_synthesis.py --generator-only --steps 1000 --lr 5e-4``, 40
  training subjects; oracle p(target) on the real source 0.058, argmax
  chance 14 %, with the source left out 17 %)::

      variant                      hit    hit excl. source  p(target) fake
      L1, BN + ReLU (before)       2.4 %  16.7 %            0.059
      L1, no BN, LeakyReLU         2.2 %  16.7 %            0.056
      L2, BN + ReLU                2.8 %  16.7 %            0.064
      L2, no BN, LeakyReLU (now)   8.5 %  22.0 %            0.112

* **What to expect from the small preset** (``make bench-synthesis``:
  ``--train-subjects 40 --epochs 100``, 3500 steps, ~9 min on 2 cores; 6
  held-out synthetic subjects, lab faces, a frozen baseline "oracle"
  trained on all subjects' real faces): the oracle's p(target) rises from
  0.06 on the real source to 0.27-0.29 on the fakes while p(source) falls
  from 0.63 to 0.23-0.25; with the source left out of its argmax the
  target wins 43-52 % (chance 17 %), the plain argmax 34-37 % (chance
  14 %); two seeds (0, 3).  At 60 epochs (2100 steps) the runs spread
  widely, 16-50 % with the source left out over four runs, one of them at
  chance, so the slow test trains 100.  The changes sit where the
  expressions differ (brows lowered for anger, forehead lines and an open
  mouth for surprise) with faint artefacts.  At 2100 steps,
  ``lambda_rec`` 10 at learning rate 2e-3 moved the oracle less than 100
  (p(target) 0.10 against 0.15, one run each), 30 at 1e-3 about as much
  (0.13).  Tried and not kept (all with L1 and BN, before this choice): a
  StarGAN-style expression loss (cross-entropy of a recognizer on G(x, t)
  towards t) drew sparse dot patterns that fooled the oracle rather than
  expressions; the label tiled into every decoder block; a matching-aware
  discriminator; a perceptual loss on a frozen classifier's features; a
  warping output (a flow field of up to 3 px plus a residual).  The
  discriminator does not learn on these faces (``gan_d`` stays at log 2),
  so ``L_GAN`` adds little here.
* Optimizers: Adam (beta_1 0.5) for generator+recognizer and for the
  discriminator (:class:`FusedAdam`, Keras Adam maths in one op per
  variable); learning rates are ours.  Batch normalization of the conv
  layers uses :class:`FusedBatchNorm` (Keras BN maths, TF's fused kernel).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

from components import contract
from models.base import Method
from models.layers.convflu import ConvFLUTransfer
from models.loss_model import LabelSetMask, masked_mean, replica_scaled

log = logging.getLogger(__name__)

NUM_CLASSES = contract.NUM_EMOTIONS
_NEG = -1e9

__all__ = [
    "FERSNet",
    "FERSNetModel",
    "IdentityLambdaRamp",
    "pair_targets",
    "augment_batch",
    "gate_maps",
    "synthesize",
    "synthesize_balanced",
    "capture_sequences",
    "aligned_synthesis_jobs",
    "synthesis_scores",
    "fine_tune_with_fes",
]


# --------------------------------------------------------------------------- #
# networks
# --------------------------------------------------------------------------- #
@keras.saving.register_keras_serializable(package="fermtl.fersnet")
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


def _decoder_takes_image(cfg: Dict[str, Any]) -> bool:
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
    if _decoder_takes_image(cfg):
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


# --------------------------------------------------------------------------- #
# batch logic
# --------------------------------------------------------------------------- #
def _uniform(shape, seed):
    if seed is None:
        return tf.random.uniform(shape)
    return tf.random.stateless_uniform(shape, seed=seed)


@tf.autograph.experimental.do_not_convert
def pair_targets(subject_id, emotion, emotion_mask, pair_prob: float = 1.0,
                 allowed=None, seed=None, sequence_id=None):
    """Target expressions and same-subject target images inside a batch.

    Returns ``(target [B] int64, partner [B] int64, pair_mask [B] float32)``:
    where ``pair_mask`` is 1, ``partner`` indexes another labelled sample
    (``emotion >= 0``) of the batch that shows the same face and
    ``target == emotion[partner]``; elsewhere ``partner`` is the sample itself
    (unused) and ``target`` is drawn from the sample's label set
    (``emotion_mask``; all emotions when empty), restricted to ``allowed``
    ([8] 0/1, e.g. the emotions seen in training) when that leaves any, and
    different from the sample's own emotion when possible.

    "The same face": a sample whose ``sequence_id`` is known (>= 0) pairs only
    with samples of that sequence (same pose, framing and light, so ``L_rec``
    compares expressions, not pose); a sample of unknown sequence pairs with
    any sample of its ``subject_id`` (>= 0; unknown subjects never pair).
    A sample with a partner uses it with probability ``pair_prob``.  ``seed``
    (shape [2] int) makes the draw deterministic.
    """
    sid = tf.reshape(tf.cast(subject_id, tf.int64), [-1])
    emo = tf.reshape(tf.cast(emotion, tf.int64), [-1])
    mask = tf.cast(emotion_mask, tf.float32)
    n = tf.shape(sid)[0]
    s1 = s2 = s3 = None
    if seed is not None:
        seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
        s1, s2, s3 = seed, seed + [0, 1], seed + [0, 2]
    same = (sid[:, None] == sid[None, :]) & (sid[:, None] >= 0)
    if sequence_id is not None:
        seq = tf.reshape(tf.cast(sequence_id, tf.int64), [-1])
        same_seq = (seq[:, None] == seq[None, :]) & (seq[:, None] >= 0)
        same = tf.where(seq[:, None] >= 0, same_seq, same)
    same = same & (emo[None, :] >= 0) & ~tf.cast(tf.eye(n), tf.bool)
    score = tf.where(same, 1.0 + _uniform([n, n], s1), 0.0)
    partner = tf.argmax(score, axis=1, output_type=tf.int64)
    use_pair = tf.reduce_any(same, axis=1) & (_uniform([n], s2) < pair_prob)

    cand = tf.where(tf.reduce_sum(mask, 1, keepdims=True) > 0, mask, tf.ones_like(mask))
    if allowed is not None:
        allowed = tf.cast(tf.reshape(allowed, [1, -1]), tf.float32)
        narrowed = cand * allowed
        cand = tf.where(tf.reduce_sum(narrowed, 1, keepdims=True) > 0, narrowed, cand)
    own = tf.one_hot(tf.maximum(emo, 0), NUM_CLASSES) * tf.cast(emo[:, None] >= 0, tf.float32)
    other = cand * (1.0 - own)
    cand = tf.where(tf.reduce_sum(other, 1, keepdims=True) > 0, other, cand)
    # Gumbel-max draw over the candidate set.
    u = tf.clip_by_value(_uniform([n, NUM_CLASSES], s3), 1e-7, 1.0 - 1e-7)
    gumbel = -tf.math.log(-tf.math.log(u))
    rand_t = tf.argmax(tf.where(cand > 0, gumbel, _NEG), axis=1, output_type=tf.int64)

    target = tf.where(use_pair, tf.gather(emo, partner), rand_t)
    partner = tf.where(use_pair, partner, tf.range(tf.cast(n, tf.int64)))
    return target, partner, tf.cast(use_pair, tf.float32)


@tf.autograph.experimental.do_not_convert
def _group_leader(subject_id):
    """Index of the first sample of each sample's subject (itself if unknown)."""
    sid = tf.reshape(tf.cast(subject_id, tf.int64), [-1])
    n = tf.shape(sid)[0]
    same = (sid[:, None] == sid[None, :]) & (sid[:, None] >= 0)
    same = same | tf.cast(tf.eye(n), tf.bool)
    return tf.argmax(tf.cast(same, tf.int32), axis=1, output_type=tf.int32)


@tf.autograph.experimental.do_not_convert
def augment_batch(batch: Dict[str, tf.Tensor], cfg: Dict[str, Any]) -> Dict[str, tf.Tensor]:
    """Random mirror, rotation (multiples of ``rotation_step`` up to
    ``max_rotation`` degrees) and translation (the crop from ``crop_from``,
    see the module docstring) of ``batch["image"]``; one transform per subject
    of the batch (samples with unknown subject get their own)."""
    image = tf.convert_to_tensor(batch["image"], tf.float32)
    size = int(cfg["image_size"])
    n = tf.shape(image)[0]
    sid = batch.get("subject_id")
    if sid is None:
        sid = -tf.ones([n], tf.int64)
    leader = _group_leader(sid)

    flip = tf.cast(tf.random.uniform([n]) < 0.5, tf.float32) if cfg["mirror"] else tf.zeros([n])
    steps = int(cfg["max_rotation"] // cfg["rotation_step"]) if cfg["rotation_step"] else 0
    k = tf.random.uniform([n], -steps, steps + 1, dtype=tf.int32)
    angle = tf.cast(k, tf.float32) * (float(cfg["rotation_step"]) * math.pi / 180.0)
    shift = max(int(cfg["crop_from"]) - size, 0) // 2
    t = tf.cast(tf.random.uniform([n, 2], -shift, shift + 1, dtype=tf.int32), tf.float32)
    flip, angle, t = (tf.gather(v, leader) for v in (flip, angle, t))

    # Output pixel -> input pixel: mirror, then rotate about the centre, then shift.
    c = (size - 1) / 2.0
    sx = 1.0 - 2.0 * flip                       # x -> sx * (x - c) + c
    cos, sin = tf.cos(angle), tf.sin(angle)
    a0, a1 = cos * sx, -sin
    b0, b1 = sin * sx, cos
    a2 = c - a0 * c - a1 * c + t[:, 0]
    b2 = c - b0 * c - b1 * c + t[:, 1]
    zeros = tf.zeros_like(a0)
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image, transforms=transforms, output_shape=tf.constant([size, size]),
        fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST")
    result = dict(batch)
    result["image"] = tf.clip_by_value(tf.reshape(out, tf.shape(image)), 0.0, 1.0)
    return result


def _masked_ce(logits, emotion, emotion_mask):
    """Per-sample masked softmax CE (0 for unlabelled) and the labelled weights."""
    masked = tf.where(tf.cast(emotion_mask, tf.float32) > 0, logits, _NEG)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.maximum(emotion, 0),
                                                        logits=masked)
    labelled = tf.cast(emotion >= 0, tf.float32)
    return ce * labelled, labelled, masked


def _gan_loss(logits, real: bool, kind: str):
    """Per-sample adversarial loss averaged over patches."""
    if kind == "lsgan":
        target = 1.0 if real else 0.0
        per = tf.square(logits - target)
    elif kind == "bce":
        labels = tf.ones_like(logits) if real else tf.zeros_like(logits)
        per = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    else:
        raise ValueError(f"fersnet: gan_loss must be 'bce' or 'lsgan', got {kind!r}")
    return tf.reduce_mean(per, axis=[1, 2, 3])


def _pixel_loss(a, b, kind: str = "l1"):
    """Per-sample pixel distance: mean ``|a - b|`` ("l1") or mean ``(a - b)^2``
    ("l2"; see ``recon_loss`` in the module docstring)."""
    if kind == "l1":
        return tf.reduce_mean(tf.abs(a - b), axis=[1, 2, 3])
    if kind == "l2":
        return tf.reduce_mean(tf.square(a - b), axis=[1, 2, 3])
    raise ValueError(f"fersnet: recon_loss must be 'l1' or 'l2', got {kind!r}")


@keras.saving.register_keras_serializable(package="fermtl.fersnet")
class FusedAdam(keras.optimizers.Adam):
    """Keras Adam whose update is one ``ResourceApplyAdam`` op per variable
    (same maths as ``keras.optimizers.Adam``, without amsgrad/weight decay
    handled differently: those and multi-replica strategies fall back to the
    Keras implementation).  Keras' per-variable Adam graph is ~40 ops; with
    ~150 variables FERSNet's train step spent ~40 % of its tracing and graph
    optimisation time there."""

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


# --------------------------------------------------------------------------- #
# training model
# --------------------------------------------------------------------------- #
_TERMS = ("loss", "cls_loss", "accuracy", "gan_g", "gan_d", "rec", "cyc", "idt", "pairs")


@keras.saving.register_keras_serializable(package="fermtl.fersnet")
class FERSNetModel(keras.Model):
    """FERSNet training model (see the module docstring).

    Sub-models: ``encoder`` (image -> [f_x4, f_y4]), ``classifier``
    (f_x4 -> logits), ``decoder`` ([f_y4, one-hot] -> image), ``discriminator``
    and, when configured, the frozen ``embedder``.  ``call`` returns
    ``{"logits", "probabilities"}``; :meth:`synthesize` returns ``G(x, t)``.
    ``fit`` takes model-input dicts.  ``stage`` is ``"joint"`` (the full
    objective) or ``"recognition"`` (``L_cls`` on the recognition stream only,
    used by FES fine-tuning, see :meth:`set_stage`).
    """

    def __init__(self, cfg: Dict[str, Any], load_embedding: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.cfg = dict(cfg)
        self.encoder = build_encoder(self.cfg)
        self.classifier = build_classifier(self.cfg)
        self.decoder = build_decoder(self.cfg)
        self.discriminator = build_discriminator(self.cfg)
        self.label_set = LabelSetMask(NUM_CLASSES, name="label_set")
        self.label_set.build((None, NUM_CLASSES))
        self.emotions_seen = self.add_weight(name="emotions_seen", shape=(NUM_CLASSES,),
                                             initializer="zeros", trainable=False,
                                             aggregation="only_first_replica")
        self.lambda_idt = self.add_weight(
            name="lambda_idt", shape=(), trainable=False, aggregation="only_first_replica",
            initializer=keras.initializers.Constant(self.cfg["lambda_idt_start"]))
        self.embedder = self._make_embedder(load_embedding)
        self.d_optimizer = None
        self.fes_optimizer = None
        self.stage = "joint"
        self._trackers = {k: keras.metrics.Mean(name=k) for k in _TERMS}
        self.built = True

    # -- construction helpers --------------------------------------------------
    def _make_embedder(self, load: bool):
        from models import face_embedding as fe

        path = self.cfg.get("face_embedding_weights") or ""
        arch = self.cfg.get("face_embedding_arch")
        if path and load:
            if not os.path.exists(path):
                raise FileNotFoundError(f"fersnet: face_embedding_weights {path!r} not found")
            arch = fe.read_arch(path)
            emb = fe.load_face_embedding(path, arch)
            self.cfg["face_embedding_arch"] = arch
        elif arch:
            # Rebuilding a saved model: weights come from the saved file.
            emb = fe.build_face_embedding(arch.get("image_size"), arch["filters"], arch["dim"])
            emb.trainable = False
        else:
            if self.cfg.get("lambda_idt_end", 0) or self.cfg.get("lambda_idt_start", 0):
                log.warning("fersnet: no face_embedding_weights given: the identity loss "
                            "L_idt is disabled (train one with "
                            "models.face_embedding.train_face_embedding)")
            return None
        emb.trainable = False
        return emb

    def _gen_variables(self):
        return (self.encoder.trainable_variables + self.classifier.trainable_variables
                + self.decoder.trainable_variables)

    def _rec_variables(self):
        vs = []
        for layer in self.encoder.layers:
            if layer.name.startswith("rec_"):
                vs += layer.trainable_variables
        return vs + self.classifier.trainable_variables

    def _bn_layers(self, prefixes=None):
        out = []
        for sub in (self.encoder, self.decoder):
            for layer in sub.layers:
                if isinstance(layer, FusedBatchNorm) and (
                        prefixes is None or layer.name.startswith(tuple(prefixes))):
                    out.append(layer)
        return out

    # -- keras plumbing ----------------------------------------------------------
    def compile(self, optimizer=None, d_optimizer=None, **kwargs):
        cfg = self.cfg
        if optimizer is None:
            optimizer = FusedAdam(cfg["learning_rate"], beta_1=cfg["beta_1"])
        if d_optimizer is None:
            d_optimizer = FusedAdam(cfg["d_learning_rate"], beta_1=cfg["beta_1"])
        kwargs.setdefault("jit_compile", False)
        super().compile(optimizer=optimizer, **kwargs)
        self.d_optimizer = d_optimizer
        self.optimizer.build(self._gen_variables())
        self.d_optimizer.build(self.discriminator.trainable_variables)

    def get_compile_config(self):
        return {}

    def compile_from_config(self, config):
        self.compile()

    @property
    def metrics(self):
        return list(self._trackers.values())

    def call(self, inputs, training=False):
        image = inputs["image"] if isinstance(inputs, dict) else inputs
        fx, _, _ = self.encode(image, training=training)
        logits = self.classifier(fx, training=training)
        probs = tf.nn.softmax(self.label_set(logits), axis=-1)
        return {"logits": logits, "probabilities": probs}

    def encode(self, image, training=False):
        """``(f_x4, f_y4, skips)``: the encoder's outputs (skips empty unless
        ``decoder_skips``)."""
        out = self.encoder(image, training=training)
        return out[0], out[1], list(out[2:])

    def decode(self, fy, skips, image, onehot, training=False):
        """The decoder on encoder outputs of ``image`` and a one-hot target."""
        inputs = [fy, onehot] + list(reversed(skips))
        if _decoder_takes_image(self.cfg):
            inputs.append(image)
        return self.decoder(inputs, training=training)

    def synthesize(self, image, target, training=False):
        """``G(image, target)``: image ``[B,S,S,1]`` in [0,1], target int ``[B]``."""
        onehot = tf.one_hot(tf.cast(target, tf.int32), NUM_CLASSES)
        _, fy, skips = self.encode(image, training=training)
        return self.decode(fy, skips, image, onehot, training=training)

    def get_config(self):
        return {**super().get_config(), "cfg": self.cfg}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        cfg = config.pop("cfg")
        return cls(cfg, load_embedding=False,
                   **{k: v for k, v in config.items() if k in ("name", "trainable")})

    def set_stage(self, stage: str, learning_rate: Optional[float] = None):
        """``"joint"`` or ``"recognition"`` (FES fine-tuning of the recognition
        stream); resets the compiled train function."""
        if stage not in ("joint", "recognition"):
            raise ValueError(f"unknown stage {stage!r}")
        if stage == "recognition" and self.fes_optimizer is None:
            self.fes_optimizer = FusedAdam(learning_rate or self.cfg["fes_learning_rate"])
            self.fes_optimizer.build(self._rec_variables())
        self.stage = stage
        self.train_function = None

    # -- steps ----------------------------------------------------------------
    def _log(self, terms):
        for k, tr in self._trackers.items():
            if k in terms:
                tr.update_state(terms[k])
        return {k: tr.result() for k, tr in self._trackers.items()}

    def _cls_terms(self, logits, emotion, emotion_mask):
        ce, labelled, masked = _masked_ce(logits, emotion, emotion_mask)
        cls = tf.reduce_sum(ce) / tf.maximum(tf.reduce_sum(labelled), 1.0)
        hit = tf.cast(tf.equal(tf.argmax(masked, -1), emotion), tf.float32)
        acc = masked_mean(hit, labelled)
        return cls, acc

    @staticmethod
    def _snapshot(layers):
        vs = [v for l in layers for v in (l.moving_mean, l.moving_variance)]
        return vs, [tf.identity(tf.convert_to_tensor(v)) for v in vs]

    @staticmethod
    def _restore(snapshot):
        for v, val in zip(*snapshot):
            v.assign(val)

    def _observe(self, data, emotion):
        self.label_set.update(data["emotion_mask"])
        seen = tf.reduce_max(tf.one_hot(emotion, NUM_CLASSES), axis=0)  # -1 -> zeros
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            seen = tf.cast(ctx.all_reduce(tf.distribute.ReduceOp.SUM, seen) > 0, tf.float32)
        self.emotions_seen.assign(tf.maximum(tf.convert_to_tensor(self.emotions_seen), seen))

    @tf.autograph.experimental.do_not_convert
    def train_step(self, data):
        if self.stage == "recognition":
            return self._train_recognition(data)
        cfg = self.cfg
        x = tf.convert_to_tensor(data["image"], tf.float32)
        emotion = tf.reshape(tf.cast(data["emotion"], tf.int64), [-1])
        mask = tf.cast(data["emotion_mask"], tf.float32)
        n = tf.shape(emotion)[0]
        sid = data.get("subject_id")
        if sid is None:
            sid = -tf.ones([n], tf.int64)
        self._observe(data, emotion)
        target, partner, pair_mask = pair_targets(
            sid, emotion, mask, cfg["pair_prob"], allowed=tf.convert_to_tensor(self.emotions_seen),
            sequence_id=data.get("sequence_id"))
        t_onehot = tf.one_hot(target, NUM_CLASSES)
        x_t = tf.gather(x, partner)
        kind = cfg["gan_loss"]

        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            fx, fy, skips = self.encode(x, training=True)
            logits = self.classifier(fx, training=True)
            fake = self.decode(fy, skips, x, t_onehot, training=True)
            pred = tf.argmax(self.label_set(tf.stop_gradient(logits)), -1)
            source = tf.where(emotion >= 0, emotion, pred)
            snap = self._snapshot(self._bn_layers())
            _, fy2, skips2 = self.encode(fake, training=True)
            cycled = self.decode(fy2, skips2, fake, tf.one_hot(source, NUM_CLASSES),
                                 training=True)
            self._restore(snap)

            cls, acc = self._cls_terms(logits, emotion, mask)
            gan_g = tf.reduce_mean(_gan_loss(self.discriminator([fake, t_onehot]), True, kind))
            dist = cfg.get("recon_loss", "l1")
            rec = masked_mean(_pixel_loss(fake, x_t, dist), pair_mask)
            cyc = tf.reduce_mean(_pixel_loss(cycled, x, dist))
            idt = tf.zeros([])
            if self.embedder is not None:
                size = int(cfg["face_embedding_arch"].get("image_size") or cfg["image_size"])
                from models.face_embedding import embed, identity_loss
                idt = tf.reduce_mean(identity_loss(
                    embed(self.embedder, fake, size),
                    tf.stop_gradient(embed(self.embedder, x, size))))
            lam_idt = tf.convert_to_tensor(self.lambda_idt)
            loss = (cls + cfg["lambda_gan"] * gan_g + cfg["lambda_rec"] * rec
                    + cfg["lambda_cyc"] * cyc + lam_idt * idt)
            if self.losses:
                loss = loss + tf.add_n(self.losses)
            # scale on the tapes: an op recorded after them has no gradient (None
            # for every variable once there is more than one replica)
            g_loss = replica_scaled(loss)

            labelled = tf.cast(emotion >= 0, tf.float32)
            d_real = _gan_loss(self.discriminator([x, tf.one_hot(emotion, NUM_CLASSES)],
                                                  training=True), True, kind)
            d_fake = _gan_loss(self.discriminator([tf.stop_gradient(fake), t_onehot],
                                                  training=True), False, kind)
            gan_d = 0.5 * (masked_mean(d_real, labelled) + tf.reduce_mean(d_fake))
            d_loss = replica_scaled(gan_d)

        g_vars = self._gen_variables()
        g_grads = g_tape.gradient(g_loss, g_vars)
        self.optimizer.apply(g_grads, g_vars)
        d_vars = self.discriminator.trainable_variables
        d_grads = d_tape.gradient(d_loss, d_vars)
        self.d_optimizer.apply(d_grads, d_vars)
        return self._log({"loss": loss, "cls_loss": cls, "accuracy": acc, "gan_g": gan_g,
                          "gan_d": gan_d, "rec": rec, "cyc": cyc, "idt": idt,
                          "pairs": tf.reduce_mean(pair_mask)})

    @tf.autograph.experimental.do_not_convert
    def _train_recognition(self, data):
        x = tf.convert_to_tensor(data["image"], tf.float32)
        emotion = tf.reshape(tf.cast(data["emotion"], tf.int64), [-1])
        mask = tf.cast(data["emotion_mask"], tf.float32)
        self._observe(data, emotion)
        with tf.GradientTape() as tape:
            snap = self._snapshot(self._bn_layers(("syn_",)))
            fx, _, _ = self.encode(x, training=True)
            self._restore(snap)
            logits = self.classifier(fx, training=True)
            cls, acc = self._cls_terms(logits, emotion, mask)
            scaled = replica_scaled(cls)
        rec_vars = self._rec_variables()
        grads = tape.gradient(scaled, rec_vars)
        self.fes_optimizer.apply(grads, rec_vars)
        logs = self._log({"loss": cls, "cls_loss": cls, "accuracy": acc})
        return {k: logs[k] for k in ("loss", "cls_loss", "accuracy")}

    @tf.autograph.experimental.do_not_convert
    def test_step(self, data):
        x = tf.convert_to_tensor(data["image"], tf.float32)
        emotion = tf.reshape(tf.cast(data["emotion"], tf.int64), [-1])
        fx, _, _ = self.encode(x, training=False)
        logits = self.classifier(fx, training=False)
        cls, acc = self._cls_terms(logits, emotion, data["emotion_mask"])
        logs = self._log({"loss": cls, "cls_loss": cls, "accuracy": acc})
        return {k: logs[k] for k in ("loss", "cls_loss", "accuracy")}

    def predict_step(self, data):
        return self(data["image"] if isinstance(data, dict) else data, training=False)


# --------------------------------------------------------------------------- #
# callbacks / helpers
# --------------------------------------------------------------------------- #
class IdentityLambdaRamp(keras.callbacks.Callback):
    """``lambda4`` (identity-loss weight) ramps linearly from ``start`` at epoch
    0 to ``end`` at epoch ``epochs - 1`` (then stays)."""

    def __init__(self, start: float, end: float, epochs: int):
        super().__init__()
        self.start, self.end, self.epochs = float(start), float(end), max(int(epochs), 1)

    def value(self, epoch: int) -> float:
        if self.epochs <= 1:
            return self.end
        frac = min(max(epoch, 0) / (self.epochs - 1), 1.0)
        return self.start + (self.end - self.start) * frac

    def on_epoch_begin(self, epoch, logs=None):
        if hasattr(self.model, "lambda_idt"):
            self.model.lambda_idt.assign(self.value(epoch))


def gate_maps(model: FERSNetModel, images,
              batch_size: int = 64) -> Dict[str, Dict[str, np.ndarray]]:
    """ConvFLU gates of each transfer block for ``images`` (numpy, for plots).

    Returns ``{"block1": {"r_x", "z_x", "r_y", "z_y"}, ...}``: ``r_x`` the
    leaky gate on what the recognition stream takes from the synthesis stream
    (channels of f_y), ``z_x`` its memory gate (channels of f_x), ``r_y`` /
    ``z_y`` the same for the synthesis stream; each ``[N, h, w, c]``.
    """
    enc = model.encoder
    outs = {}
    for k in range(1, len(model.cfg["filters"]) + 1):
        o = enc.get_layer(f"transfer{k}").output
        outs[f"block{k}"] = {"r_x": o[2], "z_x": o[3], "r_y": o[4], "z_y": o[5]}
    gm = keras.Model(enc.input, outs)
    images = np.asarray(images, np.float32)
    parts = [gm(images[i:i + batch_size], training=False)
             for i in range(0, len(images), batch_size)]
    return {b: {g: np.concatenate([np.asarray(p[b][g]) for p in parts]) for g in parts[0][b]}
            for b in parts[0]}


def synthesize(model: FERSNetModel, images, targets, batch_size: int = 64) -> np.ndarray:
    """``G(images, targets)`` as numpy ``[N,S,S,1]`` in [0, 1] (batched)."""
    images = np.asarray(images, np.float32)
    targets = np.asarray(targets, np.int64)
    fn = tf.function(lambda im, t: model.synthesize(im, t, training=False), reduce_retracing=True)
    out = [np.asarray(fn(images[i:i + batch_size], targets[i:i + batch_size]))
           for i in range(0, len(images), batch_size)]
    if not out:
        s = int(model.cfg["image_size"])
        return np.zeros((0, s, s, 1), np.float32)
    return np.concatenate(out)


def capture_sequences(samples: Sequence[contract.FaceSample]) -> List[Dict[int, int]]:
    """``[{expression: sample index}]``, one dict per capture sequence
    (subject + ``sequence``; samples without a label are left out)."""
    groups: Dict[Tuple[str, str], Dict[int, int]] = {}
    for i, s in enumerate(samples):
        if s.emotion >= 0:
            groups.setdefault((s.subject, s.sequence), {})[int(s.emotion)] = i
    return list(groups.values())


def aligned_synthesis_jobs(samples: Sequence[contract.FaceSample]) -> np.ndarray:
    """``[N, 3]`` int64 ``(source index, target expression, real target index)``:
    every ordered pair of different expressions within each capture sequence
    (same face, pose and light: the real target is pixel-aligned)."""
    jobs = [(g[a], b, g[b]) for g in capture_sequences(samples) for a in g for b in g
            if a != b]
    return np.asarray(jobs, np.int64).reshape(-1, 3)


def synthesis_scores(oracle, x, labels, fakes, jobs,
                     n_expressions: int = len(contract.BASIC7)) -> Dict[str, float]:
    """How a frozen expression ``oracle`` (a model returning ``probabilities``)
    reads the fakes ``G(x[src], t)`` of :func:`aligned_synthesis_jobs` ``jobs``.

    ``hit``: argmax is the target (chance ``1 / n_expressions``);
    ``hit_excluding_source``: the same with the source's own expression left
    out of the argmax (chance ``1 / (n_expressions - 1)``: a blur that only
    flattens the oracle's output stays at chance); ``p_target_fake`` against
    ``p_target_real_source`` (the target's probability on the real source);
    ``p_source_*`` likewise; ``l1_fake_target`` against ``l1_source_target``
    (below: G drew some of the real change) and ``l1_fake_source`` (how much
    G changed).  ``labels``: the real faces' expressions.
    """
    src, tgt, real = np.asarray(jobs).T
    x, fakes, labels = np.asarray(x), np.asarray(fakes), np.asarray(labels)
    p_fake = np.asarray(oracle(fakes)["probabilities"])
    p_real = np.asarray(oracle(x)["probabilities"])
    rows = np.arange(len(tgt))
    own = labels[src]
    without_source = p_fake.copy()
    without_source[rows, own] = -1.0
    return {
        "pairs": int(len(tgt)),
        "hit": float((p_fake.argmax(-1) == tgt).mean()),
        "chance": 1.0 / n_expressions,
        "hit_excluding_source": float((without_source.argmax(-1) == tgt).mean()),
        "chance_excluding_source": 1.0 / (n_expressions - 1),
        "p_target_fake": float(p_fake[rows, tgt].mean()),
        "p_target_real_source": float(p_real[src, tgt].mean()),
        "p_source_fake": float(p_fake[rows, own].mean()),
        "p_source_real_source": float(p_real[src, own].mean()),
        "oracle_acc_real": float((p_real.argmax(-1) == labels).mean()),
        "l1_fake_target": float(np.abs(fakes - x[real]).mean()),
        "l1_source_target": float(np.abs(x[src] - x[real]).mean()),
        "l1_fake_source": float(np.abs(fakes - x[src]).mean()),
    }


def expression_oracle(samples: Sequence[contract.FaceSample], size: int, epochs: int = 6,
                      seed: int = 1):
    """A frozen expression *oracle* to judge fakes with: the project's baseline
    CNN (``small`` preset at ``size`` px, no mirror or crop) trained
    ``epochs`` on the real ``samples``; returns its inference model."""
    from models import training

    method, model, cfg, _ = training.train(
        "baseline", list(samples), preset="small", epochs=epochs, seed=seed,
        overrides={"image_size": size, "flip": False, "crop_padding": 0})
    return method.inference_model(model, cfg)


def judge_synthesis(model: FERSNetModel, oracle, samples: Sequence[contract.FaceSample]):
    """Synthesize every :func:`aligned_synthesis_jobs` job of ``samples`` and
    score the fakes with ``oracle`` (:func:`synthesis_scores`).  Returns
    ``(scores, x, fakes, jobs)``; ``x``: the real faces at the model's size."""
    x = _decode_to_size(samples, int(model.cfg["image_size"]))
    jobs = aligned_synthesis_jobs(samples)
    fakes = synthesize(model, x[jobs[:, 0]], jobs[:, 1])
    scores = synthesis_scores(oracle, x, [s.emotion for s in samples], fakes, jobs)
    return scores, x, fakes, jobs


def _decode_to_size(samples: Sequence[contract.FaceSample], size: int) -> np.ndarray:
    from models.preprocessing import decode_image

    out = []
    for i in range(0, len(samples), 256):
        chunk = tf.constant([s.image for s in samples[i:i + 256]])
        out.append(decode_image(chunk, size).numpy())
    return np.concatenate(out) if out else np.zeros((0, size, size, 1), np.float32)


def present_emotions(emotion, group) -> Dict[Any, set]:
    """``group -> {emotions with at least one labelled sample}`` (groups are
    dataset names or ``dataset_id`` values)."""
    present: Dict[Any, set] = {}
    for e, g in zip(np.asarray(emotion).tolist(), list(group)):
        if e >= 0:
            present.setdefault(g, set()).add(int(e))
    return present


def fes_jobs(emotion, emotion_mask, group, present: Dict[Any, set],
             emotions: Optional[Sequence[Union[int, str]]] = None) -> List[Tuple[int, int]]:
    """``(row, target)`` pairs of FES augmentation: for each labelled row every
    target of its label set (``emotion_mask``) other than its own emotion, among
    ``emotions`` (indices or names) or, by default, the emotions ``present`` in
    the row's group."""
    fixed = None
    if emotions is not None:
        fixed = {int(e) if isinstance(e, (int, np.integer)) else contract.canonical_emotion(e)
                 for e in emotions}
    jobs: List[Tuple[int, int]] = []
    for i, (e, m, g) in enumerate(zip(np.asarray(emotion).tolist(), np.asarray(emotion_mask),
                                      list(group))):
        if e < 0:
            continue
        wanted = fixed if fixed is not None else present.get(g, set())
        jobs += [(i, int(t)) for t in np.flatnonzero(m) if int(t) != e and int(t) in wanted]
    return jobs


def synthesize_balanced_arrays(model: FERSNetModel, data: tf.data.Dataset,
                               emotions: Optional[Sequence[Union[int, str]]] = None,
                               batch_size: int = 64) -> Dict[str, np.ndarray]:
    """FES augmentation on a *finite* dataset of model-input batches (what the
    TFX Trainer reads): the same rule as :func:`synthesize_balanced`, with
    ``dataset_id`` as the dataset. Two passes (the first finds the emotions
    present per dataset). Returns model-input arrays of the synthesized faces:
    ``image`` (uint8 ``[N,S,S,1]``, to save memory), ``emotion``,
    ``emotion_mask``, ``dataset_id``, ``subject_id``."""
    def group_of(batch):
        if "dataset_id" in batch:
            return np.asarray(batch["dataset_id"]).reshape(-1)
        return np.zeros(np.asarray(batch["emotion"]).reshape(-1).shape, np.int64)

    emo, grp = [], []
    for batch in data:
        emo.append(np.asarray(batch["emotion"]).reshape(-1))
        grp.append(group_of(batch))
    present = present_emotions(np.concatenate(emo), np.concatenate(grp).tolist()) if emo else {}
    keys = ("emotion", "emotion_mask", "dataset_id", "subject_id")
    out: Dict[str, List[np.ndarray]] = {k: [] for k in ("image",) + keys}
    for batch in data:
        e = np.asarray(batch["emotion"]).reshape(-1)
        mask = np.asarray(batch["emotion_mask"])
        jobs = fes_jobs(e, mask, group_of(batch).tolist(), present, emotions)
        if not jobs:
            continue
        rows = np.asarray([j[0] for j in jobs])
        targets = np.asarray([j[1] for j in jobs], np.int64)
        fakes = synthesize(model, np.asarray(batch["image"])[rows], targets, batch_size)
        out["image"].append(np.rint(np.clip(fakes, 0, 1) * 255.0).astype(np.uint8))
        out["emotion"].append(targets)
        out["emotion_mask"].append(mask[rows].astype(np.float32))
        for k in ("dataset_id", "subject_id"):
            v = batch.get(k)
            out[k].append(np.asarray(v).reshape(-1)[rows].astype(np.int64) if v is not None
                          else -np.ones(len(rows), np.int64))
    if not out["image"]:
        s = int(model.cfg["image_size"])
        return {"image": np.zeros((0, s, s, 1), np.uint8), "emotion": np.zeros(0, np.int64),
                "emotion_mask": np.zeros((0, NUM_CLASSES), np.float32),
                "dataset_id": np.zeros(0, np.int64), "subject_id": np.zeros(0, np.int64)}
    return {k: np.concatenate(v) for k, v in out.items()}


def fes_training_dataset(data: tf.data.Dataset, fes: Dict[str, np.ndarray], batch_size: int,
                         augment=None, seed: int = 0) -> Tuple[tf.data.Dataset, int]:
    """``(dataset, steps_per_epoch)``: real batches of ``data`` and the
    synthesized ``fes`` arrays mixed in proportion to their sizes, shuffled,
    re-batched (keys ``image``, ``emotion``, ``emotion_mask``, ``dataset_id``,
    ``subject_id``), ``augment`` applied; one epoch covers both once."""
    keys = ("emotion", "emotion_mask", "dataset_id", "subject_id")

    def select(batch):
        n = tf.shape(batch["emotion"])[0]
        out = {"image": tf.cast(batch["image"], tf.float32),
               "emotion": tf.reshape(tf.cast(batch["emotion"], tf.int64), [-1]),
               "emotion_mask": tf.cast(batch["emotion_mask"], tf.float32)}
        for k in ("dataset_id", "subject_id"):
            out[k] = (tf.reshape(tf.cast(batch[k], tf.int64), [-1]) if k in batch
                      else -tf.ones([n], tf.int64))
        return out

    real = data.map(select).unbatch()
    n_real = int(real.reduce(np.int64(0), lambda c, _: c + 1))
    n_fes = len(fes["emotion"])
    synth = tf.data.Dataset.from_tensor_slices({"image": fes["image"],
                                               **{k: fes[k] for k in keys}})
    synth = synth.map(lambda d: {**d, "image": tf.cast(d["image"], tf.float32) / 255.0})
    parts = [real.shuffle(4096, seed=seed).repeat()]
    weights = [float(n_real)]
    if n_fes:
        parts.append(synth.shuffle(min(n_fes, 16384), seed=seed).repeat())
        weights.append(float(n_fes))
    mixed = tf.data.Dataset.sample_from_datasets(parts, weights=[w / sum(weights)
                                                                 for w in weights], seed=seed)
    ds = mixed.batch(batch_size, drop_remainder=True)
    if augment is not None:
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE), max((n_real + n_fes) // batch_size, 1)


def synthesize_balanced(model: FERSNetModel, samples: Iterable[contract.FaceSample],
                        emotions: Optional[Sequence[Union[int, str]]] = None,
                        batch_size: int = 64) -> List[contract.FaceSample]:
    """FES data augmentation: every other expression for each labelled face.

    For each sample with an emotion, one face is synthesized for every target
    expression of its label set (``emotion_mask``) other than its own,
    restricted to ``emotions`` (default: the expressions present among the
    labelled ``samples`` of the same dataset).  Real + synthesized data then
    hold exactly one image per face in every class (balanced).  New samples:
    ``dataset`` ``<dataset>_fes``, ``uid`` ``<uid>_fes_<emotion>``, same
    ``subject``/``domain``/``split``/label set, no AU or landmark labels;
    images are PNG at ``image_size``.
    """
    samples = [s for s in samples if s.emotion >= 0]
    if not samples:
        return []
    groups = [s.dataset for s in samples]
    jobs = fes_jobs(np.asarray([s.emotion for s in samples]),
                    np.stack([s.emotion_mask for s in samples]), groups,
                    present_emotions([s.emotion for s in samples], groups), emotions)
    if not jobs:
        return []
    size = int(model.cfg["image_size"])
    images = _decode_to_size(samples, size)
    idx = np.asarray([j[0] for j in jobs])
    tgt = np.asarray([j[1] for j in jobs], np.int64)
    fakes = synthesize(model, images[idx], tgt, batch_size)
    out = []
    for (i, t), img in zip(jobs, fakes):
        s = samples[i]
        out.append(contract.FaceSample(
            image=contract.encode_png(np.rint(np.clip(img[..., 0], 0, 1) * 255.0)),
            dataset=f"{s.dataset}_fes", uid=f"{s.uid}_fes_{contract.EMOTIONS[t]}",
            emotion=t, emotion_mask=s.emotion_mask, subject=s.subject, domain=s.domain,
            split=s.split, sequence=s.sequence))
    return out


def fine_tune_with_fes(model: FERSNetModel, cfg: Dict[str, Any], data,
                       epochs: Optional[int] = None, batch_size: Optional[int] = None,
                       datasets: Sequence[str] = (), validation_data=None, callbacks=(),
                       seed: int = 0, verbose=0):
    """FES augmentation then fine-tuning of the recognition stream.

    ``data``: the labelled training faces, as contract ``FaceSample`` objects
    (synthesized with :func:`synthesize_balanced`) or a *finite*
    ``tf.data.Dataset`` of model-input batches, e.g. the TFX Trainer's
    Transform output (:func:`synthesize_balanced_arrays`). Then trains the
    recognition stream (``rec_*`` blocks and classifier; ConvFLU transfers,
    synthesis stream, decoder and discriminator frozen) with ``L_cls`` on
    real + synthesized faces for ``epochs`` (default ``cfg["fes_epochs"]``)
    at ``cfg["fes_learning_rate"]``. Returns ``(history, fes)``: the
    synthesized ``FaceSample`` list or arrays; the model is left in the
    ``"joint"`` stage.
    """
    from models import inputs

    epochs = int(epochs if epochs is not None else cfg["fes_epochs"])
    batch_size = int(batch_size or cfg["batch_size"])
    aug = (lambda b: augment_batch(b, cfg)) if cfg.get("augment", True) else None
    steps = None
    if isinstance(data, tf.data.Dataset):
        fes = synthesize_balanced_arrays(model, data)
        ds, steps = fes_training_dataset(data, fes, batch_size, augment=aug, seed=seed)
        log.info("fersnet: FES fine-tuning on real + %d synthesized faces", len(fes["emotion"]))
    else:
        samples = list(data)
        fes = synthesize_balanced(model, samples)
        ds = inputs.dataset_from_samples(samples + fes, int(cfg["image_size"]), batch_size,
                                         datasets, training=True, seed=seed, augment=aug)
        log.info("fersnet: FES fine-tuning on %d real + %d synthesized faces", len(samples),
                 len(fes))
    model.set_stage("recognition")
    try:
        hist = model.fit(ds, epochs=epochs, steps_per_epoch=steps,
                         validation_data=validation_data, callbacks=list(callbacks),
                         verbose=verbose)
    finally:
        model.set_stage("joint")
    return hist, fes


# --------------------------------------------------------------------------- #
# method
# --------------------------------------------------------------------------- #
_COMMON = {
    "bn_momentum": 0.9,
    "dropout": 0.5,
    "convflu_kernel": 1,
    "fc_batchnorm": True,
    "label_units": 64,
    "label_channels": 8,
    "gan_loss": "bce",
    "lambda_gan": 0.3,
    "lambda_rec": 1.0,
    "lambda_cyc": 0.5,
    "lambda_idt_start": 0.1,
    "lambda_idt_end": 0.5,
    "idt_ramp_epochs": 10,
    "pair_prob": 1.0,
    "batch_group_size": 2,
    "decoder_skips": False,
    "residual_output": False,
    "synthesis_batchnorm": True,
    "synthesis_activation": "relu",
    "decoder_batchnorm": True,
    "decoder_activation": "relu",
    "recon_loss": "l1",
    "beta_1": 0.5,
    "augment": True,
    "mirror": True,
    "max_rotation": 15,
    "rotation_step": 5,
    "face_embedding_weights": "",
    "face_embedding_arch": None,
    "fes_augment": False,
    "fes_epochs": 3,
    "fes_learning_rate": 2e-4,
}


class FERSNet(Method):
    """FERSNet (Zhao et al., ICPR 2020); see the module docstring."""

    name = "fersnet"
    presets = {
        "small": {
            **_COMMON,
            "image_size": 64,
            "crop_from": 64,                    # mirror only: no shift, no rotation
            "max_rotation": 0,
            "filters": [12, 24, 32, 48],
            "decoder_filters": [48, 32, 24, 12],
            "fc_units": 64,
            "dropout": 0.3,
            "disc_filters": [16, 32, 32],
            "learning_rate": 1e-3,
            "d_learning_rate": 2e-3,
            "batch_size": 16,
            "epochs": 8,
            # ours, not the paper's (module docstring, "Decoder" and
            # "Synthesis side of the small preset"):
            "decoder_skips": True,
            "residual_output": True,
            "synthesis_batchnorm": False,
            "synthesis_activation": "leaky_relu",
            "decoder_batchnorm": False,
            "decoder_activation": "leaky_relu",
            "recon_loss": "l2",
            "lambda_rec": 100.0,
            "lambda_cyc": 5.0,
        },
        "paper": {
            **_COMMON,
            "image_size": 96,
            "crop_from": 110,
            "filters": [32, 64, 128, 256],
            "decoder_filters": [256, 128, 64, 32],
            "convflu_kernel": 3,
            "fc_units": 1024,
            "label_units": 256,
            "label_channels": 32,
            "disc_filters": [64, 128, 256],
            "learning_rate": 2e-4,
            "d_learning_rate": 2e-4,
            "batch_size": 32,
            "epochs": 60,
            "idt_ramp_epochs": 30,
        },
    }

    def build(self, cfg: Dict[str, Any]) -> keras.Model:
        model = FERSNetModel(cfg, name="fersnet")
        model.compile()
        return model

    def inference_model(self, model: keras.Model, cfg: Dict[str, Any]) -> keras.Model:
        size = int(cfg["image_size"])
        image = keras.Input((size, size, 1), name="image")
        fx = model.encoder(image)[0]
        logits = model.classifier(fx)
        probs = keras.layers.Softmax(name="probabilities")(model.label_set(logits))
        return keras.Model(image, {"probabilities": probs, "logits": logits},
                           name="fersnet_inference")

    def extra_signatures(self, model: keras.Model, cfg: Dict[str, Any]) -> Dict[str, Any]:
        size = int(cfg["image_size"])

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 1], tf.float32,
                                                    name="image"),
                                      tf.TensorSpec([None], tf.int64, name="target")])
        def synthesize_fn(image, target):
            image = tf.clip_by_value(image, 0.0, 1.0)
            target = tf.clip_by_value(target, 0, NUM_CLASSES - 1)
            return {"image": model.synthesize(image, target, training=False)}

        return {"synthesize": synthesize_fn}

    def augment(self, batch: Dict[str, Any], cfg: Dict[str, Any]) -> Dict[str, Any]:
        if not cfg.get("augment", True):
            return batch
        return augment_batch(batch, cfg)

    def callbacks(self, cfg: Dict[str, Any], steps_per_epoch: int):
        return [IdentityLambdaRamp(cfg["lambda_idt_start"], cfg["lambda_idt_end"],
                                   cfg["idt_ramp_epochs"])]

    def post_fit(self, model: keras.Model, cfg: Dict[str, Any],
                 train_samples: Optional[Sequence[contract.FaceSample]] = None,
                 train_data: Optional[tf.data.Dataset] = None, **kwargs):
        """Trainer hook: FES fine-tuning when ``cfg["fes_augment"]``, on the
        training ``FaceSample`` list or else a finite dataset of model-input
        batches (the TFX Trainer passes its Transform output); returns the
        fine-tuning history or None."""
        if not cfg.get("fes_augment"):
            return None
        data = train_samples if train_samples else train_data
        if data is None:
            raise ValueError("fersnet: fes_augment is set but the trainer passed no training "
                             "data to post_fit")
        hist, _ = fine_tune_with_fes(model, cfg, data, datasets=cfg.get("datasets", ()),
                                     **kwargs)
        return hist
