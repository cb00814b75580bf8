"""DDMTL: a siamese, shared-weight CNN trained with a reweighted softmax loss
plus a contrastive loss.

Zheng, Wang, Ji, Zong, Wong, Lai, Lv, "Discriminative deep multi-task learning
for facial expression recognition" (Elsevier, 2020).

* Sec. 4, the network (one branch; both branches share every weight):
  :func:`build_branch`.
* Algorithm 1, step iv, the pairs: :func:`form_pairs` (inside the batch).
* Eqs 3-4, ``W_k``: :func:`sample_weights` (``models.losses.contrastive``).
* Eq 8, ``L = SL + beta CL``, with Eq 2 (``SL`` from Eq 1's ``SLoss``) and
  Eqs 5-7 (``CL``): :func:`ddmtl_loss`; per batch :class:`DDMTLModel`.
* Eq 9 and Sec. 4, SGD with the lr decayed per epoch: :class:`EpochDecay`.

Deviations and reading choices: docs/methods.md, section DDMTL.
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
from models.losses import (FeatureMemoryBank, PConStore, contrastive_loss, gaussian_scaling,
                           image_keys, pair_distance, reachability_distance)
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


def sample_weights(embedding, emotion, k: int, bank=None, store=None, slots=None,
                   training: bool = False):
    """``W_k`` (Eqs 3-4; ``[B]``, no gradient) of the labelled samples of a batch;
    unlabelled samples get 0.

    ``pCON_t`` is taken among the batch, or among the batch plus ``bank`` (a
    :class:`models.losses.FeatureMemoryBank`). With ``store`` (a
    :class:`models.losses.PConStore`) and ``slots`` (``[B]``,
    :func:`models.losses.image_keys`) ``G`` is applied to each sample's
    accumulated ``sum_t pCON_t / T``; ``training`` writes this step's values.
    """
    emb = tf.stop_gradient(tf.cast(embedding, tf.float32))
    y = tf.reshape(tf.cast(emotion, tf.int64), [-1])
    keep = y >= 0
    idx = tf.where(keep)[:, 0]
    f, lab = tf.gather(emb, idx), tf.gather(y, idx)
    if bank is None:
        pcon, has = reachability_distance(f, lab, k=k)
    else:
        bf, bl = bank.read()
        pcon, has = reachability_distance(f, lab, k=k, bank_features=bf, bank_labels=bl)
    if store is not None:
        if slots is None:
            raise ValueError("sample_weights: a PConStore needs the samples' slots")
        pcon, has = store.accumulate(tf.gather(tf.reshape(slots, [-1]), idx), pcon, has,
                                     write=training)
    w = tf.stop_gradient(tf.cast(tf.reshape(gaussian_scaling(pcon, has), [-1]), tf.float32))
    return tf.scatter_nd(idx[:, None], w, tf.shape(y, out_type=tf.int64))


def ddmtl_loss(logits, embedding, emotion, emotion_mask, partner, same, pair_valid,
               weights=None, beta: float = 0.01, margin: float = 1.0) -> Dict[str, tf.Tensor]:
    """Eq 8 of one batch of pairs: ``{"loss", "softmax", "contrastive", "accuracy"}``::

        SL = 1/|P| sum_{(i,j) in P} [ W_k(x_i) SLoss(x_i) + W_k(x_j) SLoss(x_j) ]   (Eq 2)
        CL = 1/|P| sum_{(i,j) in P} 0.5 (1 - Y_ij) D^2 + 0.5 Y_ij max(0, m - D)     (Eqs 5-7)
        L  = SL + beta CL                                                          (Eq 8)

    ``SLoss`` (Eq 1) is the softmax cross-entropy of the logits with those
    outside the sample's ``emotion_mask`` excluded (0 for ``emotion == -1``);
    ``D = ||f(x_i) - f(x_j)||_2`` (Eq 6, ``models.losses.pair_distance``),
    ``Y_ij = 1 - same`` (``models.losses.contrastive_loss``). ``softmax`` is
    ``SL``, ``contrastive`` is ``CL``; ``weights`` None means ``W = 1``.
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
    d = pair_distance(emb, tf.gather(emb, partner))                       # Eq 6
    per_pair = contrastive_loss(d, 1.0 - tf.cast(same, tf.float32), margin)  # Eq 7
    cl = tf.reduce_sum(pv * per_pair) / n_pairs         # mean over valid pairs (0 if none)
    return {"loss": softmax + beta * cl, "softmax": softmax, "contrastive": cl,
            "accuracy": ce["accuracy"]}


