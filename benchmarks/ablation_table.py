"""The "does multi-task help" table: each variant's folds (an ablation from a
benchmark settings file, ``benchmarks/tables.load_settings``) paired with the
full method's folds of the same protocol, fold by fold.

    python benchmarks/ablation_table.py --full docs/results/ckplus48_kfold \\
        --variants docs/results/ckplus48_ablations [--out table.md]
    python benchmarks/ablation_table.py --by-name \\
        --full docs/results/fer2013_to_ckplus48_finetune --variants docs/results/ckplus48_kfold

Only folds both sides finished are compared; the table says how many. The two
folders may be one (a settings file with the method and its variants, e.g.
ckplus48_helen.yaml). Where both sides score landmarks (trace-norm), the paired
landmark NME is shown too (lower is better).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from typing import Dict, List

import numpy as np


def fold_results(folder: str) -> Dict[str, Dict[str, dict]]:
    """``{run name: {fold: result row}}`` of a committed results folder."""
    out: Dict[str, Dict[str, dict]] = {}
    for path in sorted(glob.glob(os.path.join(folder, "*", "*", "result.json"))):
        run, fold = path.split(os.sep)[-3:-1]
        with open(path) as f:
            out.setdefault(run, {})[fold] = json.load(f)
    return out


def _switch(full_row: dict, variant_row: dict) -> Dict[str, object]:
    """The settings the variant changes: its overrides that differ from the full
    method's, and ``pretrain`` when only one side was pre-trained."""
    base = full_row.get("settings", {}).get("overrides", {})
    switch = {k: v for k, v in variant_row.get("settings", {}).get("overrides", {}).items()
              if base.get(k, object()) != v}
    pre = [r.get("settings", {}).get("pretrain") for r in (full_row, variant_row)]
    if bool(pre[0]) != bool(pre[1]):
        switch["pretrain"] = "+".join((pre[1] or {}).get("datasets", [])) or "none"
    return switch


def paired_rows(full_folder: str, variants_folder: str, by_name: bool = False) -> List[dict]:
    """One row per variant: the full method's and the variant's mean accuracy
    over their common folds, and the paired difference (full − variant).
    ``by_name``: a variant is the run of the same name in the other folder (e.g.
    fine-tuned from FER2013 against from scratch, the same folds)."""
    full, variants = fold_results(full_folder), fold_results(variants_folder)
    rows = []
    for run, folds in sorted(variants.items()):
        method = run if by_name else next(iter(folds.values()))["method"]
        common = sorted(set(folds) & set(full.get(method, {})))
        if not common or (run == method and not by_name):
            continue
        a = np.array([full[method][f]["accuracy"] for f in common])
        b = np.array([folds[f]["accuracy"] for f in common])
        overrides = _switch(full[method][common[0]], folds[common[0]])    # the switch itself
        if by_name:
            run = f"{run} ({os.path.basename(os.path.normpath(variants_folder))})"
        rows.append({"method": method, "variant": run, "overrides": overrides,
                     "folds": len(common), "full": float(a.mean()), "full_std": float(a.std()),
                     "without": float(b.mean()), "without_std": float(b.std()),
                     "delta": float((a - b).mean()), "delta_std": float((a - b).std()),
                     "full_better_folds": int((a > b).sum())})
        nme = [np.array([side[f].get("landmark_nme") for f in common], dtype=float)
               for side in (full[method], folds)]
        if not np.isnan(np.concatenate(nme)).any():
            rows[-1].update(nme_full=float(nme[0].mean()), nme_without=float(nme[1].mean()),
                            nme_delta=float((nme[1] - nme[0]).mean()),
                            nme_delta_std=float((nme[1] - nme[0]).std()))
    return rows


def _nme(row: dict) -> str:
    if "nme_full" not in row:
        return "—"
    return (f"{row['nme_full']:.2f} / {row['nme_without']:.2f} % "
            f"({row['nme_delta']:+.2f} ± {row['nme_delta_std']:.2f})")


def markdown(rows: List[dict]) -> str:
    lines = ["| method | without (switch) | folds | full | without | full − without (paired) "
             "| folds where full wins | landmark NME full / without (without − full) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        switch = ", ".join(f"{k}: {v}" for k, v in sorted(r["overrides"].items()))
        lines.append(
            f"| {r['method']} | {r['variant']} (`{switch}`) | {r['folds']} "
            f"| {r['full']:.1%} ± {r['full_std']:.1%} | {r['without']:.1%} ± {r['without_std']:.1%} "
            f"| {100 * r['delta']:+.1f} ± {100 * r['delta_std']:.1f} points "
            f"| {r['full_better_folds']}/{r['folds']} | {_nme(r)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", required=True, help="committed results folder of the full methods")
    p.add_argument("--variants", required=True, help="committed results folder of the variants")
    p.add_argument("--by-name", action="store_true",
                   help="pair each run with the run of the same name in the other folder "
                        "(e.g. --full docs/results/fer2013_to_ckplus48_finetune --variants "
                        "docs/results/ckplus48_kfold: pre-trained against from scratch)")
    p.add_argument("--out", help="also write the table to this Markdown file")
    args = p.parse_args(argv)
    text = markdown(paired_rows(args.full, args.variants, by_name=args.by_name))
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
