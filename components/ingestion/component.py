"""``FaceIngestion``: the custom TFX component that turns raw face datasets into
the pipeline's Examples (see :mod:`components.ingestion.executor`).

.. code-block:: python

    ingestion = FaceIngestion(data_spec="data.yaml")       # or spec.to_json(), a dict
    statistics = tfx.components.StatisticsGen(examples=ingestion.outputs["examples"])

Outputs:
  examples: ``standard_artifacts.Examples`` with splits ``train`` / ``eval``
    (``Split-<name>/data_tfrecord-*.gz``, GZIP TFRecords of contract
    tf.Examples), payload format FORMAT_TF_EXAMPLE, ``span`` / ``version`` set,
    counts as custom properties (``num_train``, ``num_eval``,
    ``num_quarantined``, ``num_no_eyes_fallback``, ``num_<dataset>_<split>``,
    ``counts`` JSON).
  quarantine: :class:`QuarantineReport` holding ``quarantine.json`` (the
    :meth:`components.quarantine.Quarantine.write` format: every rejected input
    with its reason) and ``counts.json``, with the counts (and
    ``num_<reason>``) as custom properties.
"""

from __future__ import annotations

from typing import Mapping, Union

from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import artifact, channel, component_spec, standard_artifacts

from components.ingestion import executor
from components.ingestion.spec import DataSpec


class QuarantineReport(artifact.Artifact):
    """Inputs FaceIngestion rejected, with reasons (``quarantine.json``)."""

    # KFP v2 requires `<namespace>.<Title>` and its launcher imports the class
    # from that very path, so the name is where the class can be imported from.
    TYPE_NAME = "components.QuarantineReport"


class FaceIngestionSpec(component_spec.ComponentSpec):
    PARAMETERS = {
        "data_spec": component_spec.ExecutionParameter(type=str),
        "span": component_spec.ExecutionParameter(type=int, optional=True),
        "version": component_spec.ExecutionParameter(type=int, optional=True),
    }
    INPUTS = {}
    OUTPUTS = {
        "examples": component_spec.ChannelParameter(type=standard_artifacts.Examples),
        "quarantine": component_spec.ChannelParameter(type=QuarantineReport),
    }


class FaceIngestion(base_beam_component.BaseBeamComponent):
    """Read face datasets, detect + align faces, split by subject, quarantine
    what cannot be used (Beam; DirectRunner or any distributed runner)."""

    SPEC_CLASS = FaceIngestionSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(self, data_spec: Union[str, Mapping, DataSpec], span: int = 0,
                 version: int = 0):
        """Args:
          data_spec: the spec as JSON (``DataSpec.to_json()``), a YAML file path,
            a mapping or a :class:`DataSpec`. It is validated here, at pipeline
            construction, and passed on as JSON with absolute paths.
          span, version: recorded on the Examples artifact, like ExampleGen's.
        """
        spec = DataSpec.load(data_spec)
        super().__init__(spec=FaceIngestionSpec(
            data_spec=spec.to_json(), span=int(span), version=int(version),
            examples=channel.Channel(type=standard_artifacts.Examples),
            quarantine=channel.Channel(type=QuarantineReport)))
