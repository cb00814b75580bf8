"""FERSNet's Table V check on real folds (FERSNet Sec. IV-C, after StarGAN and ExprGAN):
how real do its synthesised test faces look to a recogniser that never saw a fake?

Per fold of a subject-independent k-fold:

1. FERSNet is trained on the fold's training faces (its benchmark settings);
2. a recogniser, the baseline CNN, is trained independently on the same real
   training faces ("the expression recognition network is independently trained
   on the original training set, containing real facial images only");
3. every test face is synthesised into every other expression of its dataset's
   label set, ``G(x, t)`` (:func:`synthesis_jobs`);
4. the recogniser classifies the fakes: the fold's score is the share whose
   argmax is the target (:func:`synthesis_accuracy`). The paper reports 97.04 % on
   CK+ (10-fold identity-independent, averaged over the folds).

Beside it: the recogniser's accuracy on the real test faces (how good the judge
is), the share of fakes it still reads as the source's own expression (G left the
face unchanged), and chance (1 / label-set size).

    python -m benchmarks.fersnet_synthesis_check --data pipeline/configs/data/ckplus48.yaml \\
        --settings pipeline/configs/benchmarks/ckplus48.yaml --k 10 --folds 2 \\
        --out runs/fersnet_synthesis_check --results docs/results/fersnet_synthesis_check

Both runs are :func:`benchmarks.protocols.run_one` (resumable, reused by
fingerprint in ``--out``); each fold's ``result.json``, confusion matrix of the
fakes and synthesis grid go to ``RESULTS/<fold>/`` as it finishes, the table of
every committed fold to ``RESULTS/results.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Dict, List, Mapping

import numpy as np

from benchmarks import protocols
from benchmarks.folds import benchmark_spec, make_folds, prepare_data
from benchmarks.tables import git_commit, hardware, load_settings, method_of
from components import contract
from components.ingestion import DataSpec
from models import inputs, metrics
from models.fersnet import synthesize
from models.fersnet.fes import fes_jobs
from pipeline import figures

log = logging.getLogger("fermtl.synthesis_check")
#: FERSNet Table V, CK+ ("Ours").
PAPER_CK = 0.9704
#: Test faces shown in a fold's synthesis grid.
GRID_FACES = 6


def synthesis_jobs(emotion, emotion_mask) -> np.ndarray:
    """``[N, 2]`` ``(row, target)``: each labelled face once into every other
    expression of its label set (``emotion_mask``)."""
    mask = np.asarray(emotion_mask)
    label_set = np.flatnonzero(mask.any(0)) if len(mask) else []
    jobs = fes_jobs(np.asarray(emotion), mask, [0] * len(mask), {}, emotions=label_set)
    return np.asarray(jobs, np.int64).reshape(-1, 2)


def synthesis_accuracy(probabilities, targets, sources, emotion_mask) -> Dict[str, Any]:
    """Table V's score of the recogniser's ``probabilities`` on the fakes: the share
    whose argmax is the ``target``; ``source_kept``: the share still read as the
    source's own expression; ``per_target``: the score per target expression;
    ``confusion_matrix``: target (rows) x recognised; ``chance``: one over the
    label-set size."""
    p = np.asarray(probabilities)
    targets, sources = np.asarray(targets, np.int64), np.asarray(sources, np.int64)
    called = p.argmax(-1)
    per_target = {contract.EMOTIONS[t]: float((called[targets == t] == t).mean())
                  for t in sorted(set(targets.tolist()))}
    return {"pairs": int(len(targets)), "accuracy": float((called == targets).mean()),
            "source_kept": float((called == sources).mean()), "per_target": per_target,
            "confusion_matrix": metrics.confusion_matrix(targets, called).tolist(),
            "chance": 1.0 / max(int(np.asarray(emotion_mask).any(0).sum()), 1)}


def _test_arrays(examples) -> Dict[str, np.ndarray]:
    cols: Dict[str, List[np.ndarray]] = {}
    for batch in inputs.batches(examples, 64, cache=False):
        for k in ("image", "emotion", "emotion_mask"):
            cols.setdefault(k, []).append(np.asarray(batch[k]))
    return {k: np.concatenate(v) for k, v in cols.items()}


def check_fold(fold, data, settings: Mapping[str, Mapping[str, Any]], out_dir: str,
               results_dir: str, fersnet_run: str = "fersnet") -> Dict[str, Any]:
    """Train (or reuse) FERSNet (the settings entry ``fersnet_run``, a variant
    allowed) and the recogniser on ``fold``, score the fakes of its test faces;
    returns the fold's row (also written to ``RESULTS/<fold>/``)."""
    runs = {}
    for key, name in (("fersnet", fersnet_run), ("baseline", "baseline")):
        s = settings[name]
        runs[key] = protocols.run_one(
            method_of(name, s), fold, data, os.path.join(out_dir, "runs", name, fold.name),
            preset=s.get("preset", "small"), overrides=s.get("overrides", {}),
            epochs=s.get("epochs"), minutes=s.get("minutes"), figures_on=False, run_name=name)
    _, fersnet, _ = protocols.load_run_model(os.path.join(out_dir, "runs", fersnet_run,
                                                          fold.name))
    method, recogniser, cfg = protocols.load_run_model(
        os.path.join(out_dir, "runs", "baseline", fold.name))
    infer = method.inference_model(recogniser, cfg)
    test = _test_arrays(fold.test(data))
    jobs = synthesis_jobs(test["emotion"], test["emotion_mask"])
    fakes = synthesize(fersnet, test["image"][jobs[:, 0]], jobs[:, 1])
    p_fake = np.concatenate([np.asarray(infer(fakes[i:i + 256], training=False)["probabilities"])
                             for i in range(0, len(fakes), 256)])
    row = {"fold": fold.name, "fersnet_run": fersnet_run,
           "fersnet_overrides": dict(settings[fersnet_run].get("overrides") or {}),
           "test_faces": int(len(test["emotion"])),
           **synthesis_accuracy(p_fake, jobs[:, 1], test["emotion"][jobs[:, 0]],
                                test["emotion_mask"]),
           "recogniser_accuracy_real": runs["baseline"]["accuracy"],
           "fersnet_accuracy": runs["fersnet"]["accuracy"],
           "runs": {n: {k: r.get(k) for k in ("settings_fingerprint", "code_fingerprint",
                                              "epochs", "train_seconds")}
                    for n, r in runs.items()},
           "paper_ck": PAPER_CK, "commit": git_commit(), "hardware": hardware()}
    folder = os.path.join(results_dir, fold.name)
    os.makedirs(folder, exist_ok=True)
    figures.confusion_matrix_plot(
        jobs[:, 1], p_fake.argmax(-1), os.path.join(folder, "confusion_fakes.png"),
        title=f"Recogniser on FERSNet's fakes, {fold.name} (rows: target)")
    shown = figures.example_faces(test["image"], test["emotion"], max_faces=GRID_FACES)
    label_set = [contract.EMOTIONS[t] for t in np.flatnonzero(test["emotion_mask"].any(0))]
    figures.synthesis_grid_plot(fersnet, shown, os.path.join(folder, "synthesis_grid.png"),
                                title=f"FERSNet on unseen test faces, {fold.name}",
                                emotions=label_set)
    row["figures"] = {"confusion_fakes": "confusion_fakes.png",
                      "synthesis_grid": "synthesis_grid.png"}
    with open(os.path.join(folder, "result.json"), "w") as f:
        json.dump(row, f, indent=2)
    return row


