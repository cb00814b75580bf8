"""The seeds' figures, drawn from our own runs (matplotlib, Agg, PNG).

Every function takes arrays (or a trained model where the figure needs one),
writes one PNG and returns its path:

* :func:`confusion_matrix_plot` / :func:`confusion_matrix_figure` — row-normalised
  confusion matrix (``models.metrics.confusion_matrix``);
* :func:`tsne_plot` — t-SNE of learned features coloured by emotion (DDMTL Fig 5);
* :func:`trace_norm_rates_plot` — trace-norm decrease rate per layer (Hu Fig 3b);
* :func:`convflu_gate_plot` — ConvFLU leaky-gate maps per block (FERSNet Fig 3);
* :func:`synthesis_grid_plot` — every expression synthesized per face (FERSNet Fig 4);
* :func:`au_per_emotion_plot` — mean AU score per predicted emotion (SJMT Fig 2);
* :func:`accuracy_bars` — accuracy (± std over folds) per method.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence

import matplotlib
import numpy as np

from components import contract
from models import metrics

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the Agg backend)


def _plt():
    return plt


def _save(fig, path) -> str:
    path = str(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return path


def _present_classes(*label_arrays) -> list:
    present = sorted({int(v) for a in label_arrays for v in np.asarray(a).ravel() if v >= 0})
    if not present:
        raise ValueError("no labelled sample to plot")
    return present


def present_emotions(*label_arrays) -> list:
    """Names (contract order) of the emotions that occur in ``label_arrays``
    (-1 = unlabelled), e.g. a CK+ fold's synthesis targets: contempt, no neutral."""
    return [contract.EMOTIONS[i] for i in _present_classes(*label_arrays)]


def confusion_matrix_plot(y_true, y_pred, path, title: str = "Confusion matrix") -> str:
    """:func:`confusion_matrix_figure` of ``models.metrics.confusion_matrix``
    (unlabelled faces, ``y_true < 0``, are not counted)."""
    return confusion_matrix_figure(metrics.confusion_matrix(y_true, y_pred), path, title)


def confusion_matrix_figure(cm, path, title: str = "Confusion matrix") -> str:
    """Confusion matrix counts ``[8, 8]`` (rows = truth) over the emotions that
    occur, rows normalised to recall (cell text: recall and count)."""
    cm = np.asarray(cm)
    classes = [c for c in range(len(cm)) if cm[c].sum() or cm[:, c].sum()]
    if not classes:
        raise ValueError("no labelled sample to plot")
    cm = cm[np.ix_(classes, classes)]
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    plt = _plt()
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * n, 0.8 + 0.7 * n))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    names = [contract.EMOTIONS[c] for c in classes]
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{norm[i, j]:.2f}\n{cm[i, j]:.0f}", ha="center", va="center",
                    fontsize=7, color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"{title}\naccuracy {acc:.1%} on {cm.sum():.0f} faces", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def tsne_plot(features, labels, path, title: str = "t-SNE of learned features",
              seed: int = 0, max_points: int = 2000) -> str:
    """2-D t-SNE (scikit-learn, PCA init) of ``features`` ``[N, D]`` coloured by
    emotion ``labels``; unlabelled rows are dropped, then at most ``max_points``
    drawn at random (``seed``)."""
    from sklearn.manifold import TSNE  # late: scikit-learn's manifold module is slow to import

    x = np.asarray(features, np.float64).reshape(len(features), -1)
    y = np.asarray(labels, np.int64)
    keep = np.flatnonzero(y >= 0)
    keep = np.sort(np.random.default_rng(seed).permutation(keep)[:max_points])
    x, y = x[keep], y[keep]
    if len(x) < 5:
        raise ValueError(f"t-SNE needs at least 5 labelled points, got {len(x)}")
    emb = TSNE(n_components=2, perplexity=float(min(30, max(2, (len(x) - 1) // 3))),
               init="pca", random_state=seed).fit_transform(x)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    cmap = plt.get_cmap("tab10")
    for c in _present_classes(y):
        m = y == c
        ax.scatter(emb[m, 0], emb[m, 1], s=6, color=cmap(c % 10), label=contract.EMOTIONS[c])
    ax.legend(fontsize=7, markerscale=2, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{title} ({len(x)} faces)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def trace_norm_rates_plot(rates, path, title: Optional[str] = None) -> str:
    """Per-layer ``||W||_* / ||W||_*(init)`` bars (one series or a mapping of series)."""
    # late, here and below: a method's own plot imports that method only when drawn
    from models.tracenorm import trace_norm_decrease_plot

    return trace_norm_decrease_plot(rates, path, title=title)


def au_per_emotion_plot(aus, predicted_emotion, path,
                        title: str = "Mean AU score per predicted emotion") -> str:
    """Heat map: rows = predicted emotions, columns = the 17 AUs, cell = mean
    sigmoid AU score of the faces predicted as that emotion (SJMT Fig 2: AUs
    predicted for emotion-only images)."""
    aus = np.asarray(aus, np.float64).reshape(-1, contract.NUM_AUS)
    pred = np.asarray(predicted_emotion, np.int64)
    classes = _present_classes(pred)
    table = np.stack([aus[pred == c].mean(0) for c in classes])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.0, 0.9 + 0.45 * len(classes)))
    im = ax.imshow(table, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(contract.NUM_AUS), contract.AU_NAMES, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)),
                  [f"{contract.EMOTIONS[c]} ({int((pred == c).sum())})" for c in classes],
                  fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.03)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def example_faces(images, emotions, per_class: int = 1, max_faces: int = 6) -> np.ndarray:
    """``per_class`` labelled faces of each emotion present among model-input
    ``images`` ``[N, S, S, 1]`` (``emotions`` ``[N]``), in emotion order, at
    most ``max_faces``."""
    emotions = np.asarray(emotions).reshape(-1)
    chosen, seen = [], {}
    for i, e in enumerate(emotions):
        if e >= 0 and seen.get(int(e), 0) < per_class:
            seen[int(e)] = seen.get(int(e), 0) + 1
            chosen.append(i)
    chosen = sorted(chosen, key=lambda i: emotions[i])[:max_faces]
    if not chosen:
        raise ValueError("no labelled face to show")
    return np.asarray(images)[chosen]


