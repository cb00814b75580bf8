"""`fermtl benchmark`: every method under one evaluation protocol, one table.

Steps (``run_benchmark``):

1. **Data.** The data spec (``components/ingestion``, the same YAML the
   pipeline's FaceIngestion reads) is ingested once with Beam into
   ``OUT/data`` (readers, face alignment, quarantine, splits); a later call
   with the same spec reuses it.
2. **Folds** (:func:`make_folds`) — the protocol decides train/test:

   * ``holdout``: the spec's own split (train -> eval), e.g. FER2013
     Training -> PublicTest;
   * ``kfold``: subject-independent k-fold: the fold of a sample is
     ``splits.assign_fold(split_key(sample), k, seed)``, so all images of a
     subject share one fold, folds never share a subject and every sample is
     tested exactly once (the seeds use 8- and 10-fold on CK+/MMI/Oulu);
   * ``cross``: train on the datasets ``train_datasets`` (all their samples),
     test on ``test_datasets``.

3. **Runs.** Each (method, fold) trains with :func:`models.training.train`
   into ``OUT/runs/<method>/<fold>/`` with per-epoch checkpoints (an
   interrupted benchmark resumes where it stopped; a finished run's
   ``result.json`` is reused). ``minutes`` sets a per-run CPU budget: a short
   calibration measures the method's training images/s and the epoch count is
   chosen to fit, so learning-rate schedules complete; a wall-clock guard
   stops a run that overshoots by a quarter.
4. **Outputs.** Per run: ``result.json``, ``predictions.npz`` (labels,
   probabilities, features, AU scores) and figures (confusion matrix, t-SNE,
   plus the method's own: trace-norm decrease rates, ConvFLU gate maps,
   synthesized-expression grid, AU scores per predicted emotion). Per
   benchmark: ``results.md`` / ``results.csv`` (:func:`write_table`),
   accuracy bars.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import platform
import subprocess
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from components import contract
from components.ingestion import splits as splits_lib

log = logging.getLogger("fermtl.benchmark")

PROTOCOLS = ("holdout", "kfold", "cross")
#: Methods a benchmark with ``methods="all"`` trains (the baseline is the
#: plain single-task CNN the issue asks to compare against).
ALL_METHODS = ("baseline", "ddmtl", "fersnet", "sjmt", "multidataset", "tracenorm")
#: Features kept per run for the t-SNE plot.
MAX_FEATURES = 2000


class BenchmarkError(ValueError):
    """A protocol that cannot be run on the given data (empty fold, unknown dataset ...)."""


# --------------------------------------------------------------------------- #
# data and folds
# --------------------------------------------------------------------------- #
@dataclasses.dataclass
class Fold:
    name: str
    train: List[contract.FaceSample]
    test: List[contract.FaceSample]

    def describe(self) -> str:
        return (f"{self.name}: train {len(self.train)} ({_subjects(self.train)} subjects), "
                f"test {len(self.test)} ({_subjects(self.test)} subjects)")


def _subjects(samples) -> int:
    return len({splits_lib.split_key(s) for s in samples})


def load_samples(spec, data_dir: str, beam_args: Optional[Sequence[str]] = None):
    """``(samples, counts)`` of a data spec, ingested once into ``data_dir``.

    ``sample.split`` is set from the ingested split folder (``train`` /
    ``eval``). The ingestion is reused when ``data_dir/spec.json`` matches.
    """
    import tensorflow as tf

    from components.ingestion import DataSpec, ingest

    spec = DataSpec.load(spec)
    spec_json = spec.to_json()
    marker = os.path.join(data_dir, "spec.json")
    counts_path = os.path.join(data_dir, "counts.json")
    if not (tf.io.gfile.exists(marker) and tf.io.gfile.exists(counts_path)
            and open(marker).read() == spec_json):
        log.info("ingesting %d source(s) into %s", len(spec.sources), data_dir)
        counts = ingest(spec, data_dir, beam_args=list(beam_args or []))
        os.makedirs(data_dir, exist_ok=True)
        with open(counts_path, "w") as f:
            json.dump(counts, f, indent=2, default=str)
        with open(marker, "w") as f:
            f.write(spec_json)
    else:
        log.info("reusing the ingested data in %s", data_dir)
    with open(counts_path) as f:
        counts = json.load(f)
    samples: List[contract.FaceSample] = []
    for split in ("train", "eval"):
        files = tf.io.gfile.glob(os.path.join(data_dir, "examples", f"Split-{split}", "*"))
        for s in contract.read_tfrecord(sorted(files), compression="GZIP"):
            s.split = split
            samples.append(s)
    return samples, counts


def make_folds(samples: Sequence[contract.FaceSample], protocol: str, k: int = 10,
               seed: int = 0, train_datasets: Sequence[str] = (),
               test_datasets: Sequence[str] = ()) -> List[Fold]:
    """Train/test folds of ``samples`` under ``protocol`` (see the module docstring).

    Raises :class:`BenchmarkError` when a fold would be empty or a named
    dataset is absent.
    """
    samples = list(samples)
    if protocol not in PROTOCOLS:
        raise BenchmarkError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")
    if protocol == "holdout":
        splits = {s.split for s in samples}
        if not splits <= {"train", "eval"}:
            raise BenchmarkError(f"holdout needs samples with split train/eval, got {splits}")
        folds = [Fold("holdout", [s for s in samples if s.split == "train"],
                      [s for s in samples if s.split == "eval"])]
    elif protocol == "kfold":
        if int(k) < 2:
            raise BenchmarkError(f"kfold needs k >= 2, got {k}")
        fold_of = [splits_lib.assign_fold(splits_lib.split_key(s), k, seed) for s in samples]
        folds = [Fold(f"fold{i}", [s for s, f in zip(samples, fold_of) if f != i],
                      [s for s, f in zip(samples, fold_of) if f == i]) for i in range(int(k))]
    else:
        present = sorted({s.dataset for s in samples})
        if not train_datasets or not test_datasets:
            raise BenchmarkError("cross needs train_datasets and test_datasets "
                                 f"(datasets in the data: {present})")
        missing = sorted((set(train_datasets) | set(test_datasets)) - set(present))
        if missing:
            raise BenchmarkError(f"cross: datasets {missing} are not in the data {present}")
        both = sorted(set(train_datasets) & set(test_datasets))
        if both:
            raise BenchmarkError(f"cross: {both} is both a train and a test dataset")
        name = f"{'+'.join(train_datasets)}-to-{'+'.join(test_datasets)}"
        folds = [Fold(name, [s for s in samples if s.dataset in train_datasets],
                      [s for s in samples if s.dataset in test_datasets])]
    for fold in folds:
        if not fold.train or not fold.test:
            raise BenchmarkError(
                f"{protocol}: {fold.name} has an empty {'train' if not fold.train else 'test'}"
                f" side ({len(samples)} samples, {_subjects(samples)} subjects)"
                + (" — use fewer folds or add subjects" if protocol == "kfold" else ""))
    if protocol == "kfold":
        labelled = [f for f in folds if any(s.emotion >= 0 for s in f.test)]
        if not labelled:
            raise BenchmarkError("kfold: no fold has an emotion-labelled test sample")
    return folds


# --------------------------------------------------------------------------- #
# provenance
# --------------------------------------------------------------------------- #
def hardware() -> str:
    """``"<cpu model>, N cores[, GPUs]"`` of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores"
    try:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            text += f", {len(gpus)} GPU(s)"
    except Exception:  # pragma: no cover - TF always imports in this project
        pass
    return text


