"""The figures of one benchmark run, from its saved prediction arrays
(``benchmarks.protocols.collect_predictions``)."""

from __future__ import annotations

import logging
import os
from typing import Dict, Mapping

from pipeline import figures

log = logging.getLogger("fermtl.benchmark")


def draw(method_name: str, method, model, cfg, fold_name: str, arrays: Mapping,
         run_dir: str) -> Dict[str, str]:
    """PNG paths by figure name: confusion matrix, t-SNE, and the method's own
    (AU scores per emotion, trace-norm decrease rates, ConvFLU gates,
    synthesized expressions). A figure that fails is logged, not fatal (the
    numbers are already saved)."""
    title = f"{method_name} ({fold_name})"
    out: Dict[str, str] = {}

    def attempt(name, fn, *args, **kwargs):
        try:
            out[name] = fn(*args, **kwargs)
        except Exception as exc:  # keep the run's numbers even if a plot breaks
            log.warning("%s: figure %s failed: %s: %s", title, name, type(exc).__name__, exc)

    y = arrays["emotion"]
    attempt("confusion", figures.confusion_matrix_plot, y, arrays["probabilities"].argmax(-1),
            os.path.join(run_dir, "confusion.png"), title=f"{title}: confusion")
    if "features" in arrays:
        attempt("tsne", figures.tsne_plot, arrays["features"], y[arrays["feature_index"]],
                os.path.join(run_dir, "tsne.png"), title=f"{title}: t-SNE of features")
    if "aus" in arrays:
        attempt("au_per_emotion", figures.au_per_emotion_plot, arrays["aus"],
                arrays["probabilities"].argmax(-1), os.path.join(run_dir, "au_per_emotion.png"),
                title=f"{title}: mean AU score per predicted emotion")
    if hasattr(method, "trace_norm_rates"):
        attempt("trace_norm_rates", figures.trace_norm_rates_plot,
                method.trace_norm_rates(model), os.path.join(run_dir, "trace_norm_rates.png"),
                title=f"{title}: trace-norm decrease rate per layer")
    if method_name == "fersnet" and "faces" in arrays:
        faces = figures.example_faces(arrays["faces"], arrays["face_emotion"])
        attempt("convflu_gates", figures.convflu_gate_plot, model, faces,
                os.path.join(run_dir, "convflu_gates.png"), title=f"{title}: ConvFLU gates")
        attempt("synthesis_grid", figures.synthesis_grid_plot, model, faces,
                os.path.join(run_dir, "synthesis_grid.png"),
                title=f"{title}: synthesized expressions", emotions=figures.present_emotions(y))
    return out


def draw_side_aus(method_name: str, fold_name: str, side_name: str, arrays: Mapping,
                  run_dir: str) -> Dict[str, str]:
    """The AU-per-emotion figure of a side test (``Fold.side_tests``), e.g. SJMT's
    AU scores on FER2013 faces, which carry no AU labels (SJMT Fig 2); rows are
    the faces' labelled emotions. Key ``au_per_emotion:<side>``."""
    key = f"au_per_emotion:{side_name}"
    path = os.path.join(run_dir, f"au_per_emotion_{side_name.replace('.', '_')}.png")
    try:
        return {key: figures.au_per_emotion_plot(
            arrays["aus"], arrays["emotion"], path,
            title=f"{method_name} ({fold_name}): mean AU score per emotion, {side_name}")}
    except Exception as exc:  # the numbers are saved already
        log.warning("%s/%s: figure %s failed: %s: %s", method_name, fold_name, key,
                    type(exc).__name__, exc)
        return {}