def image_grid(faces, columns: Sequence[tuple], path, title: str, cell: float = 1.25) -> str:
    """Rows = ``faces`` ``[N, S, S, 1]``; first column the face, then one column
    per ``(header, images [N, h, w], cmap)`` (values shown on a fixed 0..1 scale,
    with a colour bar when a column is not grayscale)."""
    faces = np.asarray(faces, np.float32)
    plt = _plt()
    n, cols = len(faces), 1 + len(columns)
    fig, axes = plt.subplots(n, cols, figsize=(cell * cols, cell * n + 0.4), squeeze=False)
    coloured = None
    for i in range(n):
        axes[i, 0].imshow(faces[i, ..., 0], cmap="gray", vmin=0, vmax=1)
        for j, (_, images, cmap) in enumerate(columns):
            shown = axes[i, 1 + j].imshow(np.clip(images[i], 0, 1), cmap=cmap, vmin=0, vmax=1)
            coloured = shown if cmap != "gray" else coloured
    for j, (header, _, _) in enumerate([("input", None, None)] + list(columns)):
        axes[0, j].set_title(header, fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    if coloured is not None:
        fig.subplots_adjust(right=0.92)
        bar = fig.colorbar(coloured, cax=fig.add_axes([0.94, 0.2, 0.012, 0.6]))
        bar.ax.tick_params(labelsize=7)
    return _save(fig, path)


def landmarks_plot(faces, true, predicted: Mapping[str, Any], path,
                   title: str = "Landmarks") -> str:
    """Faces ``[N, S, S, 1]`` (columns) with their 68 true points (white) and, one
    row per ``predicted`` set (name -> ``[N, 136]``, x/y in [0, 1] of the face),
    that set's points in colour (trace-norm's landmark task, Hu et al. Fig 4)."""
    faces = np.asarray(faces, np.float32)
    size = faces.shape[1]
    # [0, 1] of the face -> imshow's pixel-centre coordinates
    pts = lambda a: np.asarray(a, np.float64).reshape(len(faces), -1, 2) * size - 0.5
    plt = _plt()
    rows = max(len(predicted), 1)
    fig, axes = plt.subplots(rows, len(faces), figsize=(1.5 * len(faces), 1.5 * rows + 0.4),
                             squeeze=False)
    colours = plt.get_cmap("tab10")
    sets = list(predicted.items()) or [("", None)]
    for r, (name, p) in enumerate(sets):
        for i, ax in enumerate(axes[r]):
            ax.imshow(faces[i, ..., 0], cmap="gray", vmin=0, vmax=1)
            t = pts(true)[i]
            ax.scatter(t[:, 0], t[:, 1], s=3, c="white")
            if p is not None:
                q = pts(p)[i]
                ax.scatter(q[:, 0], q[:, 1], s=3, color=colours(r))
            ax.set_xlim(-0.5, size - 0.5)
            ax.set_ylim(size - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(name, fontsize=7, color=colours(r))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def convflu_gate_plot(model, faces, path, title: str = "ConvFLU gates") -> str:
    """For each face: the input, then per transfer block the channel-mean of
    the recognition stream's leaky gate ``r_x`` (what it takes from the
    synthesis stream) and of the synthesis stream's ``r_y`` (FERSNet Fig 3)."""
    from models.fersnet import gate_maps

    faces = np.asarray(faces, np.float32)
    gates = gate_maps(model, faces)
    columns = [(f"{gate} {block}", gates[block][gate].mean(-1), "magma")
               for gate in ("r_x", "r_y") for block in sorted(gates)]
    return image_grid(faces, columns, path, title, cell=1.3)


def synthesis_grid_plot(model, faces, path, title: str = "Synthesized expressions",
                        emotions: Sequence[str] = contract.BASIC7) -> str:
    """Rows = input faces; columns = the input, then ``G(face, target)`` for
    every target expression (FERSNet Fig 4)."""
    from models.fersnet import synthesize

    faces = np.asarray(faces, np.float32)
    targets = [contract.canonical_emotion(e) for e in emotions]
    n = len(faces)
    fakes = synthesize(model, np.repeat(faces, len(targets), axis=0),
                       np.tile(np.asarray(targets, np.int64), n))
    fakes = fakes.reshape(n, len(targets), *faces.shape[1:3])
    columns = [(e, fakes[:, j], "gray") for j, e in enumerate(emotions)]
    return image_grid(faces, columns, path, title, cell=1.2)


def accuracy_bars(summary: Sequence[Mapping[str, Any]], path,
                  title: str = "Accuracy per method") -> str:
    """Bars of ``accuracy_mean`` (± ``accuracy_std``) and ``balanced_mean`` per
    method (the rows of :func:`benchmarks.tables.summarize`)."""
    if not summary:
        raise ValueError("no results to plot")
    plt = _plt()
    names = [s["method"] for s in summary]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(1.2 + 1.0 * len(names), 3.4))
    ax.bar(x - 0.2, [s["accuracy_mean"] for s in summary], 0.4,
           yerr=[s["accuracy_std"] for s in summary], label="accuracy", capsize=3)
    ax.bar(x + 0.2, [s["balanced_mean"] for s in summary], 0.4, label="balanced accuracy")
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def training_curves_plot(history: Mapping[str, Sequence[float]], path,
                         title: str = "Training curves") -> Optional[str]:
    """Per epoch, from a Keras ``History.history`` dict: the training and
    validation loss (left) and the validation accuracy (right, when logged).
    ``None`` when no epoch was run (nothing to draw)."""
    loss = list(history.get("loss") or [])
    if not loss:
        return None
    plt = _plt()
    accuracy = list(history.get("val_accuracy") or [])
    fig, axes = plt.subplots(1, 2 if accuracy else 1, figsize=(8 if accuracy else 4.2, 3.2),
                             squeeze=False)
    epochs = np.arange(1, len(loss) + 1)
    axes[0, 0].plot(epochs, loss, label="training")
    if history.get("val_loss"):
        axes[0, 0].plot(epochs[:len(history["val_loss"])], history["val_loss"],
                        label="validation")
    axes[0, 0].set(xlabel="epoch", ylabel="loss")
    axes[0, 0].legend(fontsize=8)
    if accuracy:
        axes[0, 1].plot(epochs[:len(accuracy)], accuracy, color="C1")
        axes[0, 1].set(xlabel="epoch", ylabel="validation accuracy (Keras, per batch)")
        axes[0, 1].grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


__all__ = ["present_emotions", "confusion_matrix_plot", "confusion_matrix_figure", "tsne_plot", "trace_norm_rates_plot", "au_per_emotion_plot",
           "example_faces", "convflu_gate_plot", "synthesis_grid_plot", "accuracy_bars",
           "training_curves_plot"]
