"""The same pipeline compiles to a Kubeflow Pipelines v2 spec with every
component in our image and the run's parameters baked in."""

import json
import os

import pytest

from kubeflow.runner import IMAGE_SCHEMA_PATH, compile_pipeline, main
from pipeline.config import CONFIG_DIR, load_config

COMPONENTS = ("FaceIngestion", "StatisticsGen", "ImportSchemaGen", "ExampleValidator",
              "AnomalyGate", "Transform", "Trainer", "Evaluator", "Pusher")


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    out = tmp_path_factory.mktemp("kfp") / "spec.json"
    config = load_config(os.path.join(CONFIG_DIR, "demo.yaml"), overrides={
        "pipeline_root": "gs://bucket/fermtl", "method": {"name": "sjmt"},
        "evaluation": {"min_accuracy": 0.42}})
    compile_pipeline(config, str(out), image="registry.example/fermtl:test",
                     beam_args=["--runner=DataflowRunner", "--project=p"])
    with open(out) as f:
        return json.load(f)["pipelineSpec"]


def _params(spec, task):
    params = spec["root"]["dag"]["tasks"][task]["inputs"]["parameters"]
    return {k: next(iter(v["runtimeValue"]["constantValue"].values()))
            for k, v in params.items()}


def test_every_component_runs_in_our_image(spec):
    executors = spec["deploymentSpec"]["executors"]
    for name in COMPONENTS:
        container = executors[f"{name}_executor"]["container"]
        assert container["image"] == "registry.example/fermtl:test"
        assert container["command"] == [
            "python", "-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]
        assert "--runner=DataflowRunner" in container["args"]
    assert executors["FaceIngestion_executor"]["container"]["args"][1] == \
        "components.ingestion.executor.Executor"


def test_module_references_and_parameters_flow_through(spec):
    trainer = _params(spec, "Trainer")
    assert trainer["run_fn"] == "models.trainer_module.run_fn"
    custom = json.loads(trainer["custom_config"])
    assert custom["method"]["method"] == "sjmt"
    assert custom["method"]["datasets"] == ["synth_lab", "synth_wild"]
    transform = _params(spec, "Transform")
    assert transform["preprocessing_fn"] == "models.transform_module.preprocessing_fn"
    ingestion = json.loads(_params(spec, "FaceIngestion")["data_spec"])
    assert ingestion["sources"][0]["reader"] == "synthetic"
    assert _params(spec, "ImportSchemaGen")["schema_file"] == IMAGE_SCHEMA_PATH
    assert "0.42" in _params(spec, "Evaluator")["eval_config"]
    push = json.loads(_params(spec, "Pusher")["push_destination"])
    assert push["filesystem"]["base_directory"] == "gs://bucket/fermtl/serving/fer"


def test_dag_order(spec):
    tasks = spec["root"]["dag"]["tasks"]
    assert "AnomalyGate" in tasks["Transform"]["dependentTasks"]
    assert set(tasks["Pusher"]["dependentTasks"]) >= {"Trainer", "Evaluator"}


def test_cli_writes_the_spec(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["--config", os.path.join(CONFIG_DIR, "demo.yaml"), "--output", str(out),
                 "--pipeline-root", "gs://b/r"]) == 0
    assert json.loads(out.read_text())["runtimeConfig"]["gcsOutputDirectory"] == "gs://b/r"


def test_launcher_runs_our_ingestion_component(tmp_path):
    """Run FaceIngestion the way a KFP pod does: the spec's container command and
    args, with `{{$}}` replaced by an ExecutorInput built from the spec."""
    import subprocess
    import sys

    tiny = {"sources": [{"reader": "synthetic", "dataset": "synth", "aligned": True,
                         "options": {"n_subjects": 6, "samples_per_emotion": 1, "size": 48,
                                     "domains": ["lab"]}}],
            "split": {"eval_fraction": 0.34}, "image_size": 48, "detector": "none"}
    config = load_config(os.path.join(CONFIG_DIR, "demo.yaml"), overrides={"data": tiny})
    out = tmp_path / "spec.json"
    compile_pipeline(config, str(out), image="img")
    spec = json.loads(out.read_text())["pipelineSpec"]
    container = spec["deploymentSpec"]["executors"]["FaceIngestion_executor"]["container"]
    params = spec["root"]["dag"]["tasks"]["FaceIngestion"]["inputs"]["parameters"]
    outputs = spec["components"]["FaceIngestion"]["outputDefinitions"]["artifacts"]
    executor_input = {
        "inputs": {"parameters": {k: v["runtimeValue"]["constantValue"]
                                  for k, v in params.items()}},
        "outputs": {"artifacts": {
            name: {"artifacts": [{
                "name": f"artifacts/{name}", "uri": str(tmp_path / name), "metadata": {},
                "type": {"schemaTitle": d["artifactType"]["instanceSchema"]
                         .split("\n")[0].split("title: ")[1]}}]}
            for name, d in outputs.items()},
            "outputFile": str(tmp_path / "task" / "output_metadata.json")}}
    args = [json.dumps(executor_input) if a == "{{$}}" else a for a in container["args"]]
    assert container["command"][0] == "python"
    run = subprocess.run([sys.executable] + container["command"][1:] + args,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "examples" / "Split-train").is_dir()
    assert (tmp_path / "quarantine" / "quarantine.json").exists()
    metadata = json.loads((tmp_path / "task" / "output_metadata.json").read_text())
    props = metadata["artifacts"]["examples"]["artifacts"][0]["metadata"]
    assert props["num_train"] + props["num_eval"] == 6 * 8
