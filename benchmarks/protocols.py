"""`fermtl benchmark`: every method under one evaluation protocol, one table.

Steps (:func:`run_benchmark`):

1. **Data, once per data spec**, and 2. **folds** (the protocol decides
   train/test): :mod:`benchmarks.folds`.
3. **Runs.** Each (method, fold) is fitted by the training core
   (``models.training.fit``, as the TFX Trainer does) into
   ``OUT/runs/<method>/<fold>/``, resumable (Keras ``BackupAndRestore``). A
   finished fold whose ``result.json`` (there, or in the committed results
   folder) has the same settings and method-code fingerprints is reused; other
   fingerprints rerun it (``benchmarks/resume.py``). ``minutes`` sets a per-run CPU
   budget: a short calibration measures the method's training images/s and
   the epoch count is chosen to fit, so learning-rate schedules complete; a
   wall-clock guard stops a run that overshoots by a quarter. The score is
   ``models.training.evaluate`` (the accuracy the Evaluator's TFMA reports).
4. **Outputs.** Per run: ``result.json``, ``predictions.npz`` and figures
   (``benchmarks/run_figures.py``). Per benchmark: ``results.md`` /
   ``results.csv`` (``benchmarks/tables.py``), accuracy bars. With a results
   folder, each fold's ``result.json``, ``predictions.csv`` and confusion
   matrix are also written there as it finishes (to commit; no weights).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from components.ingestion import DataSpec
from models import training
from models.registry import get_method
from pipeline import figures
from benchmarks import pretrain as pretraining, resume, run_figures
from benchmarks.folds import (PROTOCOLS, Fold, PreparedData, benchmark_spec, make_folds,
                              prepare_data, own_label_scores,
                              shared_class_scores)
from benchmarks.ablation_table import fold_results
from benchmarks.tables import (BenchmarkError, git_commit, hardware, method_of,
                               resolve_methods, summarize, write_table)

log = logging.getLogger("fermtl.benchmark")

#: ``training.evaluate`` keys a result row keeps when present: SJMT's AU scores
#: (per AU and their means), trace-norm's landmark NME.
ROW_METRICS = ("au_mean_f1", "au_mean_accuracy", "au_accuracy", "au_f1", "landmark_nme",
               "landmark_nme_pupils", "num_landmark_examples")
#: Features kept per run for the t-SNE plot.
MAX_FEATURES = 2000


# --------------------------------------------------------------------------- #
# one run
# --------------------------------------------------------------------------- #
def calibrate_epochs(method_name: str, cfg: Dict[str, Any], train: tf.data.Dataset,
                     n_train: int, minutes: float, seed: int = 0, steps: int = 12,
                     max_epochs: Optional[int] = None) -> Dict[str, Any]:
    """Epochs that fit ``minutes`` of training: a throwaway model trains
    ``steps`` steps with the core, images/s is measured after the first
    (compiling) step."""
    batch = int(cfg.get("batch_size", 32))
    clock = training.TimeBudget(1e9, batch)
    training.fit(method_name, dict(cfg), train.take(batch * steps * 2),
                 plan=training.Plan(epochs=1, steps_per_epoch=steps, seed=seed,
                                    callbacks=[clock], post_fit=False))
    ips = clock.images_per_second
    epochs = max(1, int(minutes * 60.0 * ips / max(n_train, 1)))
    if max_epochs:
        epochs = min(epochs, int(max_epochs))
    return {"images_per_second": ips, "epochs": epochs}


class _Clock(keras.callbacks.Callback):
    """Cumulative training seconds of a run across resumes (``clock.json``)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.before = 0.0
        if os.path.exists(path):
            with open(path) as f:
                self.before = float(json.load(f)["seconds"])
        self.t0 = None

    def on_train_begin(self, logs=None):
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.save()

    def save(self) -> float:
        total = self.before + (time.perf_counter() - self.t0 if self.t0 else 0.0)
        with open(self.path, "w") as f:
            json.dump({"seconds": total}, f)
        return total


def _features(outputs: Mapping[str, np.ndarray]) -> Optional[np.ndarray]:
    for key in ("embedding", "features", "logits"):
        if key in outputs:
            return outputs[key].reshape(len(outputs[key]), -1)
    return None


