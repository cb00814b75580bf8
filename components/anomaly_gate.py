"""AnomalyGate: stops the run with a readable message when ExampleValidator
found anomalies. TFX's ExampleValidator only records anomalies; without a gate
a pipeline would train on data that broke its schema.

(No ``from __future__ import annotations`` here: TFX reads the component
function's annotations as types.)"""

import os
from typing import Dict, List

from tfx import v1 as tfx
from tfx.types import artifact_utils

ANOMALIES_FILE = "SchemaDiff.pb"


class DataAnomalyError(RuntimeError):
    """The examples do not match the schema."""


def read_anomalies(anomalies_artifact) -> Dict[str, List[str]]:
    """``{split: ["feature: description", ...]}`` for every split with anomalies."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    found: Dict[str, List[str]] = {}
    for split in artifact_utils.decode_split_names(anomalies_artifact.split_names):
        path = os.path.join(anomalies_artifact.uri, f"Split-{split}", ANOMALIES_FILE)
        with open(path, "rb") as f:
            anomalies = anomalies_pb2.Anomalies.FromString(f.read())
        lines = []
        for feature, info in sorted(anomalies.anomaly_info.items()):
            reasons = "; ".join(r.description or r.short_description for r in info.reason)
            lines.append(f"{feature}: {reasons or info.description}")
        if anomalies.HasField("dataset_anomaly_info"):
            lines.append(f"(dataset): {anomalies.dataset_anomaly_info.description}")
        if lines:
            found[split] = lines
    return found


def format_anomalies(found: Dict[str, List[str]]) -> str:
    out = ["The data does not match the schema (pipeline/schema/schema.pbtxt):"]
    for split, lines in found.items():
        out.append(f"  split {split}:")
        out.extend(f"    - {line}" for line in lines)
    out.append("Fix the data (or its readers), then run again.")
    return "\n".join(out)


@tfx.dsl.components.component
def AnomalyGate(anomalies: tfx.dsl.components.InputArtifact[
        tfx.types.standard_artifacts.ExampleAnomalies]) -> None:
    """Raise :class:`DataAnomalyError` listing every anomaly, else pass."""
    found = read_anomalies(anomalies)
    if found:
        raise DataAnomalyError(format_anomalies(found))
