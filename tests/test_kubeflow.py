"""The same pipeline compiles to a Kubeflow Pipelines v2 spec with every
component in our image and the run's parameters baked in; the image installs
exactly what setup.py does; fer-mtl leaves the `kubeflow` import name to the
Kubeflow SDKs."""

import glob
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
from unittest import mock

import pytest

from pipeline.config import CONFIG_DIR, load_config
from pipeline.kubeflow_runner import (IMAGE_SCHEMA_PATH, IMAGE_SOURCE_DIR, compile_pipeline,
                                      main)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILE = os.path.join(ROOT, "kubeflow", "Dockerfile")

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
    assert "datasets" not in custom["method"]          # the Trainer reads Transform's vocabulary
    assert custom["train"]["backup_dir"].startswith("gs://bucket/")   # resumable on the cluster
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


# --------------------------------------------------------------------------- the kubeflow name
def _setup_kwargs(monkeypatch) -> dict:
    """The keyword arguments setup.py passes to setuptools.setup."""
    monkeypatch.chdir(ROOT)     # find_packages() looks in the working directory
    with mock.patch("setuptools.setup") as setup:
        runpy.run_path(os.path.join(ROOT, "setup.py"))
    return setup.call_args.kwargs


def _top_level(packages) -> set:
    return {name.split(".")[0] for name in packages}


def test_fermtl_installs_nothing_named_kubeflow(monkeypatch):
    packages = _setup_kwargs(monkeypatch)["packages"]
    assert _top_level(packages) == {"pipeline", "components", "models", "benchmarks"}
    assert not os.path.exists(os.path.join(ROOT, "kubeflow", "__init__.py"))


# kubeflow/__init__.py of the Kubeflow SDKs (read from their wheels).
SDK_INIT_FILES = {
    # kubeflow-training 1.9.4, kubeflow-katib 0.19.0: a pkgutil-style namespace
    "pkgutil_namespace": "__path__ = __import__(\"pkgutil\").extend_path(__path__, __name__)\n",
    # kubeflow 0.5.0 (the Kubeflow SDK): a regular package
    "regular_package": "__version__ = \"0.5.0\"\n",
}

IMPORT_BOTH = """
import sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]   # our checkout first, as when run from it
import kubeflow.training
import pipeline.kubeflow_runner
assert kubeflow.training.__file__.startswith(sys.argv[2]), kubeflow.training.__file__
assert pipeline.kubeflow_runner.__file__.startswith(sys.argv[1]), pipeline.kubeflow_runner.__file__
print(kubeflow.training.TRAINING_JOB, pipeline.kubeflow_runner.IMAGE_SOURCE_DIR)
"""


# Each style is a fresh interpreter importing TFX (15 s on 2 cores); the regular
# package (the older `kubeflow` SDK) runs in make test-all.
@pytest.mark.parametrize("style", [pytest.param(s, marks=pytest.mark.slow)
                                   if s == "regular_package" else s
                                   for s in sorted(SDK_INIT_FILES)])
