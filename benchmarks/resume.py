"""Runs that survive a stop: each finished fold carries a fingerprint of its
settings and of its method's code, and a small copy of it is written to a
committed results folder (``docs/results/...``).

``fermtl benchmark`` skips a fold whose result (in the committed folder or in
``OUT/runs``) has the same two fingerprints, and reruns it when either differs:

* ``settings_fingerprint``: method, preset, overrides, epochs / minutes, seed,
  protocol (a ``kfold`` result is never reused for ``kfold_val``: same fold
  names, other protocol and train members), fold name and membership
  (train/validation/test images, subjects, a digest of their subject ids and
  labels), the data spec (source paths relative to the
  repository, so every checkout agrees) and the input size;
* ``code_fingerprint``: the method's own source — its module, or every ``.py``
  file of its package (``models/fersnet/``) — as named in ``models.registry``,
  each digested as its syntax tree without docstrings (:func:`source_digest`):
  a docstring, comment or layout edit does not rerun a fold, a code edit does.
  Shared code (``models/training.py``, layers, docs) is not part of it.
  Results made before (sha256 of the bytes) still match while the bytes do;
  ``python -m benchmarks.resume docs/results/...`` upgrades them from git history.

The committed copy of a fold (:func:`publish`) is ``result.json``,
``predictions.csv`` (one row per test example) and ``confusion.png``; no
weights or checkpoints.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import importlib
import json
import logging
import os
import shutil
import subprocess
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from components import contract
from models import registry

log = logging.getLogger("fermtl.benchmark")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINGERPRINT_FILE = "fingerprint.json"
#: What a run leaves in its ``OUT/runs/<method>/<fold>`` folder; removed when
#: the folder holds a run of other settings or code, so it is not resumed.
RUN_STATE = ("result.json", "plan.json", "clock.json", "config.json", "final.weights.h5",
             "predictions.npz", FINGERPRINT_FILE, "checkpoints", "selection")
#: The figures copied to the committed folder.
COMMITTED_FIGURES = ("confusion",)
#: ... and side tests' AU figures (``au_per_emotion:<side>``, SJMT on FER2013 faces).
COMMITTED_FIGURE_PREFIXES = ("au_per_emotion:",)


# --------------------------------------------------------------------------- #
# fingerprints
# --------------------------------------------------------------------------- #
def method_sources(method_name: str) -> List[str]:
    """Absolute paths of the method's own source files: its registry module,
    or every ``.py`` file under its package (sorted)."""
    modules = dict(zip(registry.method_names(), registry.method_modules()))
    if method_name not in modules:
        raise ValueError(f"unknown method {method_name!r}; choose from {sorted(modules)}")
    module = importlib.import_module(modules[method_name])
    if hasattr(module, "__path__"):                          # a package: all its files
        files = [os.path.join(d, n) for root in module.__path__
                 for d, _, names in os.walk(root) for n in names if n.endswith(".py")]
    else:
        files = [module.__file__]
    return sorted(os.path.abspath(f) for f in files)


def _relative(path: str) -> str:
    return os.path.relpath(os.path.abspath(path), REPO_ROOT).replace(os.sep, "/")


#: What ``code_files`` digests: the syntax tree without docstrings, so an edit
#: of docstrings, comments or layout does not rerun a fold. A result without
#: ``code_digest`` was made with sha256 of the file bytes (:func:`upgrade`).
CODE_DIGEST = "ast-without-docstrings"


def source_digest(source: bytes) -> str:
    """sha256 of ``ast.dump`` of the module with every docstring removed."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


def code_files(method_name: str, digest=source_digest) -> Dict[str, str]:
    """``{path relative to the repository: digest of its source}`` of the
    method's sources (:func:`method_sources`)."""
    out = {}
    for path in method_sources(method_name):
        with open(path, "rb") as f:
            out[_relative(path)] = digest(f.read())
    return dict(sorted(out.items()))


def _bytes_digest(source: bytes) -> str:
    return hashlib.sha256(source).hexdigest()


