"""Trace-norm regularised deep multi-task learning with adversarial domain alignment.

Seed paper: Hu, Liu, Yuan, Yu, Hua, Zhang, Shen, Shao, Hospedales, Robertson,
Yang, "Deep Multi-Task Learning to Recognise Subtle Facial Expressions of Mental
States" (ECCV 2018): one ResNet-34 per task (emotion, 68 landmarks), the tensor
trace norms of Eqs 1-3 on the task-stacked kernels of all 33 convolutions, and
one domain classifier behind gradient reversal on the stacked penultimate
features of both tasks (Eq 4, ADA).

* :mod:`models.tracenorm.network` — the two task networks, the routed
  training step (each task network on its own rows of a batch), the losses;
* :mod:`models.tracenorm.augmentation` — Sec. 4.1's flips / rotation / scale /
  shift / noise with the landmark targets moved alike;
* :mod:`models.tracenorm.method` — presets, the Table 4 variants
  (:data:`TABLE4_VARIANTS`), the DANN ramp, the decrease-rate figure.

Every paper element, what fer-mtl does and every deviation: docs/methods.md,
section "Trace-norm deep MTL + ADA". The equations: ``models.layers.trace_norm``
(Eqs 1-3 and the ``U V^T`` sub-gradient), ``models.layers.gradient_reversal``
and :func:`domain_loss` (Eq 4).
"""

from models.tracenorm.augmentation import (
    FLIP_PERMUTATION,
    augment_batch,
    transform_images,
    transform_landmarks,
)
from models.tracenorm.method import (
    HARD_SHARING_DEPTHS,
    TABLE4_VARIANTS,
    DANNRamp,
    TraceNormMTL,
    trace_norm_decrease_plot,
)
from models.tracenorm.network import (
    NUM_CLASSES,
    NUM_LANDMARK_COORDS,
    NUM_TRACE_LAYERS,
    SHARING,
    TASKS,
    TraceNormMTLModel,
    build_network,
    build_trunks,
    domain_loss,
    hard_shared_layers,
    masked_emotion_loss,
    masked_landmark_l1,
    trace_regularizer,
    trunk_convs,
)

__all__ = [
    "FLIP_PERMUTATION", "augment_batch", "transform_images", "transform_landmarks",
    "HARD_SHARING_DEPTHS", "TABLE4_VARIANTS", "DANNRamp", "TraceNormMTL",
    "trace_norm_decrease_plot", "NUM_CLASSES", "NUM_LANDMARK_COORDS", "NUM_TRACE_LAYERS",
    "SHARING", "TASKS", "TraceNormMTLModel", "build_network", "build_trunks", "domain_loss",
    "hard_shared_layers", "masked_emotion_loss", "masked_landmark_l1", "trace_regularizer",
    "trunk_convs",
]