def collect_predictions(method, model, cfg, examples: tf.data.Dataset,
                        max_features: int = MAX_FEATURES, seed: int = 0,
                        max_faces: int = 64) -> Dict[str, np.ndarray]:
    """Arrays of the inference model over labelled examples for figures:
    ``emotion`` (truth), ``probabilities``, ``aus`` (when predicted),
    ``dataset_id``, ``features`` (embedding, else logits) of at most
    ``max_features`` rows drawn at random (``feature_index``: their rows), so a
    test set stored class by class still shows every class, and the first
    ``max_faces`` images (``faces``)."""
    cols: Dict[str, List[np.ndarray]] = {}
    batches = list(training.predict(method, model, cfg, examples))
    n = sum(len(b["emotion"]) for b, _ in batches)
    picked = np.zeros(n, bool)
    picked[np.random.default_rng(seed).permutation(n)[:max_features]] = True
    start = 0
    for batch, out in batches:
        rows = np.arange(start, start + len(batch["emotion"]))
        start = rows[-1] + 1
        cols.setdefault("emotion", []).append(batch["emotion"])
        cols.setdefault("dataset_id", []).append(batch["dataset_id"])
        cols.setdefault("emotion_mask", []).append(batch["emotion_mask"])
        cols.setdefault("probabilities", []).append(out["probabilities"])
        if start - len(rows) < max_faces:
            cols.setdefault("faces", []).append(batch["image"][:max_faces - rows[0]])
            cols.setdefault("face_emotion", []).append(batch["emotion"][:max_faces - rows[0]])
        feats = _features(out)
        if feats is not None:
            cols.setdefault("features", []).append(feats[picked[rows]])
            cols.setdefault("feature_index", []).append(rows[picked[rows]])
        if "aus" in out:
            cols.setdefault("aus", []).append(out["aus"])
    return {k: np.concatenate(v) for k, v in cols.items()}


def run_one(method_name: str, fold: Fold, data: PreparedData, run_dir: str,
            preset: str = "small", overrides: Optional[Mapping[str, Any]] = None,
            epochs: Optional[int] = None, minutes: Optional[float] = None, seed: int = 0,
            figures_on: bool = True, provenance: Optional[Mapping[str, str]] = None,
            redo_figures: bool = False, results_dir: Optional[str] = None,
            run_name: Optional[str] = None,
            pretrain: Optional[pretraining.Pretrain] = None) -> Dict[str, Any]:
    """Fit, evaluate and plot one method on one fold; returns its result row.

    ``run_name``: a variant's name (default the method's): the committed
    folder is ``results_dir/<run_name>/<fold>`` and the row's ``run``.

    ``epochs``: the epoch count (default: the preset's, or calibrated from
    ``minutes`` when given). ``results_dir``: the committed results folder;
    the finished fold's copy goes to ``results_dir/<run_name>/<fold>``
    (:func:`benchmarks.resume.publish`).

    A ``result.json`` in ``run_dir`` or in the committed folder made with the
    same settings and method code (:func:`benchmarks.resume.fingerprint`) is
    reused (``redo_figures``: the model is rebuilt from ``run_dir``'s weights
    and the figures redrawn); one with other fingerprints is rerun, and a
    stopped run of the same fingerprints resumes from ``run_dir/checkpoints``.

    ``pretrain``: fine-tune from a pre-training (benchmarks/pretrain.py), itself
    a run of this function, made (or reused) only when the fold must run.
    """
    overrides = dict(overrides or {})
    run_name = run_name or method_name
    fp = resume.fingerprint(method_name, resume.run_settings(
        method_name, fold, data, preset, overrides, epochs, minutes, seed,
        pretrain=None if pretrain is None else pretrain.settings()))
    result_path = os.path.join(run_dir, "result.json")
    committed = os.path.join(results_dir, run_name, fold.name) if results_dir else None
    found_row, found, why = resume.reusable(
        [result_path] + ([os.path.join(committed, "result.json")] if committed else []), fp)
    if found_row is not None:
        log.info("%s/%s: finished earlier with the same settings and method code, reusing %s",
                 run_name, fold.name, found)
        return dict(_reuse(found_row, found == result_path, fold, data, run_dir, committed,
                           redo_figures), run=run_name)
    if why:
        log.info("%s/%s: rerunning, %s: %s", run_name, fold.name, found, why)
    initial, pre = None, {}
    if pretrain is not None:
        log.info("%s/%s: pre-training on %s first (or reusing it)", run_name, fold.name,
                 "+".join(pretrain.datasets))
        pre_row = run_one(method_name, pretrain.fold, data, pretrain.run_dir, preset, overrides,
                          pretrain.epochs, pretrain.minutes, seed, figures_on=False,
                          provenance=provenance, run_name=f"{run_name}.pretrain")
        initial = os.path.join(pretrain.run_dir, "final.weights.h5")
        pre = {"pretrain": pretraining.summary(pre_row, pretrain.datasets)}
    resume.start_run(run_dir, fp)
    row = dict(train_fold(method_name, fold, data, run_dir, preset, overrides, epochs, minutes,
                          seed, figures_on, initial_weights=initial),
               run=run_name, **dict(provenance or {}), **pre,
               **{k: fp[k] for k in ("settings_fingerprint", "code_fingerprint", "code_digest",
                                     "settings", "code_files")})
    with open(result_path, "w") as f:
        json.dump(row, f, indent=2, default=float)
    if committed:
        resume.publish(row, run_dir, committed, data.datasets)
    log.info("%s/%s: accuracy %.4f (balanced %.4f), %.0f s", run_name, fold.name,
             row["accuracy"], row["balanced_accuracy"], row["train_seconds"])
    return row