def code_fingerprint(files: Mapping[str, str]) -> str:
    """sha256 over the sorted relative paths and their contents' digests."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + files[rel].encode() + b"\0")
    return h.hexdigest()


def portable_spec(spec_json: str) -> Dict[str, Any]:
    """The data spec with its absolute source / AU-table paths made relative to
    the repository (a spec resolves them against its YAML's folder, so two
    checkouts of the same files would differ otherwise)."""
    spec = json.loads(spec_json) if spec_json else {}
    for source in spec.get("sources", []):
        if isinstance(source.get("path"), str) and os.path.isabs(source["path"]):
            source["path"] = _relative(source["path"])
        table = source.get("au_table")
        if isinstance(table, dict) and os.path.isabs(str(table.get("path", ""))):
            table["path"] = _relative(table["path"])
    return spec


def run_settings(method_name: str, fold, data, preset: str,
                 overrides: Optional[Mapping[str, Any]], epochs: Optional[int],
                 minutes: Optional[float], seed: int,
                 pretrain: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Everything a fold's result depends on besides code (see the module
    docstring); ``pretrain``: a pre-training's settings (benchmarks/pretrain.py),
    a key only when there is one, so other runs keep their fingerprints."""
    settings = {
        "method": method_name, "preset": preset,
        "overrides": json.loads(json.dumps(dict(overrides or {}), sort_keys=True, default=str)),
        "epochs": None if epochs is None else int(epochs),
        "minutes": None if minutes is None else float(minutes), "seed": int(seed),
        "protocol": fold.protocol, "fold": fold.name,
        "fold_members": {k: fold.sizes[k] for k in sorted(fold.sizes)},
        "data": portable_spec(data.spec_json), "image_size": int(data.image_size),
    }
    if pretrain is not None:
        settings["pretrain"] = json.loads(json.dumps(dict(pretrain), sort_keys=True))
    return settings


def settings_fingerprint(settings: Mapping[str, Any]) -> str:
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint(method_name: str, settings: Mapping[str, Any]) -> Dict[str, Any]:
    """The fields a result carries: both fingerprints, and what they were made of
    (so a reader, and the rerun message, can tell what changed)."""
    files = code_files(method_name)
    return {"settings_fingerprint": settings_fingerprint(settings),
            "code_fingerprint": code_fingerprint(files), "code_digest": CODE_DIGEST,
            "settings": dict(settings), "code_files": files}


def _diff(old: Mapping, new: Mapping) -> List[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def difference(saved: Mapping[str, Any], fp: Mapping[str, Any]) -> Optional[str]:
    """``None`` when ``saved`` (a result or fingerprint file) has the fingerprints
    ``fp``; else which part changed, in words."""
    if "settings_fingerprint" not in saved or "code_fingerprint" not in saved:
        return "it has no fingerprint (made before fingerprints)"
    changed = []
    if saved["settings_fingerprint"] != fp["settings_fingerprint"]:
        old, new = saved.get("settings") or {}, fp["settings"]
        keys = _diff(old, new)
        changed.append("settings changed (" + (", ".join(
            f"{k}: {json.dumps(old.get(k), default=str)[:80]} -> "
            f"{json.dumps(new.get(k), default=str)[:80]}" for k in keys) or "?") + ")")
    now = fp
    if saved.get("code_digest") != CODE_DIGEST and "method" in fp.get("settings", {}):
        files = code_files(fp["settings"]["method"], _bytes_digest)   # an older result
        now = {"code_fingerprint": code_fingerprint(files), "code_files": files}
    if saved["code_fingerprint"] != now["code_fingerprint"]:
        files = _diff(saved.get("code_files") or {}, now["code_files"])
        changed.append(f"method code changed ({', '.join(files) or '?'})")
    return "; ".join(changed) or None


# --------------------------------------------------------------------------- #
# finding a finished fold, clearing a stale one
# --------------------------------------------------------------------------- #
def _read(path: str) -> Optional[Dict[str, Any]]:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def reusable(paths: Sequence[str], fp: Mapping[str, Any]
             ) -> Tuple[Optional[Dict[str, Any]], Optional[str], Optional[str]]:
    """``(row, path, None)`` for the first ``result.json`` in ``paths`` made with
    the fingerprints ``fp``; else ``(None, path, why)`` naming the first result
    found and what changed (``(None, None, None)``: none found)."""
    first = None
    for path in paths:
        row = _read(path)
        if row is None:
            continue
        why = difference(row, fp)
        if why is None:
            return row, path, None
        first = first or (path, why)
    return (None, *first) if first else (None, None, None)


def start_run(run_dir: str, fp: Mapping[str, Any]) -> None:
    """Prepare ``run_dir`` for a run with fingerprints ``fp``: a run folder left
    by other settings or code (its ``fingerprint.json`` differs, or it has run
    state but no fingerprint) is cleared, so its checkpoints are not resumed;
    then ``fingerprint.json`` is written."""
    os.makedirs(run_dir, exist_ok=True)
    saved = _read(os.path.join(run_dir, FINGERPRINT_FILE))
    present = [n for n in RUN_STATE if os.path.exists(os.path.join(run_dir, n))]
    why = difference(saved, fp) if saved is not None else (
        "it has no fingerprint" if present else None)
    if why and present:
        log.info("%s: clearing an earlier run's state (%s): %s", run_dir, why, ", ".join(present))
        for name in present:
            path = os.path.join(run_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    with open(os.path.join(run_dir, FINGERPRINT_FILE), "w") as f:
        json.dump({k: fp[k] for k in ("settings_fingerprint", "code_fingerprint", "code_digest",
                                      "settings", "code_files")}, f, indent=2, default=str)


# --------------------------------------------------------------------------- #
# the committed copy
# --------------------------------------------------------------------------- #
def write_predictions_csv(arrays: Mapping[str, np.ndarray], path: str,
                          datasets: Sequence[str] = ()) -> str:
    """One row per test example: ``index``, ``dataset``, ``emotion`` (true; empty
    when unlabelled), ``predicted`` and ``p_<emotion>`` rounded to 4 decimals."""
    probs = np.asarray(arrays["probabilities"], np.float64)
    names = (list(contract.EMOTIONS) if probs.shape[1] == len(contract.EMOTIONS)
             else [str(i) for i in range(probs.shape[1])])
    emotion = np.asarray(arrays["emotion"]).astype(int)
    dataset_id = np.asarray(arrays.get("dataset_id", np.full(len(emotion), -1))).astype(int)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "dataset", "emotion", "predicted"] + [f"p_{n}" for n in names])
        for i, (e, d, p) in enumerate(zip(emotion, dataset_id, probs)):
            w.writerow([i, datasets[d] if 0 <= d < len(datasets) else "",
                        names[e] if 0 <= e < len(names) else "", names[int(p.argmax())]]
                       + [f"{v:.4f}" for v in p])
    return path


