"""The synthetic face generator (:mod:`components.synthetic`) as a reader, so
that a spec's ``synthetic`` source is read like every other source.

A synthetic source has no path; its options are :func:`synthetic.generate`'s
keywords. Samples are named ``<dataset>_<domain>`` (``dataset`` default
``synth``: ``synth_lab`` / ``synth_wild``, like ``generate`` itself).
"""

from __future__ import annotations

from typing import Iterator, List, Mapping, Optional

from components import contract, synthetic
from components.quarantine import Quarantine
from components.readers import _common

DEFAULT_DATASET = "synth"


def read_synthetic(path, dataset: Optional[str], quarantine: Quarantine, *,
                   progress: bool = False, **options) -> Iterator[contract.FaceSample]:
    """Samples of :func:`synthetic.generate` with ``options``.

    ``path`` must be None. No face is too small to be one: ``generate``
    refuses a ``size`` under 24 px with a ValueError.

    Raises:
      ValueError: a path was given, or an option ``generate`` does not take.
      EmptySourceError: nothing was generated.
    """
    if path:
        raise ValueError(f"synthetic: a synthetic source has no path, got {path!r}")
    name = dataset or DEFAULT_DATASET
    if "domains" in options:
        domains = options["domains"]
        options["domains"] = (domains,) if isinstance(domains, str) else tuple(domains)
    generated = synthetic.generate(**options)

    def samples():
        for sample in _common.progress(generated, progress, desc=f"{name} faces", unit="face"):
            sample.dataset = f"{name}_{sample.domain}"
            yield sample

    return _common.non_empty(samples(), "synthetic", "generated", quarantine)


def synthetic_dataset_names(dataset: Optional[str], options: Mapping) -> List[str]:
    """Dataset names a synthetic source with ``options`` writes."""
    domains = options.get("domains") or synthetic.DOMAINS
    if isinstance(domains, str):
        domains = [domains]
    return [f"{dataset or DEFAULT_DATASET}_{d}" for d in domains]