def train_fold(method_name: str, fold: Fold, data: PreparedData, run_dir: str, preset: str,
               overrides: Mapping[str, Any], epochs: Optional[int], minutes: Optional[float],
               seed: int, figures_on: bool,
               initial_weights: Optional[str] = None) -> Dict[str, Any]:
    """The work of :func:`run_one`: fit (resuming from ``run_dir/checkpoints``;
    from ``initial_weights`` when given), save the weights, config and
    ``predictions.npz``, evaluate, draw the figures; returns the row's numbers."""
    method = get_method(method_name)
    cfg = method.config(preset, **overrides)
    cfg["datasets"] = list(data.datasets)
    train_examples, test_examples = fold.train(data), fold.test(data)
    val_examples = fold.validation(data)
    plan_path = os.path.join(run_dir, "plan.json")
    if os.path.exists(plan_path):
        with open(plan_path) as f:
            plan = json.load(f)
    else:
        plan = {"epochs": int(epochs or cfg.get("epochs", 10)), "calibrated_images_per_s": None}
        if minutes and not epochs:
            cal = calibrate_epochs(method_name, cfg, train_examples, fold.sizes["train"],
                                   minutes, seed)
            plan = {"epochs": cal["epochs"], "calibrated_images_per_s": cal["images_per_second"]}
        plan["minutes"] = minutes
        with open(plan_path, "w") as f:
            json.dump(plan, f)
    log.info("%s/%s (%s): %d epochs%s — %s", method_name, fold.name, preset, plan["epochs"],
             f" to fit {minutes:g} min" if minutes else "", fold.describe())

    clock = _Clock(os.path.join(run_dir, "clock.json"))
    callbacks: List[keras.callbacks.Callback] = [clock]
    budget = None
    if minutes:
        budget = training.TimeBudget(max(minutes * 60.0 * 1.25 - clock.before, 1.0),
                                     int(cfg.get("batch_size", 32)))
        callbacks.append(budget)
    fitted = training.fit(method, cfg, train_examples, val_examples, plan=training.Plan(
        epochs=plan["epochs"], seed=seed, backup_dir=os.path.join(run_dir, "checkpoints"),
        callbacks=callbacks, verbose=2, initial_weights=initial_weights,
        select_best=None if val_examples is None else os.path.join(run_dir, "selection")))
    model = fitted.model
    train_s = clock.save() if fitted.history.history else clock.before
    model.save_weights(os.path.join(run_dir, "final.weights.h5"))
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, default=str)

    metrics = training.evaluate(method, model, cfg, test_examples)
    arrays = collect_predictions(method, model, cfg, test_examples)
    np.savez_compressed(os.path.join(run_dir, "predictions.npz"), **arrays)
    row: Dict[str, Any] = {
        "method": method_name, "preset": preset, "protocol": fold.protocol, "fold": fold.name,
        "overrides": dict(overrides), "image_size": int(cfg["image_size"]),
        "params": int(model.count_params()), "epochs": plan["epochs"],
        "stopped_by_budget": bool(budget is not None and model.stop_training),
        "train_seconds": round(float(train_s), 1),
        "train_images": fold.sizes["train"], "test_images": fold.sizes["test"],
        "images_per_second": (None if budget is None or np.isnan(budget.images_per_second)
                              else round(float(budget.images_per_second), 1)),
        **{k: metrics[k] for k in ("accuracy", "balanced_accuracy", "per_class_recall",
                                   "confusion_matrix", "num_examples")},
        **{k: metrics[k] for k in ROW_METRICS if metrics.get(k) is not None},
    }
    row.update(own_label_scores(arrays))
    if fold.classes:
        row["cross_classes"] = dict(fold.classes)
        row.update(shared_class_scores(arrays, fold.classes["scored"]))
    if fitted.selection is not None:
        sel = fitted.selection
        row.update(validation_group=fold.validation_group, validation_images=fold.sizes["val"],
                   selected_epoch=sel["epoch"], validation_accuracy=sel["accuracy"],
                   validation_scores=[round(sel["scores"][e], 4)
                                      for e in sorted(sel["scores"], key=int)])
        log.info("%s/%s: epoch %s of %d selected on validation group %d (accuracy %s)",
                 method_name, fold.name, sel["epoch"], len(sel["scores"]),
                 fold.validation_group, sel["accuracy"])
    for name in fold.side_tests:
        scores = training.evaluate(method, model, cfg, fold.side(data, name))
        row.setdefault("side_scores", {})[name] = {
            k: scores[k] for k in ("accuracy", "balanced_accuracy", "per_class_recall",
                                   "num_examples") + ROW_METRICS if scores.get(k) is not None}
        log.info("%s/%s: side test %s accuracy %.4f", method_name, fold.name, name,
                 scores["accuracy"])
    if figures_on:
        row["figures"] = run_figures_of(method_name, method, model, cfg, fold, data, arrays,
                                        run_dir)
    return row


