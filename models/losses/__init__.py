"""fer-mtl losses of the seed papers (Keras classes registered under package "fermtl")."""

from models.losses.center import (
    CenterLoss,
    center_loss,
    center_update,
    md_lambda,
    md_loss,
    md_phi,
    multi_dataset_loss,
    nearest_other_centers,
)
from models.losses.classification import masked_mean, masked_softmax_cross_entropy
from models.losses.contrastive import (
    ContrastiveLoss,
    FeatureMemoryBank,
    PConStore,
    contrastive_loss,
    gaussian_scaling,
    image_keys,
    pair_distance,
    reachability_distance,
    reachability_weights,
)
from models.losses.selective_sigmoid import (
    SelectiveSigmoidCrossEntropy,
    selective_sigmoid_cross_entropy,
)

__all__ = [
    "CenterLoss",
    "center_loss",
    "center_update",
    "md_lambda",
    "md_loss",
    "md_phi",
    "multi_dataset_loss",
    "masked_mean",
    "masked_softmax_cross_entropy",
    "nearest_other_centers",
    "ContrastiveLoss",
    "FeatureMemoryBank",
    "PConStore",
    "contrastive_loss",
    "gaussian_scaling",
    "image_keys",
    "pair_distance",
    "reachability_distance",
    "reachability_weights",
    "SelectiveSigmoidCrossEntropy",
    "selective_sigmoid_cross_entropy",
]