def test_kubeflow_sdk_imports_beside_fermtl(tmp_path, style):
    """A stand-in `kubeflow` package with a `training` module, on the path behind
    the checkout: both it and our KFP compiler import (fresh interpreter, so
    sys.modules starts clean)."""
    package = tmp_path / "kubeflow"
    (package / "training").mkdir(parents=True)
    (package / "__init__.py").write_text(SDK_INIT_FILES[style])
    (package / "training" / "__init__.py").write_text("TRAINING_JOB = 'PyTorchJob'\n")
    run = subprocess.run([sys.executable, "-c", IMPORT_BOTH, ROOT, str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split()[-2:] == ["PyTorchJob", IMAGE_SOURCE_DIR]


def test_package_data_holds_every_data_file(monkeypatch):
    """A regular (non-editable) install carries every non-Python file of the
    packages: each one matches a package_data pattern of its package."""
    kwargs = _setup_kwargs(monkeypatch)
    packages = set(kwargs["packages"])
    covered = set()
    for name, patterns in kwargs["package_data"].items():
        package_dir = os.path.join(ROOT, *name.split("."))
        for pattern in patterns:
            covered.update(os.path.join(package_dir, path)
                           for path in glob.glob(pattern, root_dir=package_dir))
    data_files = set()
    for top in _top_level(packages):
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, top)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            data_files.update(os.path.join(dirpath, f) for f in filenames
                              if not f.endswith((".py", ".pyc")))
    assert data_files, "expected the configs and the schema"
    assert sorted(data_files - covered) == []
    assert os.path.join(ROOT, IMAGE_SCHEMA_PATH[len(IMAGE_SOURCE_DIR) + 1:]) in covered


# --------------------------------------------------------------------------- component image
def _dockerfile_steps():
    """(INSTRUCTION, arguments) of kubeflow/Dockerfile, continuation lines joined."""
    with open(DOCKERFILE) as f:
        text = re.sub(r"\\\n", " ", f.read())
    steps = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            steps.append((word.upper(), rest.strip()))
    return steps


def _pip_installs(steps):
    """(step index, requirements, constraint files, editable, flags) of every
    `pip install` in a RUN step; `-r FILE` counts as a requirement."""
    installs = []
    for index, (word, arg) in enumerate(steps):
        if word != "RUN":
            continue
        for command in re.split(r"&&|;|\|\|", arg):
            tokens = shlex.split(command)
            starts = [i for i, t in enumerate(tokens[:-1])
                      if os.path.basename(t) in ("pip", "pip3") and tokens[i + 1] == "install"]
            if not starts:
                continue
            args = iter(tokens[starts[0] + 2:])
            requirements, constraints, flags, editable = [], [], set(), False
            for a in args:
                if a in ("-e", "--editable"):
                    editable = True
                    requirements.append(next(args))
                elif a in ("-c", "--constraint"):
                    constraints.append(next(args))
                elif a.startswith("--constraint="):
                    constraints.append(a.split("=", 1)[1])
                elif a in ("-r", "--requirement"):
                    requirements.append(f"-r {next(args)}")
                elif a.startswith("-"):
                    flags.add(a)
                else:
                    requirements.append(a)
            installs.append((index, requirements, constraints, editable, flags))
    return installs


def _copies(steps):
    """{source: (step index, absolute destination)} of the COPY steps."""
    workdir, copies = "/", {}
    for index, (word, arg) in enumerate(steps):
        if word == "WORKDIR":
            workdir = os.path.join(workdir, arg)
        elif word == "COPY":
            tokens = [t for t in shlex.split(arg) if not t.startswith("--")]
            sources, dest = tokens[:-1], tokens[-1]
            for source in sources:
                target = os.path.join(workdir, dest)
                if len(sources) > 1 or dest.endswith("/"):
                    target = os.path.join(target, os.path.basename(source))
                copies[source.rstrip("/")] = (index, os.path.normpath(target))
    return copies


def test_component_image_installs_the_project_pinned():
    """Every pip install in the image installs this project (the kfp extra) under
    constraints.txt, and nothing else: no dependency list of its own to drift."""
    installs = _pip_installs(_dockerfile_steps())
    assert installs, "kubeflow/Dockerfile installs nothing with pip"
    for _, requirements, constraints, _, _ in installs:
        assert requirements == [".[kfp]"], requirements
        assert constraints == ["constraints.txt"], constraints
    first_index, _, _, _, first_flags = installs[0]
    assert "--no-deps" not in first_flags       # this one installs the dependencies
    copies = _copies(_dockerfile_steps())
    for needed in ("setup.py", "constraints.txt"):
        assert copies[needed][0] < first_index, f"{needed} is copied after the first install"


def test_component_image_holds_every_installed_package(monkeypatch):
    """Each top-level package setup.py installs is copied to the source tree
    before the last install, which is editable: the code runs from
    IMAGE_SOURCE_DIR, where the spec's IMAGE_SCHEMA_PATH points."""
    steps = _dockerfile_steps()
    assert [arg for word, arg in steps if word == "WORKDIR"] == [IMAGE_SOURCE_DIR]
    last_index, _, _, editable, _ = _pip_installs(steps)[-1]
    assert editable
    copies = _copies(steps)
    for package in _top_level(_setup_kwargs(monkeypatch)["packages"]):
        assert package in copies, f"kubeflow/Dockerfile does not COPY {package}/"
        index, target = copies[package]
        assert index < last_index and target == os.path.join(IMAGE_SOURCE_DIR, package)
    schema = os.path.relpath(IMAGE_SCHEMA_PATH, IMAGE_SOURCE_DIR)
    assert schema.split(os.sep)[0] in copies
    assert os.path.isfile(os.path.join(ROOT, schema))
