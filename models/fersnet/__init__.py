"""FERSNet: joint facial expression recognition and synthesis with selective
feature sharing.

Paper: R. Zhao, T. Liu, J. Xiao, D. P. K. Lun, K.-M. Lam, "Deep Multi-task
Learning for Facial Expression Recognition and Synthesis Based on Selective
Feature Sharing", ICPR 2020 (``../shared/papers/001_*.txt``).  What the paper
says, what this package does and why, element by element, every deviation
included: **docs/methods.md, section FERSNet**.

The objective (Sec. III-C), each term a plain function:

    L = L_cls + lambda1 L_GAN + lambda2 L_rec + lambda3 L_cyc + lambda4 L_idt        (Eq 10)

* ``L_cls`` (Eq 5): :func:`models.losses.classification.masked_softmax_cross_entropy`;
* ``L_GAN`` (Eq 6): :func:`~models.fersnet.losses.adversarial_loss` (PatchGAN);
* ``L_rec`` (Eq 7): :func:`~models.fersnet.losses.reconstruction_loss`, against
  the real target ``I^t`` (a same-face image of the batch, :func:`pair_targets`);
* ``L_cyc`` (Eq 8): :func:`~models.fersnet.losses.cycle_loss`;
* ``L_idt`` (Eq 9): :func:`~models.fersnet.losses.identity_loss` on the
  identity features ``f`` of the fake and of ``I^t``; ``f`` is
  :mod:`models.face_embedding`'s CNN standing in for the paper's pre-trained
  Light CNN (which cannot be downloaded), frozen from ``face_embedding_weights``
  or trained during the fit on the batches' subject ids;
* ConvFLU (Eqs 1-4): :mod:`models.layers.convflu`.

Modules:

* :mod:`~models.fersnet.networks` -- the two encoder streams with the ConvFLU
  transfers (or the ablations' hard sharing / recognition stream alone),
  classifier, label transformer + decoder, PatchGAN discriminator;
* :mod:`~models.fersnet.losses` -- Eqs 6-9 and the discriminator's accuracy;
* :mod:`~models.fersnet.pairing` -- target expressions and target images in the batch;
* :mod:`~models.fersnet.augmentation` -- crop / mirror / rotation, one per subject;
* :mod:`~models.fersnet.model` -- the training model (Eq 10, the
  discriminator's and the identity network's steps), the ``lambda4`` ramp,
  gate maps and batched synthesis;
* :mod:`~models.fersnet.fes` -- FES data augmentation and fine-tuning (Table VI);
* :mod:`~models.fersnet.method` -- :class:`FERSNet` with its presets.

The synthesis checks (a frozen expression oracle scoring the fakes) live in
``benchmarks/synthesis.py``.
"""

from models.fersnet.augmentation import augment_batch
from models.fersnet.fes import fine_tune_with_fes, synthesize_balanced, synthesize_balanced_arrays
from models.fersnet.method import FERSNet
from models.fersnet.model import FERSNetModel, IdentityLambdaRamp, gate_maps, synthesize
from models.fersnet.pairing import pair_targets

__all__ = [
    "FERSNet",
    "FERSNetModel",
    "IdentityLambdaRamp",
    "pair_targets",
    "augment_batch",
    "gate_maps",
    "synthesize",
    "synthesize_balanced",
    "synthesize_balanced_arrays",
    "fine_tune_with_fes",
]
