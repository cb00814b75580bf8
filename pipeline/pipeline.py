"""The fer-mtl TFX pipeline definition, shared by the local and Kubeflow runners.

FaceIngestion (Beam) -> StatisticsGen -> ImportSchemaGen (curated contract
schema) -> ExampleValidator -> AnomalyGate -> Transform -> Trainer (any method)
-> Evaluator (TFMA slices, blessing against the last blessed model) -> Pusher.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx

from components import contract
from components.anomaly_gate import AnomalyGate
from components.ingestion import FaceIngestion
from components.ingestion.spec import DataSpec
from pipeline import schema as contract_schema
from pipeline.config import RunConfig

TRANSFORM_FN = "models.transform_module.preprocessing_fn"
TRAINER_FN = "models.trainer_module.run_fn"
# The slices the issue asks for: overall, per true emotion, per dataset, per domain.
SLICES = ([], ["emotion"], ["dataset"], ["domain"])


def method_config(config: RunConfig, data_spec: DataSpec) -> Dict[str, Any]:
    """The resolved method config (preset + overrides) plus the run's datasets."""
    from models.registry import get_method

    m = config.method
    cfg = get_method(m["name"]).config(m.get("preset", "small"), **(m.get("overrides") or {}))
    cfg["datasets"] = list(data_spec.dataset_names())
    # Written next to the exported model: `fermtl predict` aligns faces the same way.
    cfg["ingestion"] = {"image_size": data_spec.image_size, "detector": data_spec.detector}
    return cfg


def eval_config(config: RunConfig) -> tfma.EvalConfig:
    """TFMA config: overall accuracy with value + change thresholds (the blessing),
    per-class precision / recall / AUC, confusion matrix, on every slice."""
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
                # One-vs-rest at probability 0.5; the report adds argmax-based
                # per-class precision / recall from the confusion matrix.
                metrics=[tfma.MetricConfig(class_name="Precision"),
                         tfma.MetricConfig(class_name="Recall"),
                         tfma.MetricConfig(class_name="AUC")]),
        ])


def create_pipeline(config: RunConfig, enable_cache: bool = True,
                    schema_path: Optional[str] = None,
                    local_metadata: bool = True) -> tfx.dsl.Pipeline:
    """All components of a run, wired. ``local_metadata=False`` leaves MLMD to
    the orchestrator (Kubeflow)."""
    spec = DataSpec.from_dict(config.data, config.data_base_dir)
    cfg = method_config(config, spec)

    ingestion = FaceIngestion(data_spec=spec.to_json())
    statistics = tfx.components.StatisticsGen(examples=ingestion.outputs["examples"])
    schema = tfx.components.ImportSchemaGen(
        schema_file=schema_path or contract_schema.SCHEMA_PATH)
    validator = tfx.components.ExampleValidator(
        statistics=statistics.outputs["statistics"], schema=schema.outputs["schema"])
    gate = AnomalyGate(anomalies=validator.outputs["anomalies"])
    transform = tfx.components.Transform(
        examples=ingestion.outputs["examples"], schema=schema.outputs["schema"],
        preprocessing_fn=TRANSFORM_FN,
        custom_config={"image_size": cfg["image_size"], "datasets": cfg["datasets"]})
    transform.add_upstream_node(gate)

    train = config.train
    trainer = tfx.components.Trainer(
        run_fn=TRAINER_FN,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema.outputs["schema"],
        train_args=tfx.proto.TrainArgs(num_steps=int(train["train_steps"] or 0)),
        eval_args=tfx.proto.EvalArgs(num_steps=int(train["eval_steps"] or 0)),
        custom_config={"method": cfg, "epochs": int(train["epochs"]),
                       "batch_size": int(train["batch_size"])})

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

    components: List = [ingestion, statistics, schema, validator, gate, transform, trainer,
                        baseline, evaluator, pusher]
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