def run_figures_of(method_name: str, method, model, cfg, fold: Fold, data: PreparedData,
                   arrays: Mapping[str, np.ndarray], run_dir: str) -> Dict[str, str]:
    """A run's figures: those of its test faces (``arrays``) and, for a model that
    predicts AUs, the AU-per-emotion figure of each side test (SJMT on FER2013)."""
    drawn = dict(run_figures.draw(method_name, method, model, cfg, fold.name, arrays, run_dir))
    if "aus" in arrays:
        for name in fold.side_tests:
            drawn.update(run_figures.draw_side_aus(
                method_name, fold.name, name,
                collect_predictions(method, model, cfg, fold.side(data, name)), run_dir))
    return drawn


def _reuse(row: Dict[str, Any], in_run_dir: bool, fold: Fold, data: PreparedData,
           run_dir: str, committed: Optional[str], redo_figures: bool) -> Dict[str, Any]:
    """A finished fold's row: figures redrawn when asked (needs ``run_dir``'s
    weights of that run), the committed copy refreshed from ``run_dir``."""
    if redo_figures and in_run_dir:
        row = redo_run_figures(row, fold, data, run_dir)
    elif redo_figures:
        log.warning("%s/%s: the result is the committed one; %s has no weights of it, "
                    "figures not redrawn", row["method"], fold.name, run_dir)
    if not in_run_dir:
        return resume.committed_row(row, committed)
    if committed:
        resume.publish(row, run_dir, committed, data.datasets)
    return row


