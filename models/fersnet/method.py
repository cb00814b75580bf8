"""The FERSNet method: presets, builders, augmentation, callbacks and the
post-fit FES hook (package docstring)."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import keras
import tensorflow as tf

from components import contract
from models.base import Method
from models.fersnet.augmentation import augment_batch
from models.fersnet.fes import fine_tune_with_fes
from models.fersnet.model import FERSNetModel, IdentityLambdaRamp
from models.fersnet.networks import NUM_CLASSES


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
    """FERSNet (Zhao et al., ICPR 2020); see the package docstring."""

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
            # ours, not the paper's (package docstring, "Decoder" and
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
