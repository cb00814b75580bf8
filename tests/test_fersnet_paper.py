"""FERSNet against its paper: Zhao, Liu, Xiao, Lun, Lam, "Deep Multi-task
Learning for Facial Expression Recognition and Synthesis Based on Selective
Feature Sharing" (ICPR 2020).  Each equation test has a NumPy reference
written from the printed formula (quoted in its docstring), random inputs and
one hand-computed case; the preset tests compare with the paper's values
(section in a comment).  No training here."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from models import fersnet as F
from models.fersnet import losses as L
from models.fersnet.model import scheduled_learning_rate

RNG = np.random.default_rng(16)


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


# --------------------------------------------------------------------------- #
# equations
# --------------------------------------------------------------------------- #
def test_adversarial_loss_is_eq6():
    """Eq 6: ``L_GAN = E[log D(z^t, I^t)] + E[log(1 - D(z^t, G(z^t, I)))]``;
    D a PatchGAN, so ``D`` is per patch (``sigmoid`` of its logit) and the
    expectation runs over samples and patches.  Per sample: ``-mean log D``
    (real side) and ``-mean log(1 - D)`` (fake side)."""
    logits = RNG.normal(size=(5, 3, 3, 1)).astype(np.float32)
    d = _sigmoid(logits.astype(np.float64))
    real_ref = -np.log(d).mean(axis=(1, 2, 3))
    fake_ref = -np.log(1.0 - d).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(L.adversarial_loss(logits, True), real_ref, rtol=1e-5)
    np.testing.assert_allclose(L.adversarial_loss(logits, False), fake_ref, rtol=1e-5)
    # by hand: logit 0 -> D = 1/2 -> log 2 either side; logit ln 3 -> D = 3/4
    hand = np.array([0.0, np.log(3.0)], np.float32).reshape(2, 1, 1, 1)
    np.testing.assert_allclose(L.adversarial_loss(hand, True), [np.log(2), -np.log(0.75)],
                               rtol=1e-6)
    np.testing.assert_allclose(L.adversarial_loss(hand, False), [np.log(2), -np.log(0.25)],
                               rtol=1e-6)
    with pytest.raises(ValueError, match="gan_loss"):
        L.adversarial_loss(hand, True, "hinge")


def _np_mean_squared_norm(a, b):
    """``1/n sum_i ||a_i - b_i||_2^2`` with the norm over the ``H W C`` values,
    as "the mean squared error" divided by ``H W C``; per sample and the mean."""
    per = np.array([np.sum((ai - bi) ** 2) for ai, bi in zip(a, b)]) / np.prod(a.shape[1:])
    return per, per.mean()


def test_reconstruction_loss_is_eq7():
    """Eq 7: ``L_rec = 1/n sum_i ||G(z^t, I_i) - I_i^t||_2^2``, "the mean
    squared error between the target and the synthetic facial image"."""
    fake, target = (RNG.uniform(size=(4, 6, 5, 1)).astype(np.float32) for _ in range(2))
    per, mean = _np_mean_squared_norm(fake, target)
    out = np.asarray(L.reconstruction_loss(fake, target))
    np.testing.assert_allclose(out, per, rtol=1e-5)
    assert out.mean() == pytest.approx(mean, rel=1e-5)
    # by hand, 2 x 2 images: [[0, 1], [1, 0]] against 0 -> 2 / 4; 0.5 everywhere -> 1 / 4
    g = np.array([[[0, 1], [1, 0]], [[0.5, 0.5], [0.5, 0.5]]], np.float32)[..., None]
    np.testing.assert_allclose(L.reconstruction_loss(g, np.zeros_like(g)), [0.5, 0.25])


def test_cycle_loss_is_eq8():
    """Eq 8: ``L_cyc = 1/n sum_i ||G(z_i, G(z^t, I_i)) - I_i||_2^2`` (the
    cycled face against the source, mean squared error as Eq 7)."""
    cycled, source = (RNG.uniform(size=(3, 4, 4, 1)).astype(np.float32) for _ in range(2))
    per, _ = _np_mean_squared_norm(cycled, source)
    np.testing.assert_allclose(L.cycle_loss(cycled, source), per, rtol=1e-5)
    # by hand: one pixel of 4 off by 0.2 -> 0.04 / 4
    c = np.zeros((1, 2, 2, 1), np.float32)
    c[0, 1, 0, 0] = 0.2
    np.testing.assert_allclose(L.cycle_loss(c, np.zeros_like(c)), [0.01], rtol=1e-6)


