"""The FERSNet method: presets, builders, augmentation, callbacks and the
post-fit FES hook (docs/methods.md, FERSNet)."""

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


# Every key (docs/methods.md, FERSNet, has the paper's value beside each).
_COMMON = {
    "synthesis": True,                  # False: ablation "w/o MTL" (recognition stream alone)
    "sharing": "convflu",               # "hard": ablation "w/o ConvFLU" (one shared stream)
    "bn_momentum": 0.9,
    "dropout": 0.5,
    "convflu_kernel": 1,
    "fc_batchnorm": True,
    "label_units": 64,
    "label_channels": 8,
    "decoder_block": "paper",
    "disc_strides": None,
    "disc_batchnorm": False,
    "disc_out_kernel": 3,
    "disc_conditioning": "concat",
    "gan_loss": "bce",
    "lambda_gan": 0.3,
    "lambda_rec": 1.0,
    "lambda_cyc": 0.5,
    "lambda_idt_start": 0.1,
    "lambda_idt_end": 0.5,
    "idt_ramp_epochs": None,            # None: over the whole fit
    "pair_prob": 1.0,
    "pair_within": "sequence",          # "subject": data whose sequences hold one expression (CK+)
    "batch_group_size": 2,
    "decoder_skips": False,
    "residual_output": False,
    "synthesis_batchnorm": True,
    "synthesis_activation": "relu",
    "decoder_batchnorm": True,
    "decoder_activation": "relu",
    "lr_schedule": "constant",
    "lr_decay_rate": 0.01,
    "lr_decay_steps": None,             # None: the whole fit (cfg["schedule_steps"])
    "beta_1": 0.5,
    "augment": True,
    "mirror": True,
    "max_rotation": 15,
    "rotation_step": 5,
    "face_embedding_weights": "",
    "face_embedding_arch": None,
    "identity_embedding": True,         # train the identity network f of Eq 9 in the fit
    "identity_buckets": 4096,
    "identity_learning_rate": 3e-3,
    "fes_augment": False,
    "fes_epochs": 3,
    "fes_learning_rate": 2e-4,
}


class FERSNet(Method):
    """FERSNet (Zhao, Liu, Xiao, Lun, Lam, ICPR 2020); docs/methods.md, FERSNet."""

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
            # ours, not the paper's (docs/methods.md, FERSNet, small preset):
            "decoder_block": "up_conv",
            "decoder_skips": True,
            "residual_output": True,
            "synthesis_batchnorm": False,
            "synthesis_activation": "leaky_relu",
            "decoder_batchnorm": False,
            "decoder_activation": "leaky_relu",
            "lambda_rec": 100.0,
            "lambda_cyc": 5.0,
        },
        # Sec. IV-A of the paper unless docs/methods.md says otherwise.
        "paper": {
            **_COMMON,
            "image_size": 96,
            "crop_from": 110,
            "filters": [256, 256, 256, 256],
            "decoder_filters": [256, 256, 256, 256],
            "convflu_kernel": 1,
            "fc_batchnorm": False,
            "fc_units": 1024,
            "label_units": 256,
            "label_channels": 32,
            "disc_filters": [64, 128, 256, 512],     # pix2pix's 70x70 PatchGAN
            "disc_strides": [2, 2, 2, 1],
            "disc_batchnorm": True,
            "disc_out_kernel": 4,
            "learning_rate": 1e-3,
            "d_learning_rate": 1e-3,
            "lr_schedule": "exponential",           # 1e-3 -> 1e-5 over the fit
            "beta_1": 0.9,
            "batch_size": 64,
            "epochs": 500,
            "face_embedding_arch": {"image_size": 96, "filters": [32, 64, 128, 256],
                                    "dim": 256},
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
        if not cfg.get("synthesis", True):
            return {}
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
        """The ``lambda4`` ramp over ``idt_ramp_epochs`` or, when None, the
        whole fit (``schedule_steps / steps_per_epoch``, else ``epochs``)."""
        epochs = cfg.get("idt_ramp_epochs")
        if not epochs:
            steps = int(cfg.get("schedule_steps") or 0)
            epochs = steps // max(int(steps_per_epoch), 1) if steps else cfg["epochs"]
        return [IdentityLambdaRamp(cfg["lambda_idt_start"], cfg["lambda_idt_end"], epochs)]

    def post_fit(self, model: keras.Model, cfg: Dict[str, Any],
                 train_samples: Optional[Sequence[contract.FaceSample]] = None,
                 train_data: Optional[tf.data.Dataset] = None, **kwargs):
        """Trainer hook: FES fine-tuning when ``cfg["fes_augment"]``, on the
        training ``FaceSample`` list or else a finite dataset of model-input
        batches (the TFX Trainer passes its Transform output); returns the
        fine-tuning history or None."""
        if not cfg.get("fes_augment"):
            return None
        if not cfg.get("synthesis", True):
            raise ValueError("fersnet: fes_augment needs the synthesis task (synthesis: true)")
        data = train_samples if train_samples else train_data
        if data is None:
            raise ValueError("fersnet: fes_augment is set but the trainer passed no training "
                             "data to post_fit")
        hist, _ = fine_tune_with_fes(model, cfg, data, datasets=cfg.get("datasets", ()),
                                     **kwargs)
        return hist
