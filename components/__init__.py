"""Custom TFX components, dataset readers, the example contract and synthetic faces."""


def __getattr__(name):
    # `components.QuarantineReport` is the artifact type's import path (its
    # TYPE_NAME), which the Kubeflow v2 launcher resolves; loaded lazily so that
    # importing `components` does not import TFX.
    if name == "QuarantineReport":
        from components.ingestion.component import QuarantineReport

        return QuarantineReport
    raise AttributeError(f"module 'components' has no attribute {name!r}")