def test_identity_loss_is_eq9():
    """Eq 9: ``L_idt = 1/n sum_i ||f(G(z^t, I_i)) - f(I_i^t)||_2^2``, the
    squared Euclidean distance of the identity features of the fake and of
    the real target image."""
    a, b = (RNG.normal(size=(5, 7)).astype(np.float32) for _ in range(2))
    ref = np.array([np.sum((ai - bi) ** 2) for ai, bi in zip(a, b)])
    np.testing.assert_allclose(L.identity_loss(a, b), ref, rtol=1e-5)
    # by hand: (1, 2, 0) vs (0, 0, 2) -> 1 + 4 + 4; (0.5, 0, 0) vs 0 -> 0.25
    hand = L.identity_loss([[1.0, 2.0, 0.0], [0.5, 0.0, 0.0]], [[0.0, 0.0, 2.0], [0.0] * 3])
    np.testing.assert_allclose(hand, [9.0, 0.25])


def test_discriminator_accuracy_by_hand():
    """Right calls: real with mean patch logit > 0, fake with < 0; the mean
    of the two rates.  Reals (+1, -1, +2) with the second masked out: 2/2;
    fakes (-1, +1, -3, -2): 3/4 -> (1 + 0.75) / 2."""
    real = np.array([1.0, -1.0, 2.0], np.float32).reshape(3, 1, 1, 1)
    fake = np.array([-1.0, 1.0, -3.0, -2.0], np.float32).reshape(4, 1, 1, 1)
    acc = L.discriminator_accuracy(real, fake, real_weights=[1.0, 0.0, 1.0])
    assert float(acc) == pytest.approx(0.875)
    assert float(L.discriminator_accuracy(real, fake)) == pytest.approx((2 / 3 + 0.75) / 2)


def test_objective_is_eq10_with_eq9_against_the_target():
    """Eq 10: ``L = L_cls + l1 L_GAN + l2 L_rec + l3 L_cyc + l4 L_idt`` with
    the paper's ``l1, l2, l3 = 0.3, 1, 0.5`` (Sec. IV-A); ``L_rec`` and
    ``L_idt`` over the samples that have a real target ``I^t`` (the partner
    row), ``L_idt`` on ``f(I^t)``, not on ``f(I)``."""
    cfg = F.FERSNet().config("small", lambda_rec=1.0, lambda_cyc=0.5)
    model = F.FERSNetModel(cfg)
    n, s = 6, cfg["image_size"]
    x = tf.constant(RNG.uniform(size=(n, s, s, 1)).astype(np.float32))
    emotion = tf.constant([0, 3, 1, 4, 6, 2], tf.int64)
    mask = tf.ones([n, 8])
    partner = tf.constant([1, 0, 3, 2, 4, 5], tf.int64)       # rows 4, 5: no target image
    pair_mask = tf.constant([1, 1, 1, 1, 0, 0], tf.float32)
    target = tf.constant([3, 0, 4, 1, 5, 0], tf.int64)
    model.lambda_idt.assign(0.3)
    t = model.objective(x, emotion, mask, target, partner, pair_mask, training=False)
    fake, xs = np.asarray(t["fake"]), np.asarray(x)
    np.testing.assert_allclose(fake, model.synthesize(x, target), atol=1e-5)
    paired = np.asarray(pair_mask) > 0
    p = np.asarray(partner)
    rec = ((fake - xs[p]) ** 2).mean(axis=(1, 2, 3))[paired].mean()
    assert float(t["rec"]) == pytest.approx(rec, rel=1e-4)
    cycled = np.asarray(model.synthesize(t["fake"], emotion))
    assert float(t["cyc"]) == pytest.approx(((cycled - xs) ** 2).mean(), rel=1e-4)

    def f(images):
        return np.asarray(model._embed(tf.constant(images)))

    idt = ((f(fake) - f(xs[p])) ** 2).sum(-1)[paired].mean()
    idt_source = ((f(fake) - f(xs)) ** 2).sum(-1)[paired].mean()
    assert float(t["idt"]) == pytest.approx(idt, rel=1e-4)
    assert abs(idt - idt_source) > 1e-3 * idt          # the test can tell target from source
    total = (float(t["cls_loss"]) + 0.3 * float(t["gan_g"]) + 1.0 * rec + 0.5 * float(t["cyc"])
             + 0.3 * idt)
    assert float(t["loss"]) == pytest.approx(total, rel=1e-4)
    assert 0.0 <= float(t["d_acc"]) <= 1.0


# --------------------------------------------------------------------------- #
# the paper preset
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def paper():
    method = F.FERSNet()
    cfg = method.config("paper")
    cfg["schedule_steps"] = 1000            # set by the training core before build
    return cfg, method.build(cfg)


