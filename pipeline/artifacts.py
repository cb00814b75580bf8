"""A pipeline run's artifacts, read back from its ML Metadata store.

``fermtl benchmark`` prepares its data with the pipeline's own components
(FaceIngestion ... Transform, cached by MLMD) and then trains on their output
artifacts exactly as the Trainer does: :func:`latest_outputs` finds them and
:func:`data_accessor` builds the ``DataAccessor`` TFX gives the Trainer. A warm
start (``train.base_model``) finds an earlier run's blessed model with
:func:`base_model_uri`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Dict, List

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

if TYPE_CHECKING:
    from tfx.components.trainer.fn_args_utils import DataAccessor
    from tfx.types.artifact import Artifact

# tfx is imported where it is used: importing it logs Beam's type-hint INFO lines,
# and `fermtl run` checks train.base_model (below) before its logs go to a file.

_OUTPUT_EVENTS = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)


def store(metadata_path: str) -> metadata_store.MetadataStore:
    """A read-only connection to a run's ``metadata.sqlite``."""
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(config)


def latest_outputs(metadata_path: str, node_id: str) -> Dict[str, List[Artifact]]:
    """Output key -> artifacts of the newest successful (or cached) execution
    of the pipeline node ``node_id`` (e.g. ``"Transform"``): the executions of
    the MLMD ``node`` context ``<pipeline>.<node_id>``."""
    from tfx.types import artifact_utils

    db = store(metadata_path)
    done = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)
    executions = [e for ctx in db.get_contexts_by_type("node")
                  if ctx.name.endswith(f".{node_id}")
                  for e in db.get_executions_by_context(ctx.id) if e.last_known_state in done]
    if not executions:
        raise LookupError(f"{metadata_path}: no finished execution of {node_id}")
    newest = max(executions, key=lambda e: e.id)
    events = [ev for ev in db.get_events_by_execution_ids([newest.id])
              if ev.type in _OUTPUT_EVENTS]
    artifacts = {a.id: a for a in db.get_artifacts_by_id([ev.artifact_id for ev in events])}
    types = {t.id: t for t in db.get_artifact_types_by_id(
        list({a.type_id for a in artifacts.values()}))}
    out: Dict[str, List[Artifact]] = {}
    for ev in events:
        key = ev.path.steps[0].key if ev.path.steps else ""
        mlmd = artifacts[ev.artifact_id]
        out.setdefault(key, []).append(
            artifact_utils.deserialize_artifact(types[mlmd.type_id], mlmd))
    return out


def data_accessor(examples: List[Artifact], component: str = "Benchmark") -> DataAccessor:
    """The ``DataAccessor`` the TFX Trainer builds for ``examples`` artifacts."""
    from tfx.components.trainer.fn_args_utils import DataAccessor
    from tfx.components.util import tfxio_utils

    return DataAccessor(
        tf_dataset_factory=tfxio_utils.get_tf_dataset_factory_from_artifact(
            examples, [component]),
        record_batch_factory=tfxio_utils.get_record_batch_factory_from_artifact(
            examples, [component]),
        data_view_decode_fn=tfxio_utils.get_data_view_decode_fn_from_artifact(
            examples, [component]))


def split_pattern(examples: List[Artifact], split: str) -> List[str]:
    """File patterns of one split of ``examples`` artifacts."""
    from tfx.types import artifact_utils

    return [f"{uri}/*" for uri in artifact_utils.get_split_uris(examples, split)]


def latest_blessed_model(metadata_path: str) -> str:
    """The URI of the newest Model artifact the run's Evaluator blessed (the
    ``current_model_id`` of a ModelBlessing with ``blessed = 1``)."""
    db = store(metadata_path)
    blessed = [b.custom_properties["current_model_id"].int_value
               for b in db.get_artifacts_by_type("ModelBlessing")
               if b.custom_properties["blessed"].int_value == 1
               and "current_model_id" in b.custom_properties]
    if not blessed:
        raise LookupError(f"{metadata_path}: no blessed model")
    (model,) = db.get_artifacts_by_id([max(blessed)])
    return model.uri


def base_model_uri(path: str, weights_file: str) -> str:
    """The Model artifact folder a warm-started run starts from (``train.base_model``):
    ``path`` itself when it holds ``weights_file`` (a Trainer's Model artifact), else
    the newest blessed model of the run whose ``pipeline_root`` is ``path``. Raises
    ``LookupError`` naming what is missing."""
    if os.path.exists(os.path.join(path, weights_file)):
        return path
    metadata = os.path.join(path, "metadata.sqlite")
    if not os.path.exists(metadata):
        raise LookupError(f"{path} is neither a Model artifact (no {weights_file}) nor a "
                          "pipeline root (no metadata.sqlite); run that pipeline first")
    uri = latest_blessed_model(metadata)
    if not os.path.exists(os.path.join(uri, weights_file)):
        raise LookupError(f"{path}: its latest blessed model {uri} has no {weights_file} "
                          "(trained before the Trainer saved its weights); rerun that pipeline")
    return uri
