"""What ``fermtl benchmark`` writes besides the runs: provenance (hardware,
commit), the results table (Markdown + CSV, mean ± std over folds) and the
validated settings file."""

from __future__ import annotations

import csv
import os
import platform
import re
import subprocess
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
import yaml

from components import contract
from models import registry

#: Methods a benchmark with ``methods="all"`` trains (the baseline is the
#: plain single-task CNN the others are compared against).
ALL_METHODS = ("baseline", "ddmtl", "fersnet", "sjmt", "multidataset", "tracenorm")


class BenchmarkError(ValueError):
    """A protocol that cannot be run on the given data (empty fold, unknown dataset ...)."""


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
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        text += f", {len(gpus)} GPU(s)"
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


def summarize(rows: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """One line per run (a method, or a named variant): accuracy mean ± std over folds,
    mean per-class recall (classes present in the test data), parameters, train
    time."""
    by_method: Dict[str, List[Mapping[str, Any]]] = {}
    for r in rows:
        by_method.setdefault(r.get("run") or r["method"], []).append(r)
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
            # Per-AU (TP + TN) / N averaged over AUs: SJMT's Eq 3 / Table 1-2 metric.
            "au_mean_accuracy": (float(np.mean([r["au_mean_accuracy"] for r in rs]))
                                 if all("au_mean_accuracy" in r for r in rs) else None),
            # % of the outer-eye-corner distance, on the test side's landmark faces
            # side tests (``--fold-datasets``): name -> mean accuracy over the folds
            "side_accuracy": {name: float(np.mean([r["side_scores"][name]["accuracy"]
                                                   for r in rs if name in r.get("side_scores", {})]))
                              for name in sorted({n for r in rs for n in r.get("side_scores", {})})},
            "landmark_nme": _mean_of(rs, "landmark_nme"),
            # the argmax over each test face's own dataset's classes (folds.own_label_scores)
            "accuracy_own_labels": _mean_of(rs, "accuracy_own_labels"),
            # fine-tuned runs: the pre-training's own score (one pre-training per run)
            "pretrain": _pretrain_of(rs),
            "hardware": rs[0].get("hardware", ""), "commit": rs[0].get("commit", ""),
        })
    return out