def write_table(results_dir: str) -> str:
    """``RESULTS/results.md``: every committed fold and the mean ± std."""
    rows = []
    for name in sorted(os.listdir(results_dir)):
        path = os.path.join(results_dir, name, "result.json")
        if os.path.exists(path):
            with open(path) as f:
                rows.append(json.load(f))
    runs = sorted({r.get("fersnet_run", "fersnet") for r in rows})
    lines = ["# FERSNet Table V check: the recogniser's accuracy on synthesised test faces",
             "", f"FERSNet run: {', '.join(runs)}.", "",
             "| fold | test faces | fakes | accuracy on fakes | still the source's expression "
             "| recogniser on real faces | FERSNet recognition | chance |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['fold']} | {r['test_faces']} | {r['pairs']} | {r['accuracy']:.1%} "
                     f"| {r['source_kept']:.1%} | {r['recogniser_accuracy_real']:.1%} "
                     f"| {r['fersnet_accuracy']:.1%} | {r['chance']:.1%} |")
    if rows:
        acc = np.asarray([r["accuracy"] for r in rows])
        real = np.asarray([r["recogniser_accuracy_real"] for r in rows])
        lines.append(f"| **mean of {len(rows)}** | | | **{acc.mean():.1%} ± {acc.std():.1%}** "
                     f"| {np.mean([r['source_kept'] for r in rows]):.1%} | {real.mean():.1%} "
                     f"| {np.mean([r['fersnet_accuracy'] for r in rows]):.1%} | |")
    lines += ["", f"FERSNet reports {PAPER_CK:.2%} on CK+ (Table V, 10-fold, mean).",
              "Hardware: " + "; ".join(sorted({r["hardware"] for r in rows})) + ". Commit: "
              + ", ".join(sorted({r["commit"] for r in rows})) + "."]
    path = os.path.join(results_dir, "results.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="data spec (one dataset with subjects)")
    p.add_argument("--settings", required=True,
                   help="benchmark settings with 'fersnet' and 'baseline' (the recogniser)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--folds", type=int, help="only the first N folds")
    p.add_argument("--fersnet", default="fersnet",
                   help="the settings entry of the FERSNet run (a variant allowed, e.g. "
                        "fersnet-papers_decoder)")
    p.add_argument("--out", required=True, help="working folder (resumable)")
    p.add_argument("--results", required=True, help="committed results folder")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = load_settings(args.settings)["methods"]
    missing = sorted({args.fersnet, "baseline"} - set(settings))
    if missing:
        p.error(f"{args.settings}: no settings for {missing}")
    if method_of(args.fersnet, settings[args.fersnet]) != "fersnet":
        p.error(f"--fersnet {args.fersnet}: not a FERSNet run")
    sizes = {n: protocols.input_size(method_of(n, settings[n]), settings[n])
             for n in (args.fersnet, "baseline")}
    if len(set(sizes.values())) != 1:
        p.error(f"FERSNet and the recogniser need one input size, got {sizes}")
    size = sizes[args.fersnet]
    data = prepare_data(benchmark_spec(DataSpec.load(args.data), "kfold", args.k),
                        os.path.join(args.out, "data"), size)
    folds = make_folds(data, "kfold", args.k)[:args.folds or None]
    for fold in folds:
        row = check_fold(fold, data, settings, args.out, args.results, args.fersnet)
        log.info("%s: %.1f %% of %d fakes read as their target (recogniser on real faces "
                 "%.1f %%)", fold.name, 100 * row["accuracy"], row["pairs"],
                 100 * row["recogniser_accuracy_real"])
    print(f"table: {write_table(args.results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
