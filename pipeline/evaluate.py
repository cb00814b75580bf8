"""``fermtl evaluate MODEL DATA``: score a pushed model on a labelled dataset
with the pipeline Evaluator's TFMA slices and metrics
(:func:`pipeline.pipeline.eval_config`: overall, per emotion, per dataset,
per domain; accuracy, per-class precision/recall/AUC, confusion matrix) and
write the same report with its plots (:func:`pipeline.report.write_eval_report`).

``DATA`` is a data spec (YAML) or a class folder (``root/[split/]<class>/*``).
A folder is ingested with the model's own alignment (face size and detector
from its ``fermtl_config.json``; ``aligned=True`` unless ``--detect``).
Every ingested example is scored, whatever split ingestion put it in. The
blessing thresholds are left out: there is no baseline model to compare with.
"""

from __future__ import annotations

import os
import types
from typing import Any, Dict, Optional, Sequence

from models.export import load_config
from pipeline.pipeline import eval_config
from pipeline.serving import find_version_dir


def evaluation_config(config=None):
    """The pipeline Evaluator's ``EvalConfig`` without its thresholds."""
    config = config or types.SimpleNamespace(
        evaluation={"min_accuracy": 0.0, "max_accuracy_drop": 1.0})
    ec = eval_config(config)
    for spec in ec.metrics_specs:
        spec.ClearField("thresholds")
        spec.ClearField("per_slice_thresholds")
        spec.ClearField("cross_slice_thresholds")
        for metric in spec.metrics:
            for field in ("threshold", "per_slice_thresholds", "cross_slice_thresholds"):
                metric.ClearField(field)
    return ec


def folder_spec(folder: str, model_cfg: Dict[str, Any], aligned: bool = True,
                dataset: Optional[str] = None) -> Dict[str, Any]:
    """A one-source data spec reading ``folder`` as the model's ingestion did."""
    ingestion = model_cfg.get("ingestion") or {}
    name = dataset or os.path.basename(os.path.normpath(folder)) or "data"
    return {"sources": [{"reader": "class_folders", "path": os.path.abspath(folder),
                         "dataset": name, "aligned": aligned}],
            "image_size": int(ingestion.get("image_size") or model_cfg["image_size"]),
            "detector": "none" if aligned else ingestion.get("detector", "haar")}


def evaluate(model_dir: str, data: str, out_dir: str, aligned: bool = True,
             beam_args: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Ingest ``data`` into ``out_dir/data``, run TFMA into
    ``out_dir/evaluation`` and write ``out_dir/report.md``. Returns
    ``{"report", "evaluation", "counts", "accuracy", "examples"}``."""
    import tensorflow_model_analysis as tfma

    from components.ingestion import DataSpec, ingest

    version, path = find_version_dir(model_dir)
    cfg = load_config(path)
    spec = DataSpec.load(folder_spec(data, cfg, aligned) if os.path.isdir(data) else data)
    data_dir = os.path.join(out_dir, "data")
    counts = ingest(spec, data_dir, beam_args=list(beam_args or []))
    if not counts["total"]:
        raise ValueError(f"no labelled faces in {data} ({counts.get('by_reason', {})})")
    ec = evaluation_config()
    shared = tfma.default_eval_shared_model(eval_saved_model_path=path, eval_config=ec)
    evaluation = os.path.join(out_dir, "evaluation")
    result = tfma.run_model_analysis(
        eval_shared_model=shared, eval_config=ec, output_path=evaluation,
        data_location=os.path.join(data_dir, "examples", "Split-*", "*"))
    from pipeline.report import metric_rows, write_eval_report

    overall = {r["metric"]: r["value"] for r in metric_rows(result)
               if r["slice"] == "overall" and not r["class"]}
    facts = [f"model: `{path}` (version {version}, method `{cfg.get('method')}` preset "
             f"`{cfg.get('preset')}`)",
             f"data: `{data}`: {counts['total']} faces scored, {counts['quarantined']} "
             f"quarantined {counts.get('by_reason', {})}",
             f"evaluation: `{evaluation}`"]
    report = write_eval_report(evaluation, out_dir, f"fer-mtl evaluation: `{data}`", facts)
    return {"report": report, "evaluation": evaluation, "counts": counts,
            "accuracy": overall.get("sparse_categorical_accuracy"),
            "examples": overall.get("example_count")}