def publish(row: Mapping[str, Any], run_dir: str, committed_dir: str,
            datasets: Sequence[str] = ()) -> Dict[str, Any]:
    """Write the committed copy of a finished fold into ``committed_dir``:
    ``result.json`` (figure paths relative to it), ``predictions.csv`` from
    ``run_dir/predictions.npz`` and the figures in :data:`COMMITTED_FIGURES`."""
    os.makedirs(committed_dir, exist_ok=True)
    arrays = np.load(os.path.join(run_dir, "predictions.npz"))
    write_predictions_csv(arrays, os.path.join(committed_dir, "predictions.csv"), datasets)
    figs = {}
    for name in [n for n in (row.get("figures") or {})
                 if n in COMMITTED_FIGURES or n.startswith(COMMITTED_FIGURE_PREFIXES)]:
        src = row["figures"][name]
        if src and os.path.exists(src):
            dst = os.path.join(committed_dir, os.path.basename(src))
            if os.path.abspath(src) != os.path.abspath(dst):
                shutil.copyfile(src, dst)
            figs[name] = os.path.basename(src)
    copy = dict(row, figures=figs)
    with open(os.path.join(committed_dir, "result.json"), "w") as f:
        json.dump(copy, f, indent=2, default=float)
    return copy


def committed_row(row: Mapping[str, Any], committed_dir: str) -> Dict[str, Any]:
    """A committed ``result.json`` row with its figure paths made absolute."""
    return dict(row, figures={k: os.path.join(committed_dir, v)
                              for k, v in (row.get("figures") or {}).items()})


# --------------------------------------------------------------------------- #
# results made with byte digests
# --------------------------------------------------------------------------- #
def _versions(rel: str) -> List[bytes]:
    """Every committed version of ``rel`` in this repository's history."""
    commits = subprocess.run(["git", "rev-list", "--all", "--", rel], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    out = []
    for c in commits:
        shown = subprocess.run(["git", "show", f"{c}:{rel}"], cwd=REPO_ROOT, capture_output=True)
        if shown.returncode == 0:
            out.append(shown.stdout)
    return out


def upgrade(folder: str) -> Dict[str, int]:
    """Rewrite the ``result.json`` files under ``folder`` made with byte
    digests to :data:`CODE_DIGEST`: each file's source is found in git history
    by its byte digest. A result whose source is not found is left as it was
    (it reruns when the code's bytes differ). Returns the counts."""
    counts = {"upgraded": 0, "current": 0, "not_found": 0}
    found: Dict[str, Optional[str]] = {}
    for root, _, names in os.walk(folder):
        if "result.json" not in names:
            continue
        path = os.path.join(root, "result.json")
        row = _read(path)
        if row.get("code_digest") == CODE_DIGEST or "code_files" not in row:
            counts["current"] += 1
            continue
        files = {}
        for rel, digest in row["code_files"].items():
            if digest not in found:
                found.update({_bytes_digest(v): source_digest(v) for v in _versions(rel)})
                found.setdefault(digest, None)
            files[rel] = found[digest]
        if None in files.values():
            counts["not_found"] += 1
            continue
        row.update(code_files=files, code_fingerprint=code_fingerprint(files),
                   code_digest=CODE_DIGEST)
        with open(path, "w") as f:
            json.dump(row, f, indent=2, default=float)
        counts["upgraded"] += 1
    return counts


if __name__ == "__main__":
    import sys

    for arg in sys.argv[1:] or ["docs/results"]:
        print(arg, upgrade(arg))