def git_commit(repo_dir: Optional[str] = None) -> str:
    """Short commit of the code (``+dirty`` with uncommitted changes; ``unknown``
    outside a git checkout)."""
    repo_dir = repo_dir or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo_dir,
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=repo_dir, capture_output=True, text=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# --------------------------------------------------------------------------- #
# one run
# --------------------------------------------------------------------------- #
def calibrate_epochs(method_name: str, preset: str, overrides: Mapping[str, Any],
                     train: Sequence[contract.FaceSample], minutes: float, seed: int = 0,
                     steps: int = 12, max_epochs: Optional[int] = None) -> Dict[str, Any]:
    """Epochs that fit ``minutes`` of training: a throwaway model trains
    ``steps`` steps, images/s is measured after the first (compiling) step."""
    from models import training

    from models.registry import get_method

    method = get_method(method_name)
    cfg = method.config(preset, **dict(overrides))
    batch = int(cfg.get("batch_size", 32))
    clock = training.TimeBudget(1e9, batch)
    training.train(method, list(train)[:max(batch * steps * 2, batch)], preset=preset,
                   overrides=dict(overrides), epochs=1, steps_per_epoch=steps, seed=seed,
                   callbacks=[clock], post_fit=False)
    ips = clock.images_per_second
    epochs = max(1, int(minutes * 60.0 * ips / max(len(train), 1)))
    if max_epochs:
        epochs = min(epochs, int(max_epochs))
    return {"images_per_second": ips, "epochs": epochs}