def load_run_model(run_dir: str, datasets: Optional[Sequence[str]] = None):
    """``(method, model, cfg)`` of a finished run, rebuilt from its
    ``config.json`` (or ``result.json``'s preset + overrides, with ``datasets``)
    and ``final.weights.h5`` — e.g. to export or time it later."""
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
        # Only the weights matter here; a schedule needs a length to be built.
        cfg.setdefault("schedule_steps", 1)
    model = method.build(cfg)
    training.restore(model, os.path.join(run_dir, "final.weights.h5"))
    return method, model, cfg


def redo_run_figures(row: Dict[str, Any], fold: Fold, data: PreparedData,
                     run_dir: str) -> Dict[str, Any]:
    """Redraw a finished run's figures from its saved weights (the numbers stay)."""
    method, model, cfg = load_run_model(run_dir, data.datasets)
    arrays = collect_predictions(method, model, cfg, fold.test(data))
    np.savez_compressed(os.path.join(run_dir, "predictions.npz"), **arrays)
    row = dict(row, figures=run_figures_of(row["method"], method, model, cfg, fold, data,
                                           arrays, run_dir))
    with open(os.path.join(run_dir, "result.json"), "w") as f:
        json.dump(row, f, indent=2, default=float)
    return row


def input_size(method_name: str, setting: Mapping[str, Any], preset: str = "small") -> int:
    """The input size a run's setting (``preset`` / ``overrides``) gives its method."""
    return int(get_method(method_name).config(
        setting.get("preset", preset), **(setting.get("overrides") or {}))["image_size"])


def _pretrain_of(name: str, setting: Mapping[str, Any], data: PreparedData,
                 folds: Sequence[Fold], out_dir: str):
    """``(Pretrain, fine-tuning folds)`` of a run with a ``pretrain`` setting."""
    setting = pretraining.check_setting(f"methods.{name}.pretrain", setting)
    pretrain = pretraining.Pretrain(
        datasets=setting["datasets"], minutes=setting["minutes"], epochs=setting["epochs"],
        fold=pretraining.pretrain_fold(data, setting["datasets"]),
        run_dir=os.path.join(out_dir, "pretrain", name))
    tuned = [pretraining.finetune_fold(f, data, setting["datasets"]) for f in folds]
    log.info("%s: pre-training %s; fine-tuning folds: %s", name, pretrain.fold.describe(),
             "; ".join(f.describe() for f in tuned))
    return pretrain, tuned


