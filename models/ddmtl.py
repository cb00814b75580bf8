"""DDMTL: a siamese, shared-weight CNN trained with a reachability-weighted
softmax loss plus a contrastive loss (after Hu et al., "deep multi-task learning
to recognise subtle facial expressions").

Architecture (one branch; both branches share every weight)::

    image [B, 50, 50, 1]
      -> 4 x (Conv2D(f_b, k) + ReLU -> MaxPool 2x2 -> LRN)
      -> Flatten -> Dense(embedding_dim) + ReLU            = embedding f(x)
      -> Dense(8)                                          = logits z(x)
      -> softmax over the label space seen in training     = probabilities

Loss of one batch (Eq. 1 of our reading of the paper)::

    L = 1/|P| * sum_{k=(i,j) in P} [ W_k(x_i) SLoss(x_i) + W_k(x_j) SLoss(x_j) ]
        + beta * 1/|P| * sum_{(i,j) in P} CL(x_i, x_j)

    SLoss(x)      = masked softmax cross-entropy of z(x) (logits of emotions
                    outside the sample's ``emotion_mask`` are excluded; a
                    sample with ``emotion == -1`` contributes 0)
    CL(x_i, x_j)  = contrastive loss of the embeddings, margin m
                    (``models.losses.contrastive_loss``):
                    same * d^2 + (1 - same) * max(0, m - d)^2, d = ||f_i - f_j||
    W_k(x)        = reachability weight of x among its k nearest neighbours in
                    embedding space (``models.losses.reachability_weights``),
                    computed on the current batch (``weights_from="batch"``) or
                    against a :class:`models.losses.FeatureMemoryBank` of past
                    embeddings (``weights_from="bank"``); no gradient flows
                    through W.
    beta = 0.01, m = ``margin``.

Interpretation choices (written down because the paper leaves them open):

* **Pairs are formed inside the batch** (:func:`form_pairs`): every labelled
  sample is the anchor ``x_i`` of exactly one pair; a fraction
  ``same_pair_ratio`` of the anchors (rounded to the nearest integer count) get a
  random partner of the same emotion, the others a random partner of a different
  emotion. When the batch cannot supply a partner of the wanted kind (a class
  with a single sample, a batch with a single class) the anchor takes the other
  kind; with neither, it forms no pair.
* **The second branch reuses the batch's forward pass.** The two branches share
  every weight and the network has no stochastic layers, so ``f(x_j)`` is the
  row ``j`` of the batch's outputs; gradients are identical to running two
  towers.
* **W_k is per sample**: ``W_k(x_i)`` multiplies ``SLoss(x_i)`` and
  ``W_k(x_j)`` multiplies ``SLoss(x_j)`` (the paper writes one ``W_k`` per pair
  term; with per-sample reachability this is its natural reading). ``k`` is the
  neighbourhood size ``reach_k``.
* The sum over pairs is normalised by the number of pairs so the loss scale does
  not depend on the batch size.
* The input is standardised per image (``standardize``,
  ``models.backbones.PerImageStandardization``) before the first convolution;
  without it (and without batch norm, which the paper's net does not have) the
  small CPU configuration barely learns in the few epochs of a test.
* **Label set at inference**: the training step records the union of the
  ``emotion_mask`` of every batch (``models.loss_model.LabelSetMask``); the
  inference softmax runs over that set (untrained logits, e.g. ``contempt`` for a
  7-class dataset, get probability 0). Before any training all 8 are allowed.
* Optimiser: the paper preset uses SGD (momentum 0.9), lr 0.05, multiplied by
  ``lr_decay`` after every epoch (:meth:`DDMTL.callbacks`); the decay factor and
  the filter counts are not given in the paper and are our choice. The small
  preset uses Adam with far fewer filters so that it trains on a CPU in seconds.

Saving: like every ``models.loss_model.LossModel``, the training model
round-trips through ``save_weights``/``load_weights`` (rebuild it with
``DDMTL().build(cfg)`` first); the inference model is a plain functional model
that round-trips as ``.keras`` (its custom layers, ``LocalResponseNormalization``
and ``LabelSetMask``, are registered, so no ``custom_objects`` are needed once
``models.ddmtl`` is imported).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import keras
import numpy as np
import tensorflow as tf

from components import contract
from models import backbones
from models.base import Method
from models.layers import LocalResponseNormalization
from models.losses import FeatureMemoryBank, contrastive_loss, reachability_weights
from models.losses.classification import masked_softmax_cross_entropy
from models.optimizers import optimizer_from_cfg
from models.loss_model import LabelSetMask, LossModel

NUM_CLASSES = contract.NUM_EMOTIONS


# --------------------------------------------------------------------------
# learning-rate decay
# --------------------------------------------------------------------------
class EpochDecay(keras.callbacks.Callback):
    """``lr = lr0 * decay ** epoch`` set at the start of each epoch.

    ``epoch`` is the absolute epoch index of the fit (a resumed fit starts at
    its ``initial_epoch``) and ``lr0`` the configured learning rate, not the
    optimizer's current one (a checkpoint restores the optimizer's decayed
    learning rate), so a resumed fit continues the curve. A callback, not a
    Keras schedule: the decay steps per *epoch*, and ``build`` is told only
    the fit's total steps (``cfg["schedule_steps"]``), not the epoch length.
    """

    def __init__(self, lr0: float, decay: float):
        super().__init__()
        self.lr0 = float(lr0)
        self.decay = float(decay)

    def on_epoch_begin(self, epoch, logs=None):
        self.model.optimizer.learning_rate.assign(self.lr0 * self.decay ** epoch)


# --------------------------------------------------------------------------
# pairs, weights, loss
# --------------------------------------------------------------------------
def form_pairs(emotion, same_pair_ratio: float, seed: Optional[int] = None):
    """Form siamese pairs inside a batch.

    Returns ``(partner, same, valid)``, each ``[B]``: ``partner[i]`` is the batch
    index of ``x_j`` for anchor ``x_i``; ``same[i]`` whether the pair shares its
    emotion; ``valid[i]`` whether anchor ``i`` forms a pair at all (it has a
    label and the batch offers a partner).

    ``round(same_pair_ratio * n_labelled)`` anchors, chosen at random among those
    that *have* a same-class partner, get one; the rest get a different-class
    partner (or a same-class one when the batch holds no other class).
    Partners are drawn uniformly among the candidates (Gumbel-max).
    """
    y = tf.reshape(tf.cast(emotion, tf.int64), [-1])
    b = tf.shape(y)[0]
    labelled = y >= 0
    both = labelled[:, None] & labelled[None, :]
    eq = tf.equal(y[:, None], y[None, :])
    not_self = tf.logical_not(tf.cast(tf.eye(b), tf.bool))
    same_c = both & eq & not_self
    diff_c = both & tf.logical_not(eq)
    has_same = tf.reduce_any(same_c, axis=1)
    has_diff = tf.reduce_any(diff_c, axis=1)

    n_labelled = tf.reduce_sum(tf.cast(labelled, tf.float32))
    n_same = tf.cast(tf.round(float(same_pair_ratio) * n_labelled), tf.int32)
    u = tf.random.uniform([b], seed=seed)
    eligible = labelled & has_same
    key = tf.where(eligible, u, u + 2.0)           # eligible anchors first, random order
    rank = tf.argsort(tf.argsort(key))              # rank of each anchor in that order
    want_same = eligible & (rank < n_same)
    use_same = want_same | (eligible & tf.logical_not(has_diff))
    use_diff = labelled & tf.logical_not(use_same) & has_diff
    valid = use_same | use_diff

    cand = tf.where(use_same[:, None], same_c, diff_c)
    gumbel = -tf.math.log(-tf.math.log(
        tf.random.uniform([b, b], 1e-6, 1.0 - 1e-6, seed=None if seed is None else seed + 1)))
    scores = tf.where(cand, gumbel, tf.fill([b, b], -np.inf))
    partner = tf.where(valid, tf.argmax(scores, axis=1, output_type=tf.int32), tf.range(b))
    return partner, use_same & valid, valid


def sample_weights(embedding, emotion, k: int, bank=None):
    """Reachability weights ``W_k`` ([B], no gradient) of the labelled samples of a
    batch; unlabelled samples get 0. With ``bank`` (a
    :class:`models.losses.FeatureMemoryBank`) neighbours come from the bank."""
    emb = tf.stop_gradient(tf.cast(embedding, tf.float32))
    y = tf.reshape(tf.cast(emotion, tf.int64), [-1])
    keep = y >= 0
    idx = tf.where(keep)[:, 0]
    f, lab = tf.gather(emb, idx), tf.gather(y, idx)
    if bank is None:
        w = reachability_weights(f, lab, k=k)
    else:
        bf, bl = bank.read()
        w = reachability_weights(f, lab, k=k, bank_features=bf, bank_labels=bl)
    w = tf.stop_gradient(tf.cast(tf.reshape(w, [-1]), tf.float32))
    return tf.scatter_nd(idx[:, None], w, tf.shape(y, out_type=tf.int64))


def ddmtl_loss(logits, embedding, emotion, emotion_mask, partner, same, pair_valid,
               weights=None, beta: float = 0.01, margin: float = 1.0) -> Dict[str, tf.Tensor]:
    """Eq. 1: ``{"loss", "softmax", "contrastive", "accuracy"}`` of one batch of pairs.

    ``softmax = 1/|P| sum_(i,j) [W_i SLoss_i + W_j SLoss_j]`` and
    ``contrastive = 1/|P| sum_(i,j) CL(f_i, f_j)``; ``loss = softmax + beta *
    contrastive``. ``weights`` None means ``W = 1``.
    """
    ce = masked_softmax_cross_entropy(emotion, logits, emotion_mask)
    sl = ce["per_sample"]                     # [B]
    sl = tf.cast(tf.reshape(sl, [-1]), tf.float32)
    if weights is not None:
        sl = sl * tf.cast(tf.reshape(weights, [-1]), tf.float32)
    pv = tf.cast(pair_valid, tf.float32)
    n_pairs = tf.maximum(tf.reduce_sum(pv), 1.0)
    softmax = tf.reduce_sum(pv * (sl + tf.gather(sl, partner))) / n_pairs

    emb = tf.cast(embedding, tf.float32)
    # mean over the valid pairs (0 when there is none): pair weights = pair_valid
    cl = contrastive_loss(emb, tf.gather(emb, partner), tf.cast(same, tf.float32), margin,
                          weights=pv)
    return {"loss": softmax + beta * cl, "softmax": softmax, "contrastive": cl,
            "accuracy": ce["accuracy"]}


# --------------------------------------------------------------------------
# network
# --------------------------------------------------------------------------
def build_branch(cfg: Dict[str, Any]) -> keras.Model:
    """One siamese branch: ``image -> {"logits", "embedding", "probabilities"}``.

    ``probabilities`` is the softmax of the logits restricted to the label set
    seen in training (``models.loss_model.LabelSetMask``, layer ``label_set``)."""
    s = int(cfg["image_size"])
    image = keras.Input((s, s, 1), name="image")
    x = (backbones.PerImageStandardization(name="standardize")(image) if cfg["standardize"]
         else image)
    lrn = cfg["lrn"]
    for b, filters in enumerate(cfg["filters"]):
        x = keras.layers.Conv2D(filters, cfg["kernel_size"], padding="same", activation="relu",
                                name=f"conv{b + 1}")(x)
        x = keras.layers.MaxPooling2D(2, padding="same", name=f"pool{b + 1}")(x)
        x = LocalResponseNormalization(lrn["depth_radius"], lrn["bias"], lrn["alpha"],
                                       lrn["beta"], name=f"lrn{b + 1}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    emb = keras.layers.Dense(cfg["embedding_dim"], activation="relu", name="embedding")(x)
    logits = keras.layers.Dense(NUM_CLASSES, name="logits")(emb)
    probs = keras.layers.Softmax(name="probabilities")(LabelSetMask(name="label_set")(logits))
    return keras.Model(image, {"logits": logits, "embedding": emb, "probabilities": probs},
                       name="ddmtl_branch")


class DDMTLModel(LossModel):
    """Training model (``models.loss_model.LossModel``): the shared branch ``net``
    plus the in-batch pair forming of :func:`form_pairs` and the loss of
    :func:`ddmtl_loss`. Save/restore with ``save_weights``/``load_weights``
    (the memory bank, when used, is part of the weights)."""

    loss_terms = ("loss", "softmax", "contrastive", "same_pairs", "accuracy")

    def __init__(self, net: keras.Model, cfg: Dict[str, Any], **kwargs):
        super().__init__(net, **kwargs)
        self.cfg = dict(cfg)
        self.bank = None
        if self.cfg["weights_from"] == "bank":
            self.bank = FeatureMemoryBank(self.cfg["bank_size"], self.cfg["embedding_dim"],
                                          name="memory_bank")
        elif self.cfg["weights_from"] not in ("batch", "none"):
            raise ValueError("weights_from must be 'batch', 'bank' or 'none', got "
                             f"{self.cfg['weights_from']!r}")

    def compute_batch_loss(self, batch, outputs, training):
        cfg = self.cfg
        emotion = tf.reshape(tf.cast(batch["emotion"], tf.int64), [-1])
        partner, same, valid = form_pairs(emotion, cfg["same_pair_ratio"])
        weights = None
        if cfg["weights_from"] != "none":
            weights = sample_weights(outputs["embedding"], emotion, cfg["reach_k"],
                                     bank=self.bank)
        terms = ddmtl_loss(outputs["logits"], outputs["embedding"], emotion,
                           batch["emotion_mask"], partner, same, valid, weights,
                           cfg["beta"], cfg["margin"])
        terms["same_pairs"] = (tf.reduce_sum(tf.cast(same, tf.float32))
                               / tf.maximum(tf.reduce_sum(tf.cast(valid, tf.float32)), 1.0))
        if training:
            self.net.get_layer("label_set").update(batch["emotion_mask"])
            if self.bank is not None:
                keep = tf.where(emotion >= 0)[:, 0]
                self.bank.update(tf.gather(tf.stop_gradient(outputs["embedding"]), keep),
                                 tf.gather(emotion, keep))
        return terms


# --------------------------------------------------------------------------
# method
# --------------------------------------------------------------------------
_LRN = {"depth_radius": 2, "bias": 1.0, "alpha": 1e-4, "beta": 0.75}


class DDMTL(Method):
    """Siamese DDMTL (see the module docstring for the equations)."""

    name = "ddmtl"
    presets = {
        "small": {
            "image_size": 50,
            "standardize": True,
            "filters": [8, 16, 24, 32],
            "kernel_size": 3,
            "embedding_dim": 64,
            "lrn": dict(_LRN),
            "same_pair_ratio": 0.5,
            "beta": 0.01,
            "margin": 1.0,
            "reach_k": 5,
            "weights_from": "batch",      # batch | bank | none
            "bank_size": 512,
            "optimizer": "adam",
            "learning_rate": 2e-3,
            "momentum": 0.9,
            "lr_decay": 1.0,
            "batch_size": 32,
        },
        "paper": {
            "image_size": 50,
            "standardize": True,
            "filters": [64, 128, 256, 256],
            "kernel_size": 3,
            "embedding_dim": 1024,
            "lrn": dict(_LRN),
            "same_pair_ratio": 0.5,
            "beta": 0.01,
            "margin": 1.0,
            "reach_k": 5,
            "weights_from": "batch",
            "bank_size": 4096,
            "optimizer": "sgd",
            "learning_rate": 0.05,
            "momentum": 0.9,
            "lr_decay": 0.9,
            "batch_size": 128,
        },
    }

    def build(self, cfg: Dict[str, Any]) -> keras.Model:
        model = DDMTLModel(build_branch(cfg), cfg, name="ddmtl")
        model.compile(optimizer=optimizer_from_cfg(cfg), jit_compile=False)
        # create the optimizer slots now, eagerly: created inside the first traced
        # train step they make TF trace it twice
        model.optimizer.build(model.trainable_variables)
        return model

    def inference_model(self, model: keras.Model, cfg: Dict[str, Any]) -> keras.Model:
        """``image -> {"probabilities", "embedding"}`` (shares the branch's weights)."""
        net = model.net
        return keras.Model(net.inputs, {"probabilities": net.output["probabilities"],
                                        "embedding": net.output["embedding"]},
                           name="ddmtl_inference")

    def callbacks(self, cfg: Dict[str, Any], steps_per_epoch: int):
        if cfg.get("lr_decay", 1.0) != 1.0:
            return [EpochDecay(cfg["learning_rate"], cfg["lr_decay"])]
        return []
