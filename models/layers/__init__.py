"""fer-mtl Keras building blocks of the seed papers (all registered under package "fermtl")."""

from models.layers.convflu import ConvFLU, ConvFLUTransfer
from models.layers.crelu import CReLU
from models.layers.fused_batch_norm import FusedBatchNorm
from models.layers.gradient_reversal import DANNLambdaSchedule, GradientReversal, dann_lambda
from models.layers.inception import InceptionModule
from models.layers.lrn import LocalResponseNormalization
from models.layers.trace_norm import (
    TraceNormRegularizer,
    laf_trace_norm,
    matrix_trace_norm,
    tensor_trace_norm,
    tt_unfold,
    unfold,
)

__all__ = [
    "ConvFLU",
    "ConvFLUTransfer",
    "CReLU",
    "FusedBatchNorm",
    "GradientReversal",
    "DANNLambdaSchedule",
    "dann_lambda",
    "InceptionModule",
    "LocalResponseNormalization",
    "TraceNormRegularizer",
    "matrix_trace_norm",
    "laf_trace_norm",
    "tensor_trace_norm",
    "unfold",
    "tt_unfold",
]