class _Clock:
    """Cumulative training seconds of a run across resumes (``clock.json``)."""

    def __init__(self, path: str):
        self.path = path
        self.before = 0.0
        if os.path.exists(path):
            with open(path) as f:
                self.before = float(json.load(f)["seconds"])

    def callback(self):
        import keras

        clock = self

        class Tick(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.t0 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                clock.save(time.perf_counter() - self.t0)

        return Tick()

    def save(self, extra: float) -> float:
        with open(self.path, "w") as f:
            json.dump({"seconds": self.before + extra}, f)
        return self.before + extra


def _features(outputs: Mapping[str, np.ndarray]) -> Optional[np.ndarray]:
    for key in ("embedding", "features", "logits"):
        if key in outputs:
            return outputs[key].reshape(len(outputs[key]), -1)
    return None


def collect_predictions(method, model, cfg, samples, max_features: int = MAX_FEATURES,
                        seed: int = 0):
    """Arrays of the inference model over labelled ``samples`` for figures:
    ``emotion`` (truth), ``probabilities``, ``aus`` (when predicted),
    ``dataset_id``, and ``features`` (embedding, else logits) of at most
    ``max_features`` rows drawn at random (``feature_index``: their rows), so a
    test set stored class by class still shows every class."""
    from models import training

    n = len(samples)
    picked = np.zeros(n, bool)
    picked[np.random.default_rng(seed).permutation(n)[:max_features]] = True
    cols: Dict[str, List[np.ndarray]] = {}
    start = 0
    for batch, out in training.predict(method, model, cfg, samples):
        rows = np.arange(start, start + len(batch["emotion"]))
        start = rows[-1] + 1
        cols.setdefault("emotion", []).append(batch["emotion"])
        cols.setdefault("dataset_id", []).append(batch.get("dataset_id",
                                                           np.zeros_like(batch["emotion"])))
        cols.setdefault("probabilities", []).append(out["probabilities"])
        feats = _features(out)
        if feats is not None:
            cols.setdefault("features", []).append(feats[picked[rows]])
            cols.setdefault("feature_index", []).append(rows[picked[rows]])
        if "aus" in out:
            cols.setdefault("aus", []).append(out["aus"])
    return {k: np.concatenate(v) for k, v in cols.items()}


def run_one(method_name: str, fold: Fold, run_dir: str, preset: str = "small",
            overrides: Optional[Mapping[str, Any]] = None, epochs: Optional[int] = None,
            minutes: Optional[float] = None, seed: int = 0, figures: bool = True,
            provenance: Optional[Mapping[str, str]] = None,
            redo_figures: bool = False) -> Dict[str, Any]:
    """Train, evaluate and plot one method on one fold; returns its result row.

    ``epochs``: the epoch count (default: the preset's, or calibrated from
    ``minutes`` when given). Reuses ``run_dir/result.json`` when present
    (``redo_figures``: then rebuilds the model from its weights and redraws the
    figures); resumes from ``run_dir/checkpoints`` otherwise.
    """
    import keras

    from models import training
    from models.registry import get_method

    result_path = os.path.join(run_dir, "result.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            log.info("%s/%s: finished earlier, reusing %s", method_name, fold.name, result_path)
            row = json.load(f)
        if redo_figures:
            row = redo_run_figures(row, fold, run_dir)
        return row
    os.makedirs(run_dir, exist_ok=True)
    overrides = dict(overrides or {})
    method = get_method(method_name)
    cfg0 = method.config(preset, **overrides)
    plan_path = os.path.join(run_dir, "plan.json")
    if os.path.exists(plan_path):
        with open(plan_path) as f:
            plan = json.load(f)
    else:
        plan = {"epochs": int(epochs or cfg0.get("epochs", 10)), "calibrated_images_per_s": None}
        if minutes and not epochs:
            cal = calibrate_epochs(method_name, preset, overrides, fold.train, minutes, seed)
            plan = {"epochs": cal["epochs"],
                    "calibrated_images_per_s": cal["images_per_second"]}
        plan["minutes"] = minutes
        with open(plan_path, "w") as f:
            json.dump(plan, f)
    log.info("%s/%s (%s): %d epochs%s — %s", method_name, fold.name, preset, plan["epochs"],
             f" to fit {minutes:g} min" if minutes else "", fold.describe())

    clock = _Clock(os.path.join(run_dir, "clock.json"))
    callbacks: List[keras.callbacks.Callback] = [clock.callback()]
    budget = None
    if minutes:
        remaining = max(minutes * 60.0 * 1.25 - clock.before, 1.0)
        budget = training.TimeBudget(remaining, int(cfg0.get("batch_size", 32)))
        callbacks.append(budget)
    start = time.perf_counter()
    method, model, cfg, history = training.train(
        method, fold.train, preset=preset, overrides=overrides, epochs=plan["epochs"],
        checkpoint_dir=os.path.join(run_dir, "checkpoints"), seed=seed, callbacks=callbacks,
        verbose=2)
    train_s = clock.save(time.perf_counter() - start) if history.history else clock.before
    model.save_weights(os.path.join(run_dir, "final.weights.h5"))
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, default=str)

    metrics = training.evaluate(method, model, cfg, fold.test)
    arrays = collect_predictions(method, model, cfg, fold.test)
    np.savez_compressed(os.path.join(run_dir, "predictions.npz"), **arrays)
    row: Dict[str, Any] = {
        "method": method_name, "preset": preset, "fold": fold.name,
        "overrides": overrides, "image_size": int(cfg["image_size"]),
        "params": int(model.count_params()), "epochs": plan["epochs"],
        "stopped_by_budget": bool(budget is not None and model.stop_training),
        "train_seconds": round(float(train_s), 1),
        "train_images": len(fold.train), "test_images": len(fold.test),
        "images_per_second": (None if budget is None or np.isnan(budget.images_per_second)
                              else round(float(budget.images_per_second), 1)),
        **{k: metrics[k] for k in ("accuracy", "balanced_accuracy", "per_class_recall",
                                   "confusion_matrix", "num_examples")},
        **({"au_mean_f1": metrics["au_mean_f1"]} if "au_mean_f1" in metrics else {}),
        **dict(provenance or {}),
    }
    if figures:
        row["figures"] = run_figures(method_name, method, model, cfg, fold, arrays, run_dir)
    with open(result_path, "w") as f:
        json.dump(row, f, indent=2, default=float)
    log.info("%s/%s: accuracy %.4f (balanced %.4f), %.0f s", method_name, fold.name,
             row["accuracy"], row["balanced_accuracy"], row["train_seconds"])
    return row


def load_run_model(run_dir: str, datasets: Optional[Sequence[str]] = None):
    """``(method, model, cfg)`` of a finished run, rebuilt from its
    ``config.json`` (or ``result.json``'s preset + overrides, with ``datasets``)
    and ``final.weights.h5`` — e.g. to export or time it later."""
    from models import training
    from models.registry import get_method

    cfg_path = os.path.join(run_dir, "config.json")
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            saved = json.load(f)
        method = get_method(saved["method"])
        cfg = method.config(saved["preset"])
        cfg.update(saved)
    else:
        with open(os.path.join(run_dir, "result.json")) as f:
            row = json.load(f)
        if not datasets:
            raise BenchmarkError(f"{run_dir}: no config.json; pass the run's training datasets")
        method = get_method(row["method"])
        cfg = method.config(row["preset"], **row.get("overrides", {}))
        cfg["datasets"] = list(datasets)
    model = method.build(cfg)
    training.restore(model, os.path.join(run_dir, "final.weights.h5"))
    return method, model, cfg


def redo_run_figures(row: Dict[str, Any], fold: Fold, run_dir: str) -> Dict[str, Any]:
    """Redraw a finished run's figures from its saved weights (the numbers stay)."""
    from models.training import dataset_names

    method, model, cfg = load_run_model(run_dir, dataset_names(fold.train))
    arrays = collect_predictions(method, model, cfg, fold.test)
    np.savez_compressed(os.path.join(run_dir, "predictions.npz"), **arrays)
    row = dict(row, figures=run_figures(row["method"], method, model, cfg, fold, arrays,
                                        run_dir))
    with open(os.path.join(run_dir, "result.json"), "w") as f:
        json.dump(row, f, indent=2, default=float)
    return row


def run_figures(method_name: str, method, model, cfg, fold: Fold, arrays: Mapping,
                run_dir: str) -> Dict[str, str]:
    """The figures of one run (PNG paths by name); a figure that fails is logged,
    not fatal (the numbers are already saved)."""
    from pipeline import figures

    title = f"{method_name} ({fold.name})"
    out: Dict[str, str] = {}

    def attempt(name, fn, *args, **kwargs):
        try:
            out[name] = fn(*args, **kwargs)
        except Exception as exc:  # keep the run's numbers even if a plot breaks
            log.warning("%s: figure %s failed: %s: %s", title, name, type(exc).__name__, exc)

    y = arrays["emotion"]
    keep = y >= 0
    attempt("confusion", figures.confusion_matrix_plot, y[keep],
            arrays["probabilities"][keep].argmax(-1), os.path.join(run_dir, "confusion.png"),
            title=f"{title}: confusion")
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
    if method_name == "fersnet":
        faces = figures.example_faces(fold.test, int(cfg["image_size"]))
        attempt("convflu_gates", figures.convflu_gate_plot, model, faces,
                os.path.join(run_dir, "convflu_gates.png"), title=f"{title}: ConvFLU gates")
        attempt("synthesis_grid", figures.synthesis_grid_plot, model, faces,
                os.path.join(run_dir, "synthesis_grid.png"),
                title=f"{title}: synthesized expressions")
    return out


# --------------------------------------------------------------------------- #
# table
# --------------------------------------------------------------------------- #
def summarize(rows: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """One line per method: accuracy mean ± std over folds, mean per-class
    recall (classes present in the test data), parameters, train time."""
    by_method: Dict[str, List[Mapping[str, Any]]] = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(r)
    out = []
    for name, rs in by_method.items():
        acc = np.asarray([r["accuracy"] for r in rs], np.float64)
        bal = np.asarray([r["balanced_accuracy"] for r in rs], np.float64)
        recall = {}
        for e in contract.EMOTIONS:
            vals = [r["per_class_recall"].get(e) for r in rs]
            vals = [v for v in vals if v is not None]
            if vals:
                recall[e] = float(np.mean(vals))
        out.append({
            "method": name, "preset": rs[0]["preset"], "folds": len(rs),
            "accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std()),
            "balanced_mean": float(bal.mean()), "per_class_recall": recall,
            "params": rs[0]["params"], "image_size": rs[0]["image_size"],
            "epochs": rs[0]["epochs"],
            "train_minutes": float(sum(r["train_seconds"] for r in rs) / 60.0),
            "au_mean_f1": (float(np.mean([r["au_mean_f1"] for r in rs]))
                           if all("au_mean_f1" in r for r in rs) else None),
            "hardware": rs[0].get("hardware", ""), "commit": rs[0].get("commit", ""),
        })
    return out


def _fmt(v, fmt: str) -> str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else fmt.format(v)


def write_table(rows: Sequence[Mapping[str, Any]], out_dir: str, title: str = "Results",
                seed_reported: Optional[Mapping[str, str]] = None,
                notes: Sequence[str] = ()) -> Dict[str, str]:
    """``results.md`` and ``results.csv`` in ``out_dir`` from run rows; returns the paths.

    ``seed_reported``: method -> what its paper reports (shown beside ours).
    """
    os.makedirs(out_dir, exist_ok=True)
    summary = summarize(rows)
    classes = [e for e in contract.EMOTIONS if any(e in s["per_class_recall"] for s in summary)]
    seed_reported = dict(seed_reported or {})
    header = (["method", "preset", "input", "params", "folds", "epochs", "accuracy",
               "balanced acc."] + [f"recall {e}" for e in classes]
              + ["AU F1", "train min", "seed reports"])
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summary:
        acc = (f"{s['accuracy_mean']:.1%} ± {s['accuracy_std']:.1%}" if s["folds"] > 1
               else f"{s['accuracy_mean']:.1%}")
        cells = [s["method"], s["preset"], f"{s['image_size']}²", f"{s['params']:,}",
                 str(s["folds"]), str(s["epochs"]), acc, f"{s['balanced_mean']:.1%}"]
        cells += [_fmt(s["per_class_recall"].get(e), "{:.0%}") for e in classes]
        cells += [_fmt(s["au_mean_f1"], "{:.2f}"), f"{s['train_minutes']:.1f}",
                  seed_reported.get(s["method"], "—")]
        lines.append("| " + " | ".join(cells) + " |")
    hw = sorted({s["hardware"] for s in summary if s["hardware"]})
    commits = sorted({s["commit"] for s in summary if s["commit"]})
    lines += ["", f"Hardware: {'; '.join(hw) or 'unknown'}. Commit: {', '.join(commits) or '?'}."]
    lines += [f"{n}" for n in notes]
    md = os.path.join(out_dir, "results.md")
    with open(md, "w") as f:
        f.write("\n".join(lines) + "\n")
    path_csv = os.path.join(out_dir, "results.csv")
    with open(path_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "preset", "image_size", "params", "folds", "epochs",
                    "accuracy_mean", "accuracy_std", "balanced_accuracy_mean"]
                   + [f"recall_{e}" for e in classes]
                   + ["au_mean_f1", "train_minutes", "hardware", "commit", "seed_reported"])
        for s in summary:
            w.writerow([s["method"], s["preset"], s["image_size"], s["params"], s["folds"],
                        s["epochs"], f"{s['accuracy_mean']:.4f}", f"{s['accuracy_std']:.4f}",
                        f"{s['balanced_mean']:.4f}"]
                       + [("" if s["per_class_recall"].get(e) is None
                           else f"{s['per_class_recall'][e]:.4f}") for e in classes]
                       + ["" if s["au_mean_f1"] is None else f"{s['au_mean_f1']:.4f}",
                          f"{s['train_minutes']:.2f}", s["hardware"], s["commit"],
                          seed_reported.get(s["method"], "")])
    return {"markdown": md, "csv": path_csv}


# --------------------------------------------------------------------------- #
# the whole benchmark
# --------------------------------------------------------------------------- #
def resolve_methods(methods) -> List[str]:
    """``"all"`` / ``"a,b"`` / a list -> method names (checked)."""
    from models import registry

    if isinstance(methods, str):
        methods = list(ALL_METHODS) if methods == "all" else [
            m.strip() for m in methods.split(",") if m.strip()]
    known = set(registry.method_names())
    unknown = [m for m in methods if m not in known]
    if unknown or not methods:
        raise BenchmarkError(f"unknown methods {unknown}; choose from {sorted(known)} or 'all'")
    return list(methods)


SETTING_KEYS = ("preset", "overrides", "epochs", "minutes")


def load_settings(path: str) -> Dict[str, Any]:
    """Benchmark settings YAML -> ``{"methods": {...}, "seed_reported": {...}}``.

    Validates the keys so a typo fails before an hour of training, not after.
    """
    import yaml

    from models import registry

    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise BenchmarkError(f"{path}: expected a mapping with 'methods' / 'seed_reported'")
    unknown = sorted(set(raw) - {"methods", "seed_reported"})
    if unknown:
        raise BenchmarkError(f"{path}: unknown keys {unknown} (known: methods, seed_reported)")
    methods = raw.get("methods") or {}
    known = set(registry.method_names())
    for name, setting in methods.items():
        if name not in known:
            raise BenchmarkError(f"{path}: unknown method {name!r}; known: {sorted(known)}")
        bad = sorted(set(setting or {}) - set(SETTING_KEYS))
        if bad:
            raise BenchmarkError(f"{path}: methods.{name}: unknown keys {bad} "
                                 f"(known: {', '.join(SETTING_KEYS)})")
        if "preset" in (setting or {}):
            registry.get_method(name).config(setting["preset"], **(setting.get("overrides") or {}))
    return {"methods": {k: dict(v or {}) for k, v in methods.items()},
            "seed_reported": dict(raw.get("seed_reported") or {})}


def run_benchmark(spec, out_dir: str, methods="all", protocol: str = "holdout", k: int = 10,
                  train_datasets: Sequence[str] = (), test_datasets: Sequence[str] = (),
                  method_settings: Optional[Mapping[str, Mapping[str, Any]]] = None,
                  preset: str = "small", epochs: Optional[int] = None,
                  minutes: Optional[float] = None, seed: int = 0, folds_limit: Optional[int] = None,
                  beam_args: Optional[Sequence[str]] = None, figures: bool = True,
                  seed_reported: Optional[Mapping[str, str]] = None,
                  redo_figures: bool = False) -> Dict[str, Any]:
    """Run the benchmark; returns ``{"rows", "table", "figures"}``.

    ``method_settings``: method -> ``{"preset", "overrides", "epochs",
    "minutes"}`` overriding the common ``preset`` / ``epochs`` / ``minutes``.
    ``folds_limit`` runs only the first N folds (quick looks at k-fold).
    """
    from pipeline import figures as figs

    names = resolve_methods(methods)
    samples, counts = load_samples(spec, os.path.join(out_dir, "data"), beam_args)
    folds = make_folds(samples, protocol, k=k, seed=seed, train_datasets=train_datasets,
                       test_datasets=test_datasets)
    if folds_limit:
        folds = folds[:int(folds_limit)]
    log.info("%s: %d samples (%d quarantined at ingestion), %d fold(s): %s", protocol,
             len(samples), counts.get("quarantined", 0), len(folds),
             "; ".join(f.describe() for f in folds))
    provenance = {"hardware": hardware(), "commit": git_commit(), "protocol": protocol}
    rows = []
    total = len(names) * len(folds)
    for i, name in enumerate(names):
        setting = dict((method_settings or {}).get(name, {}))
        for j, fold in enumerate(folds):
            log.info("[%d/%d] %s on %s", i * len(folds) + j + 1, total, name, fold.name)
            rows.append(run_one(
                name, fold, os.path.join(out_dir, "runs", name, fold.name),
                preset=setting.get("preset", preset), overrides=setting.get("overrides", {}),
                epochs=setting.get("epochs", epochs), minutes=setting.get("minutes", minutes),
                seed=seed, figures=figures, provenance=provenance,
                redo_figures=redo_figures and figures))
    notes = [f"Protocol: {protocol} ({'; '.join(f.describe() for f in folds)}).",
             f"Data: {len(samples)} faces after ingestion, {counts.get('quarantined', 0)} "
             "inputs quarantined."]
    table = write_table(rows, out_dir, title=f"fermtl benchmark — {protocol}",
                        seed_reported=seed_reported, notes=notes)
    extra = {}
    if figures:
        extra["accuracy"] = figs.accuracy_bars(summarize(rows),
                                               os.path.join(out_dir, "accuracy.png"))
    with open(os.path.join(out_dir, "rows.json"), "w") as f:
        json.dump(rows, f, indent=2, default=float)
    return {"rows": rows, "table": table, "figures": extra}