def test_paper_preset_values(paper):
    cfg, _ = paper
    # Sec. IV-A: aligned faces resized to 110 x 110, random 96 x 96 crops, random
    # mirroring and rotation in {-15, -10, ..., 15} degrees
    assert (cfg["image_size"], cfg["crop_from"], cfg["mirror"]) == (96, 110, True)
    assert (cfg["max_rotation"], cfg["rotation_step"]) == (15, 5)
    # Sec. IV-A: "The number of filters is fixed to 256" in the FER and FES extractors
    assert cfg["filters"] == [256] * 4 and cfg["decoder_filters"] == [256] * 4
    # Sec. IV-A: ConvFLU kernels 1 x 1 with padding 0
    assert cfg["convflu_kernel"] == 1
    # Sec. IV-A: decoder blocks = encoder blocks with the pooling replaced by deconvolution
    assert cfg["decoder_block"] == "paper"
    # Sec. IV-A: batch 64, Adam, lr from 1e-3 to 1e-5 within 500 epochs
    assert (cfg["batch_size"], cfg["epochs"], cfg["learning_rate"]) == (64, 500, 1e-3)
    # Sec. IV-A: lambda1, lambda2, lambda3 = 0.3, 1, 0.5; lambda4 0.1 -> 0.5 during training
    assert (cfg["lambda_gan"], cfg["lambda_rec"], cfg["lambda_cyc"]) == (0.3, 1.0, 0.5)
    assert (cfg["lambda_idt_start"], cfg["lambda_idt_end"]) == (0.1, 0.5)
    assert cfg["idt_ramp_epochs"] is None                  # ramp over the whole fit
    # Sec. III-C, Eq 6: the log-likelihood GAN loss
    assert cfg["gan_loss"] == "bce"


def test_paper_learning_rate_decays_from_1e3_to_1e5(paper):
    """Sec. IV-A: "the learning rate is set to decrease from 10^-3 to 10^-5"
    over the training: Adam's rate at step 0 and at the fit's last step."""
    cfg, model = paper
    opt = model.optimizer
    assert type(opt).__name__ == "FusedAdam"
    assert float(opt.learning_rate) == pytest.approx(1e-3)
    opt.iterations.assign(cfg["schedule_steps"])
    assert float(opt.learning_rate) == pytest.approx(1e-5, rel=1e-4)
    opt.iterations.assign(cfg["schedule_steps"] // 2)
    assert float(opt.learning_rate) == pytest.approx(1e-4, rel=1e-4)
    opt.iterations.assign(0)
    with pytest.raises(ValueError, match="schedule_steps"):
        scheduled_learning_rate({k: v for k, v in cfg.items() if k != "schedule_steps"})


def test_paper_preset_architecture(paper):
    """Sec. IV-A: four blocks of 2 x (conv3x3-BN-ReLU) + 2x2/2 max pooling per
    encoder stream, ConvFLU 1 x 1 between them, decoder blocks of
    2 x (conv3x3-BN-ReLU) + 2x2/2 deconvolution, two FC layers to E logits."""
    cfg, model = paper
    fx, fy = model.encoder.outputs
    assert tuple(fx.shape) == tuple(fy.shape) == (None, 6, 6, 256)
    flu = model.encoder.get_layer("transfer1").flu_x
    assert tuple(flu.w_r.shape) == (1, 1, 512, 256) and tuple(flu.u.shape) == (1, 1, 256, 256)
    enc = {layer.name: layer for layer in model.encoder.layers}
    for stream in ("rec", "syn"):
        for k in range(1, 5):
            for j in (1, 2):
                conv = enc[f"{stream}_b{k}_{j}_conv"]
                assert conv.kernel_size == (3, 3) and conv.filters == 256
                assert f"{stream}_b{k}_{j}_bn" in enc and f"{stream}_b{k}_{j}_relu" in enc
            assert enc[f"{stream}_b{k}_pool"].pool_size == (2, 2)
    dec = {layer.name: layer for layer in model.decoder.layers}
    for k in range(1, 5):
        for j in (1, 2):
            assert dec[f"dec{k}_{j}_conv"].kernel_size == (3, 3)
            assert f"dec{k}_{j}_bn" in dec and f"dec{k}_{j}_relu" in dec
        up = dec[f"dec{k}_up"]
        assert type(up).__name__ == "Conv2DTranspose"
        assert up.kernel_size == (2, 2) and up.strides == (2, 2) and up.filters == 256
    assert tuple(model.decoder.output.shape) == (None, 96, 96, 1)
    dense = [layer for layer in model.classifier.layers if type(layer).__name__ == "Dense"]
    assert len(dense) == 2 and dense[-1].units == 8
    # pix2pix's 70 x 70 PatchGAN [7]: three stride-2 convs and a stride-1 one before the logits
    assert model.discriminator.output.shape[1:] == (12, 12, 1)


def test_identity_ramp_spans_the_fit():
    """Sec. IV-A: lambda4 "0.1 at the beginning, and is gradually increased to
    0.5 during the training process": with ``idt_ramp_epochs`` None the ramp
    spans the fit (``schedule_steps / steps_per_epoch`` epochs)."""
    cfg = {**F.FERSNet().config("small"), "schedule_steps": 50}
    ramp, = F.FERSNet().callbacks(cfg, steps_per_epoch=10)
    assert ramp.epochs == 5
    assert [round(ramp.value(e), 3) for e in range(5)] == [0.1, 0.2, 0.3, 0.4, 0.5]
