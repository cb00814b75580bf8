"""The fer-mtl TFX pipeline definition, shared by the local and Kubeflow runners.

FaceIngestion (Beam) -> StatisticsGen -> ImportSchemaGen (curated contract
schema) -> ExampleValidator -> AnomalyGate -> Transform -> Trainer (any method)
-> Evaluator (TFMA slices, blessing against the last blessed model) -> Pusher.
With ``train.base_model`` an Importer feeds the Trainer's ``base_model`` (a warm
start from an earlier run's blessed model).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List, Optional

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx

from components import contract
from components.anomaly_gate import AnomalyGate
from components.ingestion import FaceIngestion
from components.ingestion.spec import DataSpec
from models.registry import get_method
from pipeline import schema as contract_schema
from pipeline.config import RunConfig, base_model_uri

TRANSFORM_FN = "models.transform_module.preprocessing_fn"
TRAINER_FN = "models.trainer_module.run_fn"
# The slices the issue asks for: overall, per true emotion, per dataset, per domain.
SLICES = ([], ["emotion"], ["dataset"], ["domain"])


def method_config(config: RunConfig, data_spec: DataSpec) -> Dict[str, Any]:
    """The resolved method config (preset + overrides) and how the data was
    ingested; the Trainer adds the run's datasets from Transform's vocabulary."""
    m = config.method
    cfg = get_method(m["name"]).config(m.get("preset", "small"), **(m.get("overrides") or {}))
    # Written next to the exported model: `fermtl predict` aligns faces the same way.
    cfg["ingestion"] = {"image_size": data_spec.image_size, "detector": data_spec.detector}
    return cfg


def train_config(config: RunConfig, cfg: Dict[str, Any], spec: DataSpec) -> Dict[str, Any]:
    """The Trainer's ``train`` custom config: the run's ``train`` section, the
    batch size defaulting to the method's, and with ``resume`` a backup
    directory named after everything that decides the fit (data spec, method
    config, train settings), so that a rerun of an interrupted Trainer continues
    and a changed run starts afresh."""
    train = {k: config.train[k] for k in ("epochs", "batch_size", "seed", "deterministic",
                                          "fit_eval_split")}
    train["batch_size"] = int(train["batch_size"] or cfg.get("batch_size", 32))
    if config.train.get("resume"):
        parts = [spec.to_json(), cfg, train, config.train.get("train_steps")]
        if config.train.get("base_model"):        # another base model: start afresh
            parts.append(config.train["base_model"])
        key = json.dumps(parts, sort_keys=True, default=str)
        train["backup_dir"] = os.path.join(config.pipeline_root, "TrainerBackup",
                                           hashlib.sha256(key.encode()).hexdigest()[:16])
    return train


def eval_config(config: RunConfig) -> tfma.EvalConfig:
    """TFMA config: overall accuracy with value + change thresholds (the blessing),
    per-class argmax precision / recall and AUC, confusion matrix, on every slice."""
    ev = config.evaluation
    accuracy_threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": ev["min_accuracy"]}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER,
            absolute={"value": -float(ev["max_accuracy_drop"])}))
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name="serving_examples", label_key="emotion",
                                    prediction_key="probabilities")],
        slicing_specs=[tfma.SlicingSpec(feature_keys=keys) for keys in SLICES],
        metrics_specs=[
            tfma.MetricsSpec(metrics=[
                tfma.MetricConfig(class_name="ExampleCount"),
                # The blessing looks at the overall slice only; per-slice values are
                # reported, not gated (a rare class may legitimately be weak).
                tfma.MetricConfig(class_name="SparseCategoricalAccuracy",
                                  per_slice_thresholds=[tfma.PerSliceMetricThreshold(
                                      slicing_specs=[tfma.SlicingSpec()],
                                      threshold=accuracy_threshold)]),
                tfma.MetricConfig(class_name="MultiClassConfusionMatrixPlot"),
            ]),
            tfma.MetricsSpec(
                binarize=tfma.BinarizationOptions(class_ids={"values": list(range(
                    contract.NUM_EMOTIONS))}),
                # Per class, the class counts as predicted when it is the argmax (top 1).
                metrics=[tfma.MetricConfig(class_name="Precision",
                                           config='{"top_k": 1, "name": "precision_argmax"}'),
                         tfma.MetricConfig(class_name="Recall",
                                           config='{"top_k": 1, "name": "recall_argmax"}'),
                         tfma.MetricConfig(class_name="AUC")]),
        ])


def data_components(spec: DataSpec, image_size: int,
                    schema_path: Optional[str] = None) -> List:
    """FaceIngestion -> StatisticsGen, ImportSchemaGen -> ExampleValidator ->
    AnomalyGate -> Transform (resizing to ``image_size``): the data half of
    every run, also what ``fermtl benchmark`` prepares its folds with."""
    ingestion = FaceIngestion(data_spec=spec.to_json())
    statistics = tfx.components.StatisticsGen(examples=ingestion.outputs["examples"])
    schema = tfx.components.ImportSchemaGen(
        schema_file=schema_path or contract_schema.SCHEMA_PATH)
    validator = tfx.components.ExampleValidator(
        statistics=statistics.outputs["statistics"], schema=schema.outputs["schema"])
    gate = AnomalyGate(anomalies=validator.outputs["anomalies"])
    transform = tfx.components.Transform(
        examples=ingestion.outputs["examples"], schema=schema.outputs["schema"],
        preprocessing_fn=TRANSFORM_FN, custom_config={"image_size": int(image_size)})
    transform.add_upstream_node(gate)
    return [ingestion, statistics, schema, validator, gate, transform]


def data_pipeline(name: str, root: str, spec: DataSpec, image_size: int,
                  beam_args: List[str]) -> tfx.dsl.Pipeline:
    """Only :func:`data_components`, cached in ``root/metadata.sqlite``: a
    second call with the same spec runs nothing, one with another
    ``image_size`` runs Transform alone."""
    return tfx.dsl.Pipeline(
        pipeline_name=name, pipeline_root=root, components=data_components(spec, image_size),
        enable_cache=True,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            os.path.join(root, "metadata.sqlite")),
        beam_pipeline_args=list(beam_args))


def create_pipeline(config: RunConfig, enable_cache: bool = True,
                    schema_path: Optional[str] = None,
                    local_metadata: bool = True) -> tfx.dsl.Pipeline:
    """All components of a run, wired. ``local_metadata=False`` leaves MLMD to
    the orchestrator (Kubeflow)."""
    spec = DataSpec.from_dict(config.data, config.data_base_dir)
    cfg = method_config(config, spec)
    data = data_components(spec, int(cfg["image_size"]), schema_path)
    ingestion, schema, transform = data[0], data[2], data[-1]

    train = config.train
    warm_start = []
    if train.get("base_model"):     # the Trainer's base_model: an earlier run's fitted model
        warm_start = [tfx.dsl.Importer(
            source_uri=base_model_uri(train["base_model"], cfg),
            artifact_type=tfx.types.standard_artifacts.Model).with_id("base_model_importer")]
    trainer = tfx.components.Trainer(
        run_fn=TRAINER_FN,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema.outputs["schema"],
        base_model=warm_start[0].outputs["result"] if warm_start else None,
        train_args=tfx.proto.TrainArgs(num_steps=int(train["train_steps"] or 0)),
        eval_args=tfx.proto.EvalArgs(num_steps=int(train["eval_steps"] or 0)),
        custom_config={"method": cfg, "train": train_config(config, cfg, spec)})

    baseline = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")
    evaluator = tfx.components.Evaluator(
        examples=ingestion.outputs["examples"], model=trainer.outputs["model"],
        baseline_model=baseline.outputs["model"], eval_config=eval_config(config),
        example_splits=["eval"])
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=config.push_dir)))

    components: List = data + warm_start + [trainer, baseline, evaluator, pusher]
    return tfx.dsl.Pipeline(
        pipeline_name=config.name,
        pipeline_root=config.pipeline_root,
        components=components,
        enable_cache=enable_cache,
        metadata_connection_config=(tfx.orchestration.metadata
                                    .sqlite_metadata_connection_config(config.metadata_path)
                                    if local_metadata else None),
        beam_pipeline_args=config.beam_args)


def run_local(config: RunConfig, enable_cache: bool = True) -> None:
    """Run the pipeline here with LocalDagRunner (Beam DirectRunner)."""
    os.makedirs(config.pipeline_root, exist_ok=True)
    tfx.orchestration.LocalDagRunner().run(create_pipeline(config, enable_cache))
