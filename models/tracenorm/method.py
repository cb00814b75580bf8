"""The trace-norm method: presets, the Table 4 variants, the DANN ramp and the
trace-norm decrease figure (docs/methods.md, "Trace-norm deep MTL + ADA")."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import keras
import numpy as np

from models.base import Method
from models.layers import DANNLambdaSchedule
from models.optimizers import optimizer_from_cfg
from models.tracenorm.augmentation import augment_batch
from models.tracenorm.network import TraceNormMTLModel

#: RN(k) of Table 4: the first k (block) convolutions shared (Sec. 4.2).
HARD_SHARING_DEPTHS = (6, 14, 26, 32)


def _table4_variants() -> Dict[str, Dict[str, Any]]:
    """Config overrides of each cell of Table 4 (cross-stitch excluded)."""
    out = {"RN": {"sharing": "none", "ada": False}}
    for kind, label in (("laf", "LAF"), ("tucker", "Tucker"), ("tt", "TT")):
        for ada in (False, True):
            out[label + ("+ADA" if ada else "")] = {"sharing": "trace_norm",
                                                    "trace_norm_kind": kind, "ada": ada}
    for k in HARD_SHARING_DEPTHS:
        for ada in (False, True):
            out[f"RN({k})" + ("+ADA" if ada else "")] = {"sharing": "hard",
                                                         "hard_shared_convs": k, "ada": ada}
    return out


#: Table 4 row/column name -> config overrides; ``"LAF+ADA"`` is the method.
TABLE4_VARIANTS = _table4_variants()

_AUGMENT = {
    # Sec. 4.1: "Only horizontal flip is used for emotion recognition"; landmarks
    # "flipped, rotated (-30, 30), and disturbed via translation and scaling (0.8, 1.2)",
    # "adding Gaussian noise"
    "augment": True,
    "emotion_flip": True,
    "landmark_flip": True,
    "landmark_rotation": 30.0,        # degrees
    "landmark_scale": [0.8, 1.2],
    "landmark_shift": 0.1,            # fraction of the image, not given
    "landmark_noise": 0.02,           # pixel std in [0, 1] units, not given
}


class DANNRamp(DANNLambdaSchedule):
    """:class:`models.layers.DANNLambdaSchedule` on the model's ``gradient_reversal``
    layer, found when Keras attaches the model (``Method.callbacks`` gets no model).

    ``total_steps`` defaults to ``epochs x steps`` of the running ``fit`` (Keras'
    ``self.params``), so the ramp ends with the fit whatever ``epochs`` it was
    given; the step counter is ``epoch x steps + batch``, so a resumed fit
    (``initial_epoch > 0``) continues the ramp where it left off.
    """

    def __init__(self, total_steps: int = 1, gamma: float = 10.0, max_lambda: float = 1.0,
                 use_fit_params: bool = True):
        super().__init__([], max(int(total_steps), 1), gamma, max_lambda)
        self.use_fit_params = use_fit_params
        self._steps_per_epoch = None

    def set_model(self, model):
        super().set_model(model)
        grl = getattr(model, "gradient_reversal", None)
        self.layers_ = [grl] if grl is not None else []

    def on_train_begin(self, logs=None):
        params = self.params or {}
        steps, epochs = params.get("steps"), params.get("epochs")
        if steps:
            self._steps_per_epoch = int(steps)
            if self.use_fit_params and epochs:
                self.total_steps = int(steps) * int(epochs)
        super().on_train_begin(logs)

    def on_epoch_begin(self, epoch, logs=None):
        if self._steps_per_epoch:
            self.step = int(epoch) * self._steps_per_epoch
        super().on_epoch_begin(epoch, logs)


class TraceNormMTL(Method):
    """Trace-norm deep MTL (emotion + 68 landmarks) with adversarial domain alignment.

    Variants (:data:`TABLE4_VARIANTS`): ``sharing`` ``trace_norm`` | ``hard``
    (``hard_shared_convs`` = k of RN(k)) | ``none``; ``trace_norm_kind`` ``laf`` |
    ``tucker`` | ``tt``; ``ada`` on/off. Ablations of the paper's two
    contributions: ``sharing: hard`` and ``ada: false``.
    """

    name = "tracenorm"
    presets = {
        "small": {
            # the paper's topology at width 8 (docs/methods.md, "small preset")
            "image_size": 96,
            "width": 8,
            "pool_size": 3,             # 3x3 average pool before the heads
            "small_input": False,       # keep the 7x7/2 stem + max-pool of ResNet-34
            "weight_decay": 0.0,
            "datasets": [],             # set by the training core; not used by the net
            "sharing": "trace_norm",    # trace_norm | hard | none
            "hard_shared_convs": 6,     # k of RN(k), with sharing: hard
            "ada": True,
            "route_batches": False,     # True: per-task sub-batches (see docs/methods.md)
            "landmark_weight": 1.0,     # alpha
            "ada_weight": 0.1,          # beta
            "ada_units": [32, 16],
            "ada_gamma": 10.0,
            "ada_max_lambda": 1.0,
            "trace_norm_strength": 1e-3,  # mu
            "trace_norm_kind": "laf",     # laf | tucker | tt (Eqs 1-3)
            "trace_norm_svd": "exact",    # exact | randomized | gram
            "trace_norm_gammas": None,
            "trace_norm_rank": None,
            "optimizer": "adam",
            "learning_rate": 2e-3,
            "lr_schedule": "cosine",      # constant | cosine (over the fit)
            "momentum": 0.9,
            "batch_size": 32,
            "epochs": 12,
            **_AUGMENT,
        },
        "paper": {
            "image_size": 96,           # Sec. 4.1: 96 x 96 crops
            "width": 64,                # Sec. 2.4: ResNet-34, 512 features
            "pool_size": 3,             # Sec. 2.4: 3x3 average pool
            "small_input": False,
            "weight_decay": 0.0,
            "datasets": [],
            "sharing": "trace_norm",
            "hard_shared_convs": 6,
            "ada": True,
            "route_batches": True,      # Sec. 4.1: each network its own batch
            "landmark_weight": 1.0,
            "ada_weight": 1.0,
            "ada_units": [128, 64],     # Sec. 2.3: 512-128-64-2
            "ada_gamma": 10.0,
            "ada_max_lambda": 1.0,
            "trace_norm_strength": 1e-3,
            "trace_norm_kind": "laf",   # Sec. 4.2: LAF chosen for the later comparisons
            "trace_norm_svd": "exact",
            "trace_norm_gammas": None,
            "trace_norm_rank": None,
            "optimizer": "sgd",
            "learning_rate": 0.01,      # Sec. 4.1: "learning rates for both networks 0.01"
            "lr_schedule": "constant",
            "momentum": 0.9,
            "batch_size": 512,          # Sec. 4.1: 256 per task, see docs/methods.md
            "epochs": 50,
            **_AUGMENT,
        },
    }

    def config(self, preset: str = "small", variant: Optional[str] = None, **overrides):
        """The preset's config; ``variant`` (a :data:`TABLE4_VARIANTS` name) applies
        that Table 4 cell's overrides before ``overrides``."""
        if variant is not None:
            if variant not in TABLE4_VARIANTS:
                raise ValueError(f"unknown Table 4 variant {variant!r}; "
                                 f"choose from {sorted(TABLE4_VARIANTS)}")
            overrides = {**TABLE4_VARIANTS[variant], **overrides}
        return super().config(preset, **overrides)

    def build(self, cfg: Dict[str, Any]) -> keras.Model:
        model = TraceNormMTLModel(cfg, name="tracenorm")
        model.compile(optimizer=optimizer_from_cfg(cfg), jit_compile=False)
        return model

    def augment(self, batch: Dict[str, Any], cfg: Dict[str, Any]) -> Dict[str, Any]:
        """Sec. 4.1 augmentation (:func:`models.tracenorm.augmentation.augment_batch`)."""
        return augment_batch(batch, cfg) if cfg["augment"] else batch

    def inference_model(self, model: keras.Model, cfg: Dict[str, Any]) -> keras.Model:
        net = model.net
        return keras.Model(net.input,
                           {"probabilities": net.get_layer("probabilities").output,
                            "landmarks": net.get_layer("landmarks").output,
                            "embedding": net.output["emotion_features"]},
                           name="tracenorm_inference")

    def callbacks(self, cfg: Dict[str, Any], steps_per_epoch: int):
        if not cfg["ada"] or not cfg["ada_weight"]:
            return []
        # the ramp's length is re-read from the running fit (DANNRamp.on_train_begin)
        total = max(int(steps_per_epoch or 0) * int(cfg["epochs"]), 1)
        return [DANNRamp(total, cfg["ada_gamma"], cfg["ada_max_lambda"])]

    def trace_norm_rates(self, model: keras.Model) -> List[float]:
        """The 33 per-layer trace-norm decrease rates ``||W_l||_* / ||W_l||_*(init)``."""
        return model.trace_norm_rates()


