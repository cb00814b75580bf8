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
  discriminator (:class:`models.optimizers.FusedAdam`, Keras Adam maths in
  one op per variable); learning rates are ours.  Batch normalization of the
  conv layers uses :class:`models.layers.FusedBatchNorm` (Keras BN maths,
  TF's fused kernel).

Modules of this package:

* :mod:`~models.fersnet.networks` -- encoder streams with the ConvFLU
  transfers, classifier, label transformer + decoder, discriminator;
* :mod:`~models.fersnet.losses` -- ``L_GAN`` and the pixel losses of
  ``L_rec`` / ``L_cyc`` (``L_cls``: :mod:`models.losses.classification`);
* :mod:`~models.fersnet.pairing` -- target selection in the batch;
* :mod:`~models.fersnet.augmentation` -- the per-subject augmentation;
* :mod:`~models.fersnet.model` -- the training model, the ``lambda4`` ramp,
  gate maps and batched synthesis;
* :mod:`~models.fersnet.fes` -- FES augmentation and fine-tuning;
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
