"""``fermtl report RUN``: a Markdown report of a pipeline run's latest
evaluation — TFMA per-slice tables, blessing, pushed model — with PNG plots
(per-class accuracy bars, confusion matrix)."""

from __future__ import annotations

import glob
import json
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow_model_analysis as tfma

from components import contract
from pipeline import artifacts, figures


def _latest(path_glob: str) -> Optional[str]:
    """The artifact dir with the highest execution id matching ``path_glob``."""
    paths = [p for p in glob.glob(path_glob) if os.path.basename(p).isdigit()]
    return max(paths, key=lambda p: int(os.path.basename(p))) if paths else None


def find_run_artifacts(root: str) -> Dict[str, Optional[str]]:
    """Latest Evaluator / blessing / Pusher / Trainer / ingestion outputs under a pipeline root."""
    return {
        "evaluation": _latest(os.path.join(root, "Evaluator", "evaluation", "*")),
        "blessing": _latest(os.path.join(root, "Evaluator", "blessing", "*")),
        "model_run": _latest(os.path.join(root, "Trainer", "model_run", "*")),
        "quarantine": _latest(os.path.join(root, "FaceIngestion", "quarantine", "*")),
    }


def _slice_name(slice_key: Tuple) -> str:
    if not slice_key:
        return "overall"
    parts = []
    for feature, value in slice_key:
        if isinstance(value, bytes):
            value = value.decode()
        if feature == "emotion" and str(value).lstrip("-").isdigit() and int(value) >= 0:
            value = contract.EMOTIONS[int(value)]
        parts.append(f"{feature}={value}")
    return ", ".join(parts)


def _value(v):
    if isinstance(v, dict):
        for key in ("doubleValue", "double_value"):
            if key in v:
                return float(v[key])
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def metric_rows(eval_result) -> List[Dict]:
    """Flat rows ``{slice, class, metric, value}`` from a TFMA EvalResult."""
    rows = []
    for slice_key, outputs in eval_result.slicing_metrics:
        for _, sub_keys in outputs.items():
            for sub_key, metrics in sub_keys.items():
                cls = ""
                if sub_key.startswith("classId:"):  # "classId:3" (maybe " topK:1" after)
                    cls = contract.EMOTIONS[int(sub_key.split(":")[1].split()[0])]
                for name, raw in metrics.items():
                    value = _value(raw)
                    if value is not None:
                        rows.append({"slice": _slice_name(slice_key), "class": cls,
                                     "metric": name, "value": value})
    return rows


def confusion_matrix(eval_result) -> Optional[np.ndarray]:
    """Overall confusion matrix (rows = true, columns = predicted) from the plots."""
    for slice_key, outputs in eval_result.plots or []:
        if slice_key:
            continue
        for _, sub_keys in outputs.items():
            for _, plots in sub_keys.items():
                cm = plots.get("multiClassConfusionMatrixAtThresholds")
                if not cm:
                    continue
                mat = np.zeros((contract.NUM_EMOTIONS, contract.NUM_EMOTIONS))
                for entry in cm["matrices"][0].get("entries", []):
                    t, p = int(entry.get("actualClassId", 0)), int(entry.get("predictedClassId", 0))
                    if 0 <= t < contract.NUM_EMOTIONS and 0 <= p < contract.NUM_EMOTIONS:
                        mat[t, p] = float(entry.get("numWeightedExamples", 0))
                return mat
    return None


