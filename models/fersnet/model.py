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
from models.fersnet.losses import gan_loss, pixel_loss
from models.fersnet.networks import (NUM_CLASSES, build_classifier, build_decoder,
                                     build_discriminator, build_encoder, decoder_takes_image)
from models.fersnet.pairing import pair_targets
from models.layers import FusedBatchNorm
from models.losses.classification import masked_mean, masked_softmax_cross_entropy
from models.optimizers import FusedAdam
from models.loss_model import LabelSetMask, replica_scaled

log = logging.getLogger(__name__)


_TERMS = ("loss", "cls_loss", "accuracy", "gan_g", "gan_d", "rec", "cyc", "idt", "pairs")


@keras.saving.register_keras_serializable(package="fermtl.fersnet")
class FERSNetModel(keras.Model):
    """FERSNet training model (see the package docstring).

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
        if decoder_takes_image(self.cfg):
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
            gan_g = tf.reduce_mean(gan_loss(self.discriminator([fake, t_onehot]), True, kind))
            dist = cfg.get("recon_loss", "l1")
            rec = masked_mean(pixel_loss(fake, x_t, dist), pair_mask)
            cyc = tf.reduce_mean(pixel_loss(cycled, x, dist))
            idt = tf.zeros([])
            if self.embedder is not None:
                size = int(cfg["face_embedding_arch"].get("image_size") or cfg["image_size"])
                idt = tf.reduce_mean(fe.identity_loss(
                    fe.embed(self.embedder, fake, size),
                    tf.stop_gradient(fe.embed(self.embedder, x, size))))
            lam_idt = tf.convert_to_tensor(self.lambda_idt)
            loss = (cls + cfg["lambda_gan"] * gan_g + cfg["lambda_rec"] * rec
                    + cfg["lambda_cyc"] * cyc + lam_idt * idt)
            if self.losses:
                loss = loss + tf.add_n(self.losses)
            # scale on the tapes: an op recorded after them has no gradient (None
            # for every variable once there is more than one replica)
            g_loss = replica_scaled(loss)

            labelled = tf.cast(emotion >= 0, tf.float32)
            d_real = gan_loss(self.discriminator([x, tf.one_hot(emotion, NUM_CLASSES)],
                                                  training=True), True, kind)
            d_fake = gan_loss(self.discriminator([tf.stop_gradient(fake), t_onehot],
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