# --------------------------------------------------------------------------
# network
# --------------------------------------------------------------------------
def build_branch(cfg: Dict[str, Any]) -> keras.Model:
    """One siamese branch: ``image -> {"logits", "embedding", "probabilities"}``::

        image [B, 50, 50, 1] -> per-image standardisation (``standardize``)
          -> 4 x (Conv2D(f_b, k) + ReLU -> MaxPool 2x2 -> LRN)
          -> Flatten -> Dense(embedding_dim) + ReLU            = embedding f(x)
          -> Dense(8)                                          = logits z(x)
          -> softmax over the label set seen in training     = probabilities

    The label set is the union of every training batch's ``emotion_mask``
    (``models.loss_model.LabelSetMask``, layer ``label_set``): untrained logits
    (e.g. ``contempt`` for a 7-class dataset) get probability 0; before any
    training all 8 are allowed."""
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
    :func:`ddmtl_loss`. The second siamese branch is the same forward pass:
    ``f(x_j)`` is row ``j`` of the batch's outputs. Save/restore with
    ``save_weights``/``load_weights`` after ``DDMTL().build(cfg)`` (the memory
    bank and the pCON store, when used, are part of the weights)."""

    loss_terms = ("loss", "softmax", "contrastive", "same_pairs", "accuracy")

    def __init__(self, net: keras.Model, cfg: Dict[str, Any], **kwargs):
        super().__init__(net, **kwargs)
        self.cfg = dict(cfg)
        self.bank = None
        self.pcon_store = None
        if self.cfg["weights_from"] == "bank":
            self.bank = FeatureMemoryBank(self.cfg["bank_size"], self.cfg["embedding_dim"],
                                          name="memory_bank")
        elif self.cfg["weights_from"] not in ("batch", "none"):
            raise ValueError("weights_from must be 'batch', 'bank' or 'none', got "
                             f"{self.cfg['weights_from']!r}")
        if self.cfg["weights_from"] != "none" and self.cfg["pcon_accumulate"]:
            self.pcon_store = PConStore(self.cfg["pcon_store_size"], name="pcon_store")

    def compute_batch_loss(self, batch, outputs, training):
        cfg = self.cfg
        emotion = tf.reshape(tf.cast(batch["emotion"], tf.int64), [-1])
        partner, same, valid = form_pairs(emotion, cfg["same_pair_ratio"])
        weights = None
        if cfg["weights_from"] != "none":
            slots = None
            if self.pcon_store is not None:
                slots = image_keys(batch["image"], self.pcon_store.size)
            weights = sample_weights(outputs["embedding"], emotion, cfg["reach_k"],
                                     bank=self.bank, store=self.pcon_store, slots=slots,
                                     training=training)
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
    """Siamese DDMTL (see the module docstring for the equations).

    Ablations: ``weights_from="none"`` (W = 1: no reweighting), ``beta=0`` (no
    contrastive term), ``pcon_accumulate=False`` (W from this batch only)."""

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
            "weights_from": "batch",      # batch | bank | none (no reweighting)
            "bank_size": 512,
            "pcon_accumulate": True,      # Eq 4: sum pCON over iterations (False: T = 1)
            "pcon_store_size": 4096,
            "optimizer": "adam",
            "learning_rate": 2e-3,
            "momentum": 0.9,
            "lr_decay": 1.0,
            "batch_size": 32,
        },
        # Zheng et al. where the paper gives a value (section in the comment); the
        # rest is ours (docs/methods.md, DDMTL).
        "paper": {
            "image_size": 50,             # Sec. 4.1: cropped to 50 x 50, 8-bit grey
            "standardize": True,          # ours: the paper says nothing of normalisation
            "filters": [64, 128, 256, 256],   # Sec. 4: 4 conv layers (sizes not given)
            "kernel_size": 3,
            "embedding_dim": 1024,        # Sec. 4: one FC layer (width not given)
            "lrn": dict(_LRN),            # Sec. 4: max-pool + LRN after each conv
            "same_pair_ratio": 0.5,
            "beta": 0.01,                 # Sec. 4.1, Fig. 4: beta = 0.01
            "margin": 1.0,                # Eq 7: m > 0 (value not given)
            "reach_k": 5,                 # Fig. 2 illustrates k = 5
            "weights_from": "batch",
            "bank_size": 4096,
            "pcon_accumulate": True,      # Eq 4: W_k = G(sum_{t=1..T} pCON)
            "pcon_store_size": 2 ** 20,
            "optimizer": "sgd",           # Sec. 3.4 / Sec. 4: stochastic gradient descent
            "learning_rate": 0.05,        # Sec. 4: initial learning rate 0.05
            "momentum": 0.0,              # Eq 9: Theta <- Theta - eta grad (plain SGD)
            "lr_decay": 0.9,              # Sec. 4: "decayed per epoch" (factor not given)
            "batch_size": 128,            # not given
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
        """``image -> {"probabilities", "embedding"}`` (shares the branch's weights).
        A plain functional model that round-trips as ``.keras``: its custom
        layers, ``LocalResponseNormalization`` and ``LabelSetMask``, are
        registered, so no ``custom_objects`` are needed once ``models.ddmtl`` is
        imported."""
        net = model.net
        return keras.Model(net.inputs, {"probabilities": net.output["probabilities"],
                                        "embedding": net.output["embedding"]},
                           name="ddmtl_inference")

    def callbacks(self, cfg: Dict[str, Any], steps_per_epoch: int):
        if cfg.get("lr_decay", 1.0) != 1.0:
            return [EpochDecay(cfg["learning_rate"], cfg["lr_decay"])]
        return []
