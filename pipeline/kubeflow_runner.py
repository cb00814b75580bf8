"""Compile the fer-mtl pipeline to a Kubeflow Pipelines v2 spec (``KubeflowV2DagRunner``).

The spec runs every component in the image built from ``kubeflow/Dockerfile``
(Python 3.10, the pinned stack, this package installed at ``/fermtl``).
Nothing here talks to a cluster: uploading and running the spec is described
in ``kubeflow/README.md``.

This module lives in ``pipeline/``, not in ``kubeflow/``: the import name
``kubeflow`` belongs to the Kubeflow SDKs (``kubeflow-training`` and
``kubeflow-katib`` make it a namespace package, the ``kubeflow`` SDK a regular
one), so fer-mtl installs nothing under it and ``kubeflow/`` holds only the
component image and the deployment notes.

Usage: ``python -m pipeline.kubeflow_runner --config my_run.yaml --image REGISTRY/fermtl:0.1.0``
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from tfx import v1 as tfx

from pipeline.config import RunConfig, load_config
from pipeline.pipeline import create_pipeline

DEFAULT_IMAGE = "ghcr.io/fer-mtl/fermtl:0.1.0"
# Where kubeflow/Dockerfile puts the source tree (WORKDIR, editable install).
IMAGE_SOURCE_DIR = "/fermtl"
IMAGE_SCHEMA_PATH = f"{IMAGE_SOURCE_DIR}/pipeline/schema/schema.pbtxt"


def compile_pipeline(config: RunConfig, output_file: str, image: str = DEFAULT_IMAGE,
                     beam_args: Optional[List[str]] = None) -> str:
    """Write the pipeline spec JSON to ``output_file``; returns its path.

    ``config.pipeline_root`` and the data paths should be object-storage URIs
    (``gs://...``, ``s3://...``) that every pod can read; ``beam_args`` replace
    the config's (e.g. ``--runner=DataflowRunner --project=... --region=...``).
    """
    if beam_args is not None:
        config.beam_args = list(beam_args)
    pipeline = create_pipeline(config, schema_path=IMAGE_SCHEMA_PATH, local_metadata=False)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=os.path.dirname(os.path.abspath(output_file)),
        output_filename=os.path.basename(output_file))
    runner.run(pipeline)
    return output_file


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="run config YAML")
    p.add_argument("--output", default="fermtl_pipeline.json", help="spec file to write")
    p.add_argument("--image", default=DEFAULT_IMAGE, help="component image (kubeflow/Dockerfile)")
    p.add_argument("--pipeline-root", help="override pipeline_root (e.g. gs://bucket/fermtl)")
    p.add_argument("--method", help="override method.name")
    p.add_argument("--beam-arg", action="append", dest="beam_args",
                   help="Beam argument for the cluster (repeat)")
    args = p.parse_args(argv)
    overrides = {}
    if args.pipeline_root:
        overrides["pipeline_root"] = args.pipeline_root
    if args.method:
        overrides["method"] = {"name": args.method}
    config = load_config(args.config, overrides=overrides)
    path = compile_pipeline(config, args.output, args.image, args.beam_args)
    print(f"pipeline spec written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
