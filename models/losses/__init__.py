"""fer-mtl losses of the seed papers (Keras classes registered under package "fermtl")."""

from models.losses.center import CenterLoss, md_loss, multi_dataset_loss
from models.losses.classification import masked_mean, masked_softmax_cross_entropy
from models.losses.contrastive import (
    ContrastiveLoss,
    FeatureMemoryBank,
    contrastive_loss,
    reachability_weights,
)
from models.losses.selective_sigmoid import (
    SelectiveSigmoidCrossEntropy,
    selective_sigmoid_cross_entropy,
)

__all__ = [
    "CenterLoss",
    "md_loss",
    "multi_dataset_loss",
    "masked_mean",
    "masked_softmax_cross_entropy",
    "ContrastiveLoss",
    "FeatureMemoryBank",
    "contrastive_loss",
    "reachability_weights",
    "SelectiveSigmoidCrossEntropy",
    "selective_sigmoid_cross_entropy",
]
