"""Single-task baseline: a plain VGG-style CNN with a softmax over the emotions.

The reference point every multi-task method is compared with. One head, one
loss: softmax cross-entropy over :data:`components.contract.EMOTIONS`,
restricted per sample to its dataset's label set (``emotion_mask``)::

    z'_c = z_c            if emotion_mask_c = 1
         = -1e9           otherwise                    (masked logits)
    L    = mean over samples with emotion >= 0 of  -log softmax(z')_y

(:func:`models.losses.classification.masked_softmax_cross_entropy`), so a
7-class dataset never pushes down the score of the 8th class (the masked
logits get exactly zero gradient) and samples without an emotion
(``emotion == -1``) contribute nothing. At inference the softmax runs over
the union of the label sets seen in training (:class:`LabelSetMask`).

Input faces are standardised per image inside the model (``standardize``;
removes skin tone and lighting, part of the exported graph). Adam optimiser;
``augment`` applies random translations (``crop_padding``) and flips.
``lr_schedule``: ``constant`` (both presets) or ``cosine`` (Keras
``CosineDecay`` to 0 over the fit's ``schedule_steps``,
:func:`models.optimizers.learning_rate`; what a longer budget should use).

Presets: ``small`` (48 px, three single-conv blocks 16-32-64 + FC-64, 0.17M
parameters, no random crops; trains in about a minute on a CPU) and ``paper``
(48 px, four VGG blocks of two convs 32-64-128-256 + FC-256, ~1.8M
parameters, 4 px random crops).
"""

from __future__ import annotations

from typing import Any, Dict

import keras

from components import contract
from models import backbones
from models.base import Method
from models.losses.classification import masked_softmax_cross_entropy
from models.optimizers import learning_rate
from models.augment import random_pad_crop
from models.loss_model import LabelSetMask, LossModel


class BaselineModel(LossModel):
    """Training model of :class:`BaselineCNN`."""

    loss_terms = ("loss", "emotion_loss", "accuracy")

    def compute_batch_loss(self, batch, outputs, training):
        if training:
            self.net.get_layer("label_set").update(batch["emotion_mask"])
        out = masked_softmax_cross_entropy(batch["emotion"], outputs["logits"],
                                           batch["emotion_mask"])
        return {"loss": out["loss"], "emotion_loss": out["loss"], "accuracy": out["accuracy"]}


class BaselineCNN(Method):
    """Plain single-task CNN (``vgg_small``) + masked softmax over 8 emotions."""

    name = "baseline"
    presets = {
        "small": dict(image_size=48, standardize=True, filters=(16, 32, 64),
                      convs_per_block=1, dense=(64,), global_pool=False, dropout=0.25,
                      weight_decay=0.0, learning_rate=1e-3, batch_size=16, crop_padding=0,
                      flip=True, jit_compile=False, lr_schedule="constant"),
        "paper": dict(image_size=48, standardize=True, filters=(32, 64, 128, 256),
                      convs_per_block=2, dense=(256,), global_pool=False, dropout=0.5,
                      weight_decay=1e-4, learning_rate=1e-3, batch_size=64, crop_padding=4,
                      flip=True, jit_compile=False, lr_schedule="constant"),
    }

    def build_net(self, cfg: Dict[str, Any]) -> keras.Model:
        """Functional ``image -> {logits, probabilities, embedding}``."""
        size = int(cfg["image_size"])
        image = keras.Input((size, size, 1), name="image")
        x = backbones.PerImageStandardization(name="standardize")(image) \
            if cfg["standardize"] else image
        feats = backbones.vgg_small(x, cfg["filters"], cfg["convs_per_block"], cfg["dense"],
                                    cfg["dropout"], name="vgg",
                                    weight_decay=cfg["weight_decay"],
                                    global_pool=cfg["global_pool"])
        embedding = keras.layers.Identity(name="embedding")(feats)
        logits = keras.layers.Dense(contract.NUM_EMOTIONS, name="logits")(embedding)
        masked = LabelSetMask(contract.NUM_EMOTIONS, fill=-1e9, name="label_set")(logits)
        probs = keras.layers.Softmax(name="probabilities")(masked)
        return keras.Model(image, {"logits": logits, "probabilities": probs,
                                   "embedding": embedding}, name="baseline_net")

    def build(self, cfg: Dict[str, Any]) -> keras.Model:
        model = BaselineModel(self.build_net(cfg), name="baseline")
        model.compile(optimizer=keras.optimizers.Adam(learning_rate(cfg)),
                      jit_compile=cfg.get("jit_compile", False))
        return model

    def inference_model(self, model: keras.Model, cfg: Dict[str, Any]) -> keras.Model:
        net = model.net
        return keras.Model(net.input, {
            "probabilities": net.get_layer("probabilities").output,
            "embedding": net.get_layer("embedding").output,
        }, name="baseline_inference")

    def augment(self, batch, cfg):
        batch = dict(batch)
        batch["image"] = random_pad_crop(batch["image"], int(cfg["crop_padding"]),
                                         flip=bool(cfg["flip"]))
        return batch
