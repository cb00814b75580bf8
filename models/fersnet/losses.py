"""FERSNet's loss terms, one plain function per equation of Zhao et al. (ICPR
2020), Sec. III-C; the training model (:mod:`models.fersnet.model`) calls them.
``L_cls`` (Eq 5) is :func:`models.losses.classification.masked_softmax_cross_entropy`.
Every function returns one value per sample; the ``1/n sum_i`` of the
equations is the model's (masked) batch mean.  The reading of each equation
is in docs/methods.md, section FERSNet."""

from __future__ import annotations

import tensorflow as tf

GAN_LOSSES = ("bce", "lsgan")


def adversarial_loss(logits, real: bool, kind: str = "bce"):
    """Eq 6, one side per sample: ``L_GAN = E[log D(z^t, I^t)] + E[log(1 - D(z^t, G(z^t, I)))]``.

    ``logits``: the PatchGAN's patch logits ``[B, h, w, 1]``, ``D = sigmoid``.
    ``"bce"`` is Eq 6: ``-log D`` for ``real`` and ``-log(1 - D)`` otherwise
    (the discriminator minimises their sum; the generator minimises the
    ``real`` side on its fakes, Goodfellow et al.'s non-saturating form);
    ``"lsgan"`` is ``(logit - 1)^2`` / ``logit^2`` instead (an option, not the
    paper's). Averaged over the patches, as pix2pix does."""
    if kind == "lsgan":
        per = tf.square(logits - (1.0 if real else 0.0))
    elif kind == "bce":
        labels = tf.ones_like(logits) if real else tf.zeros_like(logits)
        per = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    else:
        raise ValueError(f"fersnet: gan_loss must be one of {GAN_LOSSES}, got {kind!r}")
    return tf.reduce_mean(per, axis=[1, 2, 3])


def _mean_squared_error(a, b):
    """Per-sample mean over pixels and channels of ``(a - b)^2``."""
    return tf.reduce_mean(tf.square(tf.cast(a, tf.float32) - tf.cast(b, tf.float32)),
                          axis=[1, 2, 3])


def reconstruction_loss(synthesized, target):
    """Eq 7 per sample: ``||G(z^t, I_i) - I_i^t||_2^2``, "the mean squared
    error between the target and the synthetic facial image", so divided by
    the number of pixels ``H W C`` (the constant ``H W`` that ``lambda_2``
    absorbs; PyTorch's ``MSELoss``).  ``synthesized``, ``target``: ``[B, H, W, C]``."""
    return _mean_squared_error(synthesized, target)


def cycle_loss(cycled, source):
    """Eq 8 per sample: ``||G(z_i, G(z^t, I_i)) - I_i||_2^2`` divided by ``H W C``
    (as Eq 7).  ``cycled``: the fake turned back to the source expression
    ``z_i``; ``source``: ``I_i``."""
    return _mean_squared_error(cycled, source)


def identity_loss(features_synthesized, features_target):
    """Eq 9 per sample: ``||f(G(z^t, I_i)) - f(I_i^t)||_2^2``, the squared
    Euclidean distance (summed over the feature dimensions) between the
    identity features of the fake and of the real **target** image ``I_i^t``.
    ``f`` is the paper's pre-trained Light CNN; here the face embedding of
    :mod:`models.face_embedding` (docs/methods.md)."""
    d = tf.cast(features_synthesized, tf.float32) - tf.cast(features_target, tf.float32)
    return tf.reduce_sum(tf.square(d), axis=-1)


def discriminator_accuracy(real_logits, fake_logits, real_weights=None):
    """Share of the discriminator's right calls on one batch: a real image
    counts right when its mean patch logit is > 0 (``D > 0.5``), a fake when it
    is < 0; the mean of the real and the fake rates (0.5 = chance).
    ``real_weights`` ``[B]`` masks real images (e.g. unlabelled ones)."""
    real_ok = tf.cast(tf.reduce_mean(real_logits, axis=[1, 2, 3]) > 0, tf.float32)
    fake_ok = tf.cast(tf.reduce_mean(fake_logits, axis=[1, 2, 3]) < 0, tf.float32)
    if real_weights is None:
        real_rate = tf.reduce_mean(real_ok)
    else:
        w = tf.cast(real_weights, tf.float32)
        real_rate = tf.reduce_sum(real_ok * w) / tf.maximum(tf.reduce_sum(w), 1.0)
    return 0.5 * (real_rate + tf.reduce_mean(fake_ok))
