"""FERSNet's training model (joint and recognition-only steps), the identity
weight ramp and inference helpers on a trained model (gate maps, batched
synthesis)."""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional

import keras
import numpy as np
import tensorflow as tf

from models import face_embedding as fe
from models import optimizers
from models.fersnet.losses import (adversarial_loss, cycle_loss, discriminator_accuracy,
                                   identity_loss, reconstruction_loss)
from models.fersnet.networks import (NUM_CLASSES, build_classifier, build_decoder,
                                     build_discriminator, build_encoder, decoder_takes_image)
from models.fersnet.pairing import pair_targets
from models.inputs import GROUP_KEYS
from models.layers import FusedBatchNorm
from models.losses.classification import masked_mean, masked_softmax_cross_entropy
from models.optimizers import FusedAdam
from models.loss_model import LabelSetMask, replica_scaled

log = logging.getLogger(__name__)


_TERMS = ("loss", "cls_loss", "accuracy", "gan_g", "gan_d", "d_acc", "rec", "cyc", "idt",
          "pairs", "id_loss", "id_acc")
_CLS_TERMS = ("loss", "cls_loss", "accuracy")
#: The in-fit identity network when ``face_embedding_arch`` is not set.
IDENTITY_ARCH = {"image_size": 32, "filters": [16, 32, 64], "dim": 64}


def scheduled_learning_rate(cfg: Dict[str, Any], key: str = "learning_rate"):
    """``cfg[key]`` under ``cfg["lr_schedule"]`` (:func:`models.optimizers.learning_rate`);
    ``exponential`` without ``lr_decay_steps`` decays over the whole fit
    (``cfg["schedule_steps"]``, set by the training core): with
    ``lr_decay_rate`` 0.01 the paper's 1e-3 -> 1e-5 (Sec. IV-A)."""
    c = {**cfg, "learning_rate": cfg[key]}
    if c.get("lr_schedule") == "exponential" and not c.get("lr_decay_steps"):
        steps = int(c.get("schedule_steps") or 0)
        if steps <= 0:
            raise ValueError("fersnet: lr_schedule 'exponential' without lr_decay_steps decays "
                             "over the fit, but cfg['schedule_steps'] is "
                             f"{cfg.get('schedule_steps')!r}; the training core sets it")
        c["lr_decay_steps"] = steps
    return optimizers.learning_rate(c)


