"""Face ingestion: the pipeline's custom TFX component (Beam).

* :mod:`.spec` — the dataset spec (:class:`DataSpec`, YAML / dict / JSON);
* :mod:`.align` — face detection + eye alignment (:class:`FaceAligner`);
* :mod:`.splits` — subject-disjoint train/eval and k-fold assignment;
* :mod:`.executor` — the Beam pipeline, :func:`ingest` and the TFX executor;
* :mod:`.component` — :class:`FaceIngestion` and :class:`QuarantineReport`.

See docs/ingestion.md. ``FaceIngestion`` / ``QuarantineReport`` are imported
lazily so that spec / align / splits work without importing TFX.
"""

from components.ingestion.spec import DataSpec, SpecError

__all__ = ["DataSpec", "SpecError", "FaceIngestion", "QuarantineReport", "ingest",
           "EmptySplitError"]


def __getattr__(name):
    if name in ("FaceIngestion", "QuarantineReport"):
        from components.ingestion import component

        return getattr(component, name)
    if name in ("ingest", "EmptySplitError"):
        from components.ingestion import executor

        return getattr(executor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