# --------------------------------------------------------------------------- #
# the whole benchmark
# --------------------------------------------------------------------------- #
def run_benchmark(spec, out_dir: str, methods="all", protocol: str = "holdout", k: int = 10,
                  train_datasets: Sequence[str] = (), test_datasets: Sequence[str] = (),
                  train_split: str = "all", test_split: str = "all",
                  fold_datasets: Sequence[str] = (),
                  method_settings: Optional[Mapping[str, Mapping[str, Any]]] = None,
                  preset: str = "small", epochs: Optional[int] = None,
                  minutes: Optional[float] = None, seed: int = 0, folds_limit: Optional[int] = None,
                  beam_args: Optional[Sequence[str]] = None, figures_on: bool = True,
                  seed_reported: Optional[Mapping[str, str]] = None,
                  redo_figures: bool = False,
                  results_dir: Optional[str] = None) -> Dict[str, Any]:
    """Run the benchmark; returns ``{"rows", "table", "figures"}``.

    ``method_settings``: run name -> ``{"method", "preset", "overrides", "epochs",
    "minutes", "pretrain"}`` overriding the common ``preset`` / ``epochs`` / ``minutes``
    (a run name other than a method's is a variant: ``method`` names what it
    trains; ``methods`` may name it).
    ``folds_limit`` runs only the first N folds (quick looks at k-fold).
    ``train_split`` / ``test_split``: cross only, ``all`` / ``train`` / ``eval``
    (:func:`make_folds`). ``fold_datasets``: kfold / kfold_val only, the
    datasets folded (:func:`fold_only`).
    ``results_dir``: the committed results folder (e.g. ``docs/results/...``):
    every fold's ``result.json``, ``predictions.csv`` and confusion matrix go
    to ``results_dir/<method>/<fold>/`` as it finishes, the table of every
    fold committed there (this run's and earlier ones') to
    ``results_dir/results.md``; a fold found there with the same settings and
    method code is not rerun.
    """
    if protocol not in PROTOCOLS:
        raise BenchmarkError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")
    names = resolve_methods(methods, runs=list(method_settings or {}))
    spec = benchmark_spec(DataSpec.load(spec), protocol, k)
    settings = {n: dict((method_settings or {}).get(n, {})) for n in names}
    method_names = {n: method_of(n, settings[n]) for n in names}
    sizes = {n: input_size(method_names[n], settings[n], preset) for n in names}
    prepared: Dict[int, PreparedData] = {}
    folds_of: Dict[int, List[Fold]] = {}
    every_fold: Dict[int, List[Fold]] = {}    # folds_of before --folds
    for size in sorted(set(sizes.values())):
        log.info("data: %d source(s) at %d px", len(spec.sources), size)
        prepared[size] = prepare_data(spec, os.path.join(out_dir, "data"), size, beam_args)
        every_fold[size] = make_folds(prepared[size], protocol, k, train_datasets,
                                      test_datasets, train_split=train_split,
                                      test_split=test_split, fold_datasets=fold_datasets)
        folds_of[size] = every_fold[size][:int(folds_limit)] if folds_limit else every_fold[size]
    first = folds_of[min(folds_of)]
    counts = prepared[min(prepared)].counts
    log.info("%s: %d fold(s): %s", protocol, len(first), "; ".join(f.describe() for f in first))
    provenance = {"hardware": hardware(), "commit": git_commit(), "protocol": protocol}
    rows = []
    total = len(names) * len(first)
    for i, name in enumerate(names):
        setting, size = settings[name], sizes[name]
        folds, pretrain = folds_of[size], None
        if setting.get("pretrain"):
            pretrain, folds = _pretrain_of(name, setting["pretrain"], prepared[size], folds,
                                           out_dir)
        for j, fold in enumerate(folds):
            log.info("[%d/%d] %s on %s", i * len(first) + j + 1, total, name, fold.name)
            rows.append(run_one(
                method_names[name], fold, prepared[size],
                os.path.join(out_dir, "runs", name, fold.name),
                preset=setting.get("preset", preset), overrides=setting.get("overrides", {}),
                epochs=setting.get("epochs", epochs), minutes=setting.get("minutes", minutes),
                seed=seed, figures_on=figures_on, provenance=provenance,
                redo_figures=redo_figures and figures_on, results_dir=results_dir,
                run_name=name, pretrain=pretrain))
    pretrained = sorted({"+".join(settings[n]["pretrain"]["datasets"]) for n in names
                         if settings[n].get("pretrain")})

    def notes(folds: Sequence[Fold]) -> List[str]:
        return [f"Protocol: {protocol} ({'; '.join(f.describe() for f in folds)}).",
                f"Data: {counts.get('total', '?')} faces after ingestion, "
                f"{counts.get('quarantined', 0)} inputs quarantined."] + [
            f"Pre-trained runs: fitted on {d}'s train split first, then each fold trains on "
            f"its train side less {d} (each fold's `train_images`)." for d in pretrained]

    table = write_table(rows, out_dir, title=f"fermtl benchmark — {protocol}",
                        seed_reported=seed_reported, notes=notes(first))
    if results_dir:
        # the committed table holds every committed fold, not only this run's
        committed = [r for folds in fold_results(results_dir).values() for r in folds.values()]
        names_done = {r["fold"] for r in committed}
        write_table(committed, results_dir, title=f"fermtl benchmark — {protocol}",
                    seed_reported=seed_reported,
                    notes=notes([f for f in every_fold[min(every_fold)] if f.name in names_done]))
    extra = {}
    if figures_on:
        extra["accuracy"] = figures.accuracy_bars(summarize(rows),
                                                  os.path.join(out_dir, "accuracy.png"))
    with open(os.path.join(out_dir, "rows.json"), "w") as f:
        json.dump(rows, f, indent=2, default=float)
    return {"rows": rows, "table": table, "figures": extra}