@keras.saving.register_keras_serializable(package="fermtl.fersnet")
class FERSNetModel(keras.Model):
    """FERSNet training model (docs/methods.md, FERSNet).

    Sub-models: ``encoder`` (image -> [f_x4, f_y4, skips]), ``classifier``
    (f_x4 -> logits), ``decoder`` ([f_y4, one-hot, ...] -> image),
    ``discriminator``, ``embedder`` (the identity features ``f`` of Eq 9) and,
    when it is trained during the fit, ``id_head`` (its identity classifier);
    with ``synthesis`` False only the first two.  ``call`` returns
    ``{"logits", "probabilities"}``; :meth:`synthesize` returns ``G(x, t)``.
    ``fit`` takes model-input dicts.  ``stage`` is ``"joint"`` (Eq 10) or
    ``"recognition"`` (``L_cls`` on the recognition stream only, used by FES
    fine-tuning, see :meth:`set_stage`).
    """

    def __init__(self, cfg: Dict[str, Any], load_embedding: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.cfg = dict(cfg)
        self.has_synthesis = bool(self.cfg.get("synthesis", True))
        if self.cfg.get("pair_within", "sequence") not in GROUP_KEYS:
            raise ValueError(f"fersnet: pair_within must be one of {GROUP_KEYS}, got "
                             f"{self.cfg['pair_within']!r}")
        self.encoder = build_encoder(self.cfg)
        self.classifier = build_classifier(self.cfg)
        self.decoder = self.discriminator = self.embedder = self.id_head = None
        if self.has_synthesis:
            self.decoder = build_decoder(self.cfg)
            self.discriminator = build_discriminator(self.cfg)
            self.embedder, self.id_head = self._make_embedder(load_embedding)
        self.label_set = LabelSetMask(NUM_CLASSES, name="label_set")
        self.label_set.build((None, NUM_CLASSES))
        self.emotions_seen = self.add_weight(name="emotions_seen", shape=(NUM_CLASSES,),
                                             initializer="zeros", trainable=False,
                                             aggregation="only_first_replica")
        self.lambda_idt = self.add_weight(
            name="lambda_idt", shape=(), trainable=False, aggregation="only_first_replica",
            initializer=keras.initializers.Constant(self.cfg["lambda_idt_start"]))
        self.d_optimizer = self.e_optimizer = self.fes_optimizer = None
        self.stage = "joint"
        self._trackers = {k: keras.metrics.Mean(name=k) for k in _TERMS}
        self.built = True

    # -- construction helpers --------------------------------------------------
    def _make_embedder(self, load: bool):
        """``(embedder, id_head)``: frozen pre-trained weights from
        ``face_embedding_weights`` (id_head None), or with
        ``identity_embedding`` a network trained during the fit on the
        batches' subject ids, or ``(None, None)`` (L_idt off, warned)."""
        cfg = self.cfg
        path = cfg.get("face_embedding_weights") or ""
        if path:
            if load:
                if not os.path.exists(path):
                    raise FileNotFoundError(f"fersnet: face_embedding_weights {path!r} not found")
                arch = fe.read_arch(path)
                emb = fe.load_face_embedding(path, arch)
                cfg["face_embedding_arch"] = arch
            else:
                # rebuilding a saved model: the weights come from the saved file
                arch = cfg["face_embedding_arch"]
                emb = fe.build_face_embedding(arch.get("image_size"), arch["filters"],
                                              arch["dim"])
            emb.trainable = False
            return emb, None
        if cfg.get("identity_embedding", True):
            arch = dict(cfg.get("face_embedding_arch") or IDENTITY_ARCH)
            cfg["face_embedding_arch"] = arch
            emb = fe.build_face_embedding(arch.get("image_size"), arch["filters"], arch["dim"],
                                          name="identity_embedding",
                                          bn_momentum=cfg["bn_momentum"])
            head = fe.CosineSoftmax(int(cfg["identity_buckets"]), name="id_head")
            head.build((None, int(arch["dim"])))
            return emb, head
        log.warning("fersnet: no face_embedding_weights and identity_embedding off: the "
                    "identity loss L_idt (Eq 9) is disabled")
        return None, None

    def _embed(self, images, training=False):
        size = int(self.cfg["face_embedding_arch"].get("image_size") or self.cfg["image_size"])
        return fe.embed(self.embedder, images, size, training=training)

    def _gen_variables(self):
        vs = self.encoder.trainable_variables + self.classifier.trainable_variables
        return vs + (self.decoder.trainable_variables if self.decoder is not None else [])

    def _id_variables(self):
        return self.embedder.trainable_variables + self.id_head.trainable_variables

    def _rec_variables(self):
        vs = []
        for layer in self.encoder.layers:
            if layer.name.startswith(("rec_", "shared_")):
                vs += layer.trainable_variables
        return vs + self.classifier.trainable_variables

    def _bn_layers(self, prefixes=None):
        out = []
        for sub in (self.encoder, self.decoder):
            for layer in (sub.layers if sub is not None else []):
                if isinstance(layer, FusedBatchNorm) and (
                        prefixes is None or layer.name.startswith(tuple(prefixes))):
                    out.append(layer)
        return out

    # -- keras plumbing ----------------------------------------------------------
    def compile(self, optimizer=None, d_optimizer=None, **kwargs):
        cfg = self.cfg
        if optimizer is None:
            optimizer = FusedAdam(scheduled_learning_rate(cfg), beta_1=cfg["beta_1"])
        kwargs.setdefault("jit_compile", False)
        super().compile(optimizer=optimizer, **kwargs)
        self.optimizer.build(self._gen_variables())
        if self.discriminator is not None:
            if d_optimizer is None:
                d_optimizer = FusedAdam(scheduled_learning_rate(cfg, "d_learning_rate"),
                                        beta_1=cfg["beta_1"])
            self.d_optimizer = d_optimizer
            self.d_optimizer.build(self.discriminator.trainable_variables)
        if self.id_head is not None:
            self.e_optimizer = FusedAdam(cfg["identity_learning_rate"])
            self.e_optimizer.build(self._id_variables())

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
        """``(f_x4, f_y4, skips)``: the encoder's outputs (``f_y4`` None without
        the synthesis task; skips empty unless ``decoder_skips``)."""
        out = self.encoder(image, training=training)
        out = list(out) if isinstance(out, (list, tuple)) else [out]
        return out[0], (out[1] if len(out) > 1 else None), out[2:]

    def decode(self, fy, skips, image, onehot, training=False):
        """The decoder on encoder outputs of ``image`` and a one-hot target."""
        inputs = [fy, onehot] + list(reversed(skips))
        if decoder_takes_image(self.cfg):
            inputs.append(image)
        return self.decoder(inputs, training=training)

    def synthesize(self, image, target, training=False):
        """``G(image, target)``: image ``[B,S,S,1]`` in [0,1], target int ``[B]``."""
        if self.decoder is None:
            raise ValueError("fersnet: this model has no synthesis task (synthesis: false)")
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
    def _log(self, terms, keys=_TERMS):
        for k, tr in self._trackers.items():
            if k in terms:
                tr.update_state(terms[k])
        return {k: self._trackers[k].result() for k in keys}

    def _cls_terms(self, logits, emotion, emotion_mask):
        out = masked_softmax_cross_entropy(emotion, logits, emotion_mask)
        return out["loss"], out["accuracy"]

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

    def _train_identity(self, x, sid):
        """One step of the in-fit identity network: NormFace cross-entropy of
        the real faces' subject classes (:func:`models.face_embedding.identity_bucket`),
        faces of unknown subject left out."""
        bucket = fe.identity_bucket(sid, int(self.cfg["identity_buckets"]))
        known = tf.cast(bucket >= 0, tf.float32)
        with tf.GradientTape() as tape:
            logits = self.id_head(self._embed(x, training=True))
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=tf.maximum(bucket, 0), logits=logits)
            id_loss = masked_mean(ce, known)
            scaled = replica_scaled(id_loss)
        vs = self._id_variables()
        self.e_optimizer.apply(tape.gradient(scaled, vs), vs)
        hit = tf.cast(tf.equal(tf.argmax(logits, -1), bucket), tf.float32)
        return id_loss, masked_mean(hit, known)

    @tf.autograph.experimental.do_not_convert
    def train_step(self, data):
        if self.stage == "recognition":
            return self._train_classifier(data, self.fes_optimizer, self._rec_variables())
        if not self.has_synthesis:
            return self._train_classifier(data, self.optimizer, self._gen_variables())
        cfg = self.cfg
        x = tf.convert_to_tensor(data["image"], tf.float32)
        emotion = tf.reshape(tf.cast(data["emotion"], tf.int64), [-1])
        mask = tf.cast(data["emotion_mask"], tf.float32)
        n = tf.shape(emotion)[0]
        sid = data.get("subject_id")
        sid = -tf.ones([n], tf.int64) if sid is None else tf.reshape(tf.cast(sid, tf.int64), [-1])
        self._observe(data, emotion)
        target, partner, pair_mask = pair_targets(
            sid, emotion, mask, cfg["pair_prob"], allowed=tf.convert_to_tensor(self.emotions_seen),
            sequence_id=data.get("sequence_id"), within=cfg.get("pair_within", "sequence"))
        id_terms = {}
        if self.id_head is not None:
            id_terms["id_loss"], id_terms["id_acc"] = self._train_identity(x, sid)

        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            t = self.objective(x, emotion, mask, target, partner, pair_mask)
            # scale on the tapes: an op recorded after them has no gradient (None
            # for every variable once there is more than one replica)
            g_loss = replica_scaled(t["loss"])
            d_loss = replica_scaled(t["gan_d"])

        g_vars = self._gen_variables()
        self.optimizer.apply(g_tape.gradient(g_loss, g_vars), g_vars)
        d_vars = self.discriminator.trainable_variables
        self.d_optimizer.apply(d_tape.gradient(d_loss, d_vars), d_vars)
        return self._log({**{k: v for k, v in t.items() if k in _TERMS},
                          "pairs": tf.reduce_mean(pair_mask), **id_terms})

    def objective(self, x, emotion, emotion_mask, target, partner, pair_mask, training=True):
        """The terms of one joint step: Eq 10's ``loss`` for the generator and
        recognizer (with Eqs 5-9 as ``cls_loss``, ``gan_g``, ``rec``, ``cyc``,
        ``idt``), the discriminator's ``gan_d`` (Eq 6) and ``d_acc``, and
        ``fake`` = ``G(z^t, I)``.  ``target`` ``z^t`` and ``partner`` (the row
        of ``I^t``; only where ``pair_mask`` is 1) come from :func:`pair_targets`."""
        cfg, kind = self.cfg, self.cfg["gan_loss"]
        t_onehot = tf.one_hot(target, NUM_CLASSES)
        x_t = tf.gather(x, partner)                                        # I^t
        fx, fy, skips = self.encode(x, training=training)
        logits = self.classifier(fx, training=training)
        fake = self.decode(fy, skips, x, t_onehot, training=training)
        pred = tf.argmax(self.label_set(tf.stop_gradient(logits)), -1)
        source = tf.where(emotion >= 0, emotion, pred)                     # z_i
        snap = self._snapshot(self._bn_layers())
        _, fy2, skips2 = self.encode(fake, training=training)
        cycled = self.decode(fy2, skips2, fake, tf.one_hot(source, NUM_CLASSES),
                             training=training)
        self._restore(snap)

        cls, acc = self._cls_terms(logits, emotion, emotion_mask)             # Eq 5
        gan_g = tf.reduce_mean(adversarial_loss(                              # Eq 6, G
            self.discriminator([fake, t_onehot], training=training), True, kind))
        rec = masked_mean(reconstruction_loss(fake, x_t), pair_mask)          # Eq 7
        cyc = tf.reduce_mean(cycle_loss(cycled, x))                           # Eq 8
        idt = tf.zeros([])
        if self.embedder is not None:                                         # Eq 9
            idt = masked_mean(identity_loss(self._embed(fake),
                                            tf.stop_gradient(self._embed(x_t))), pair_mask)
        loss = (cls + cfg["lambda_gan"] * gan_g + cfg["lambda_rec"] * rec     # Eq 10
                + cfg["lambda_cyc"] * cyc + tf.convert_to_tensor(self.lambda_idt) * idt)
        if self.losses:
            loss = loss + tf.add_n(self.losses)

        labelled = tf.cast(emotion >= 0, tf.float32)
        real_logits = self.discriminator([x, tf.one_hot(emotion, NUM_CLASSES)],
                                         training=training)
        fake_logits = self.discriminator([tf.stop_gradient(fake), t_onehot], training=training)
        gan_d = 0.5 * (masked_mean(adversarial_loss(real_logits, True, kind), labelled)
                       + tf.reduce_mean(adversarial_loss(fake_logits, False, kind)))
        d_acc = discriminator_accuracy(real_logits, fake_logits, labelled)
        return {"loss": loss, "cls_loss": cls, "accuracy": acc, "gan_g": gan_g, "rec": rec,
                "cyc": cyc, "idt": idt, "gan_d": gan_d, "d_acc": tf.stop_gradient(d_acc),
                "fake": fake}

    @tf.autograph.experimental.do_not_convert
    def _train_classifier(self, data, optimizer, variables):
        """``L_cls`` alone on ``variables`` (FES fine-tuning; the whole model
        without the synthesis task); the synthesis side's BN statistics are kept."""
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
        grads = tape.gradient(scaled, variables)
        optimizer.apply(grads, variables)
        return self._log({"loss": cls, "cls_loss": cls, "accuracy": acc}, _CLS_TERMS)

    @tf.autograph.experimental.do_not_convert
    def test_step(self, data):
        x = tf.convert_to_tensor(data["image"], tf.float32)
        emotion = tf.reshape(tf.cast(data["emotion"], tf.int64), [-1])
        fx, _, _ = self.encode(x, training=False)
        logits = self.classifier(fx, training=False)
        cls, acc = self._cls_terms(logits, emotion, data["emotion_mask"])
        return self._log({"loss": cls, "cls_loss": cls, "accuracy": acc}, _CLS_TERMS)

    def predict_step(self, data):
        return self(data["image"] if isinstance(data, dict) else data, training=False)


class IdentityLambdaRamp(keras.callbacks.Callback):
    """``lambda4`` (the weight of Eq 9 in Eq 10) ramps linearly from ``start``
    at epoch 0 to ``end`` at epoch ``epochs - 1`` (then stays): "0.1 at the
    beginning, gradually increased to 0.5" (Sec. IV-A)."""

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
    if model.cfg.get("sharing", "convflu") != "convflu" or not model.has_synthesis:
        raise ValueError("fersnet: gate maps need the ConvFLU transfers (sharing 'convflu' "
                         "with the synthesis task)")
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