def trace_norm_decrease_plot(rates, path, title: Optional[str] = None) -> str:
    """Bar chart of per-layer trace-norm decrease rates (Hu et al. Fig. 3b).

    ``rates``: a sequence of 33 values, or a mapping ``label -> sequence`` for
    several runs (grouped bars, e.g. LAF / Tucker / TT). Writes a PNG to
    ``path`` (matplotlib Agg) and returns the path.
    """
    # late: only this figure needs matplotlib (and its Agg backend must be
    # chosen before pyplot loads); training the method does not import it
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = dict(rates) if isinstance(rates, dict) else {"rate": list(rates)}
    if not series or not any(len(v) for v in series.values()):
        raise ValueError("trace_norm_decrease_plot: no rates")
    n = max(len(v) for v in series.values())
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * n + 2), 3.2), dpi=100)
    width = 0.8 / len(series)
    for j, (label, values) in enumerate(series.items()):
        xs = np.arange(1, len(values) + 1) + (j - (len(series) - 1) / 2) * width
        ax.bar(xs, np.asarray(values, np.float64), width=width, label=str(label))
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xlabel("conv layer (stacked across tasks)")
    ax.set_ylabel("trace norm / trace norm at init")
    ax.set_xlim(0.3, n + 0.7)
    ax.set_title(title or "Trace-norm decrease rate per layer")
    if len(series) > 1:
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(str(path))), exist_ok=True)
    fig.savefig(str(path), format="png")
    plt.close(fig)
    return str(path)