def _pretrain_of(rows: Sequence[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    """``{"test", "accuracy", "minutes"}`` of the rows' pre-training
    (benchmarks/pretrain.py); None unless every row was fine-tuned from one."""
    pre = [r.get("pretrain") for r in rows]
    if not pre or any(p is None for p in pre):
        return None
    return {"test": pre[0]["test"], "accuracy": float(np.mean([p["accuracy"] for p in pre])),
            "minutes": float(pre[0].get("train_seconds", 0.0)) / 60.0}


def _mean_of(rows: Sequence[Mapping[str, Any]], key: str) -> Optional[float]:
    """Mean of ``key`` over the rows; None unless every row has it."""
    if not rows or any(r.get(key) is None for r in rows):
        return None
    return float(np.mean([r[key] for r in rows]))


def _fmt(v, fmt: str) -> str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else fmt.format(v)


def _cell(v, fmt: str = "{:.4f}") -> str:
    """A CSV cell: empty where there is no value."""
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else fmt.format(v)


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
    sides = sorted({n for s in summary for n in s["side_accuracy"]})
    own = ["own-label acc."] if any(s["accuracy_own_labels"] is not None for s in summary) else []
    pre = sorted({s["pretrain"]["test"] for s in summary if s["pretrain"]})
    header = (["method", "preset", "input", "params", "folds", "epochs", "accuracy",
               "balanced acc."] + own + [f"recall {e}" for e in classes]
              + ["AU acc.", "AU F1", "landmark NME"] + [f"{n} acc." for n in sides]
              + [f"pre-trained, {n} acc." for n in pre] + ["pre-train min" for _ in pre[:1]]
              + ["train min", "seed reports"])
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summary:
        acc = (f"{s['accuracy_mean']:.1%} ± {s['accuracy_std']:.1%}" if s["folds"] > 1
               else f"{s['accuracy_mean']:.1%}")
        cells = [s["method"], s["preset"], f"{s['image_size']}²", f"{s['params']:,}",
                 str(s["folds"]), str(s["epochs"]), acc, f"{s['balanced_mean']:.1%}"]
        cells += [_fmt(s["accuracy_own_labels"], "{:.1%}") for _ in own]
        cells += [_fmt(s["per_class_recall"].get(e), "{:.0%}") for e in classes]
        cells += [_fmt(s["au_mean_accuracy"], "{:.1%}"), _fmt(s["au_mean_f1"], "{:.2f}"),
                  _fmt(s["landmark_nme"], "{:.2f} %")]
        cells += [_fmt(s["side_accuracy"].get(n), "{:.1%}") for n in sides]
        cells += [_fmt(s["pretrain"]["accuracy"] if s["pretrain"] and s["pretrain"]["test"] == n
                       else None, "{:.1%}") for n in pre]
        cells += [_fmt(s["pretrain"] and s["pretrain"]["minutes"], "{:.1f}") for _ in pre[:1]]
        cells += [f"{s['train_minutes']:.1f}",
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
                   + ["accuracy_own_labels" for _ in own]
                   + [f"recall_{e}" for e in classes]
                   + ["au_mean_accuracy", "au_mean_f1", "landmark_nme"]
                   + [f"accuracy_{n}" for n in sides]
                   + [f"pretrained_accuracy_{n}" for n in pre]
                   + ["pretrain_minutes" for _ in pre[:1]]
                   + ["train_minutes", "hardware", "commit", "seed_reported"])
        for s in summary:
            w.writerow([s["method"], s["preset"], s["image_size"], s["params"], s["folds"],
                        s["epochs"], f"{s['accuracy_mean']:.4f}", f"{s['accuracy_std']:.4f}",
                        f"{s['balanced_mean']:.4f}"]
                       + [_cell(s["accuracy_own_labels"]) for _ in own]
                       + [_cell(s["per_class_recall"].get(e)) for e in classes]
                       + [_cell(s[k]) for k in ("au_mean_accuracy", "au_mean_f1",
                                                "landmark_nme")]
                       + [_cell(s["side_accuracy"].get(n)) for n in sides]
                       + [_cell(s["pretrain"]["accuracy"] if s["pretrain"]
                                and s["pretrain"]["test"] == n else None) for n in pre]
                       + [_cell(s["pretrain"] and s["pretrain"]["minutes"], "{:.2f}")
                          for _ in pre[:1]]
                       + [f"{s['train_minutes']:.2f}", s["hardware"], s["commit"],
                          seed_reported.get(s["method"], "")])
    return {"markdown": md, "csv": path_csv}


def resolve_methods(methods, runs: Sequence[str] = ()) -> List[str]:
    """``"all"`` / ``"a,b"`` / a list -> run names (checked): method names, or
    the names of ``runs`` (a settings file's entries, which may be variants)."""
    if isinstance(methods, str):
        methods = list(ALL_METHODS) if methods == "all" else [
            m.strip() for m in methods.split(",") if m.strip()]
    known = set(registry.method_names()) | set(runs)
    unknown = [m for m in methods if m not in known]
    if unknown or not methods:
        raise BenchmarkError(f"unknown methods {unknown}; choose from {sorted(known)} or 'all'")
    return list(methods)


def method_of(run: str, setting: Optional[Mapping[str, Any]] = None) -> str:
    """The method a run trains: its setting's ``method``, else its own name."""
    return str((setting or {}).get("method") or run)


SETTING_KEYS = ("method", "preset", "overrides", "epochs", "minutes", "pretrain")
#: A variant's name: it names the results folder, so no separators.
RUN_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


def load_settings(path: str) -> Dict[str, Any]:
    """Benchmark settings YAML -> ``{"methods": {...}, "seed_reported": {...},
    "results": folder or None}``.

    A ``methods`` entry is a method name, or any run name with ``method:``
    naming the method it trains (an ablation: ``ddmtl-no_reweighting:
    {method: ddmtl, overrides: {weights_from: none}}``); its rows, results
    folder and table line carry the run name.

    ``results``: the committed results folder of the finished folds
    (``benchmarks/resume.py``); a relative path resolves against the YAML's
    folder, as a data spec's paths do. Validates the keys so a typo fails
    before an hour of training, not after.
    """
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise BenchmarkError(f"{path}: expected a mapping with 'methods' / 'seed_reported'")
    unknown = sorted(set(raw) - {"methods", "seed_reported", "results"})
    if unknown:
        raise BenchmarkError(f"{path}: unknown keys {unknown} "
                             "(known: methods, seed_reported, results)")
    results = raw.get("results")
    if results is not None and (not isinstance(results, str) or not results.strip()):
        raise BenchmarkError(f"{path}: results: a folder path, got {results!r}")
    methods = raw.get("methods") or {}
    known = set(registry.method_names())
    for name, setting in methods.items():
        method = method_of(name, setting)
        if method not in known:
            raise BenchmarkError(f"{path}: methods.{name}: unknown method {method!r} (a variant "
                                 f"names its method with 'method:'); known: {sorted(known)}")
        if not RUN_NAME.match(str(name)):
            raise BenchmarkError(f"{path}: methods.{name}: a run name may hold letters, "
                                 "digits and _ . + - only (it names the results folder)")
        bad = sorted(set(setting or {}) - set(SETTING_KEYS))
        if bad:
            raise BenchmarkError(f"{path}: methods.{name}: unknown keys {bad} "
                                 f"(known: {', '.join(SETTING_KEYS)})")
        if "preset" in (setting or {}):
            registry.get_method(method).config(setting["preset"],
                                               **(setting.get("overrides") or {}))
        if (setting or {}).get("pretrain") is not None:
            from benchmarks.pretrain import check_setting    # it imports this module

            check_setting(f"{path}: methods.{name}.pretrain", setting["pretrain"])
    return {"methods": {k: dict(v or {}) for k, v in methods.items()},
            "seed_reported": dict(raw.get("seed_reported") or {}),
            "results": (os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)),
                                                      results)) if results else None)}