def plot_per_class_accuracy(rows: List[Dict], path: str) -> Optional[str]:
    plt = figures.plt
    acc = {r["slice"].split("=", 1)[1]: r["value"] for r in rows
           if r["slice"].startswith("emotion=") and r["metric"] == "sparse_categorical_accuracy"}
    if not acc:
        return None
    names = [e for e in contract.EMOTIONS if e in acc]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(names, [acc[n] for n in names], color="#4c72b0")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (= recall)")
    ax.set_title("Per-class accuracy on the eval split")
    for i, n in enumerate(names):
        ax.text(i, acc[n] + 0.02, f"{acc[n]:.2f}", ha="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _table(rows: List[Dict], metrics: Tuple[str, ...]) -> List[str]:
    slices: Dict[str, Dict[str, float]] = {}
    for r in rows:
        if not r["class"] and r["metric"] in metrics:
            slices.setdefault(r["slice"], {})[r["metric"]] = r["value"]
    lines = ["| slice | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name in sorted(slices, key=lambda s: (s != "overall", s)):
        vals = [slices[name].get(m) for m in metrics]
        lines.append(f"| {name} | " + " | ".join(
            "" if v is None else (f"{int(v)}" if m == "example_count" else f"{v:.3f}")
            for m, v in zip(metrics, vals)) + " |")
    return lines


def _class_table(rows: List[Dict]) -> List[str]:
    per: Dict[str, Dict[str, float]] = {}
    for r in rows:
        if r["slice"] == "overall" and r["class"]:
            per.setdefault(r["class"], {})[r["metric"]] = r["value"]
    if not per:
        return []
    metrics = [m for m in ("precision_argmax", "recall_argmax", "auc")
               if any(m in v for v in per.values())]
    lines = ["| class | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for cls in contract.EMOTIONS:
        if cls in per:
            lines.append(f"| {cls} | " + " | ".join(
                f"{per[cls].get(m, float('nan')):.3f}" if m != "support"
                else f"{int(per[cls].get(m, 0))}" for m in metrics) + " |")
    return lines


def write_report(root: str, out_dir: Optional[str] = None) -> str:
    """Write ``report.md`` + PNGs for the run under pipeline root ``root``; returns the path."""
    found = find_run_artifacts(root)
    if not found["evaluation"]:
        raise FileNotFoundError(f"no Evaluator output under {root}: has the pipeline run?")
    blessed = bool(found["blessing"] and os.path.exists(
        os.path.join(found["blessing"], "BLESSED")))
    facts = [f"evaluation: `{found['evaluation']}`",
             f"blessing: **{'BLESSED' if blessed else 'NOT BLESSED'}**"]
    push = latest_push(os.path.join(root, "metadata.sqlite"))
    facts.append(f"pushed model: `{push['destination']}`" if push["pushed"]
                 else "pushed model: none (not blessed)")
    hist: Dict = {}
    if found["model_run"] and os.path.exists(os.path.join(found["model_run"], "history.json")):
        with open(os.path.join(found["model_run"], "history.json")) as f:
            hist = json.load(f)
        cfg = hist.get("config", {})
        facts.append(f"method: `{cfg.get('method')}` preset `{cfg.get('preset')}`, "
                     f"{hist.get('epochs')} epochs x {hist.get('steps_per_epoch')} steps"
                     f" on {hist.get('num_train')} training faces")
        if hist.get("fit_eval_split"):
            facts.append("**the eval split was fitted too** (`train.fit_eval_split`): the "
                         "figures below are on faces the model trained on, a sanity gate, "
                         "not an estimate")
    if found["quarantine"]:
        qpath = os.path.join(found["quarantine"], "quarantine.json")
        if os.path.exists(qpath):
            with open(qpath) as f:
                q = json.load(f)
            facts.append(f"quarantined inputs: {q.get('count', 0)} {q.get('by_reason', {})}")
    out_dir = out_dir or os.path.join(root, "report")
    path = write_eval_report(found["evaluation"], out_dir, f"fer-mtl run report: `{root}`",
                             facts)
    if figures.training_curves_plot(hist.get("history") or {},
                                    os.path.join(out_dir, "training_curves.png"),
                                    title="Trainer: loss and validation accuracy per epoch"):
        with open(path, "a") as f:
            f.write("\n## Training\n\n![training curves](training_curves.png)\n")
    return path


def write_eval_report(evaluation_dir: str, out_dir: str, title: str,
                      facts: List[str]) -> str:
    """``out_dir/report.md`` (+ ``metrics.json`` and PNG plots) of the TFMA
    result in ``evaluation_dir``: ``facts`` as a list under ``title``, then
    the per-slice and per-class tables and the plots. Returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    result = tfma.load_eval_result(evaluation_dir)
    rows = metric_rows(result)
    mat = confusion_matrix(result)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(rows, f, indent=1)
    lines = [f"# {title}", ""] + [f"- {fact}" for fact in facts]
    lines += ["", "## Metrics per slice", ""]
    lines += _table(rows, ("example_count", "sparse_categorical_accuracy"))
    cls_lines = _class_table(rows)
    if cls_lines:
        lines += ["", "## Per-class metrics (overall)", "",
                  "TFMA per class: `*_argmax` counts the class as predicted when it is "
                  "the argmax (top-1); `auc`: one-vs-rest ROC AUC.", ""] + cls_lines
    bar = plot_per_class_accuracy(rows, os.path.join(out_dir, "per_class_accuracy.png"))
    if bar:
        lines += ["", "![per-class accuracy](per_class_accuracy.png)"]
    if mat is not None and mat.sum() > 0:
        figures.confusion_matrix_figure(mat, os.path.join(out_dir, "confusion_matrix.png"),
                                        title="Confusion matrix (eval split)")
        lines += ["", "![confusion matrix](confusion_matrix.png)"]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def latest_push(metadata_path: str) -> Dict[str, object]:
    """``{"pushed": bool, "destination": str|None}`` of the newest PushedModel in MLMD."""
    if not os.path.exists(metadata_path):
        return {"pushed": False, "destination": None}
    pushed_models = artifacts.store(metadata_path).get_artifacts_by_type("PushedModel")
    if not pushed_models:
        return {"pushed": False, "destination": None}
    newest = max(pushed_models, key=lambda a: a.id)
    props = newest.custom_properties
    pushed = bool(props["pushed"].int_value) if "pushed" in props else False
    dest = props["pushed_destination"].string_value if "pushed_destination" in props else None
    return {"pushed": pushed, "destination": dest or None}
