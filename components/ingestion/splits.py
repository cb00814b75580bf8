"""Subject-disjoint train/eval splits and k-fold assignment.

Every sample gets a *split key*: its dataset plus its subject id when the source
knows the subject, else its dataset plus its uid. **Without subject ids, each
image is its own subject**: the split is then image-disjoint only, and images of
one unknown person may fall on both sides (FER2013 has no subject ids).

A key goes to ``eval`` when a stable hash of ``(seed, key)`` falls below
``eval_fraction`` (SHA-256, not Python's salted ``hash()``, so the assignment
is the same in every process, worker, runner and Python version). Because the
decision depends on the key alone, all samples of a subject land on the same
side: subject-disjointness holds by construction, with no global shuffle or
state, which is what lets the Beam pipeline assign splits element by element
on any runner. The fraction holds over *subjects*, so with few subjects the
share of images can differ from ``eval_fraction`` noticeably.

k-fold: ``assign_fold(key, k, seed)`` is the same hash modulo ``k``: each key
(and so each subject) is in exactly one fold.
"""

from __future__ import annotations

import hashlib

from components import contract

SPLITS = ("train", "eval")


def population(sample: contract.FaceSample) -> str:
    """The group of people a sample's subject id belongs to: its dataset, with a
    ``_<domain>`` suffix removed. One source rendered in several domains (the
    synthetic source writes ``synth_lab`` and ``synth_wild``) shows the *same*
    people in each, so their subjects must not be told apart by domain."""
    suffix = f"_{sample.domain}" if sample.domain else ""
    if suffix and sample.dataset.endswith(suffix) and len(sample.dataset) > len(suffix):
        return sample.dataset[:-len(suffix)]
    return sample.dataset


def split_key(sample: contract.FaceSample) -> str:
    """``"<population>/subject:<subject>"``, or ``"<dataset>/uid:<uid>"`` when
    the subject is unknown (each image is then its own subject). Subject ids
    are scoped by population (:func:`population`): subject ``S005`` of two
    datasets are two people, subject ``synth_s0003`` of ``synth_lab`` and
    ``synth_wild`` is one."""
    if sample.subject:
        return f"{population(sample)}/subject:{sample.subject}"
    return f"{sample.dataset}/uid:{sample.uid}"


def _unit_hash(key: str, seed: int, salt: str) -> int:
    digest = hashlib.sha256(f"{salt}\x00{int(seed)}\x00{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def unit_interval(key: str, seed: int = 0) -> float:
    """Stable pseudo-uniform number in [0, 1) for ``key`` and ``seed``."""
    return _unit_hash(key, seed, "split") / float(1 << 64)


def assign_split(key: str, eval_fraction: float, seed: int = 0) -> str:
    """``"eval"`` for a stable ``eval_fraction`` share of keys, else ``"train"``."""
    if not 0.0 <= eval_fraction <= 1.0:
        raise ValueError(f"eval_fraction must lie in [0, 1], got {eval_fraction}")
    return "eval" if unit_interval(key, seed) < eval_fraction else "train"


def assign_fold(key: str, k: int, seed: int = 0) -> int:
    """Fold in ``[0, k)`` of ``key``: stable, uniform, one fold per key."""
    if int(k) < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    return _unit_hash(key, seed, "fold") % int(k)


def source_split(split: str) -> str:
    """A source's own split mapped to ours: ``train`` -> train, ``val``/``test``
    -> eval; "" (the source has none) -> ""."""
    if not split:
        return ""
    return "train" if split == "train" else "eval"


def sample_split(sample: contract.FaceSample, eval_fraction: float = 0.2, seed: int = 0,
                 use_source_split: bool = False, kfold=None) -> str:
    """The split of one sample under a spec's ``split`` settings.

    ``kfold`` is ``None`` or ``(k, fold)``: eval is that fold. With
    ``use_source_split`` a sample of a source that has its own split keeps it
    (train -> train, val/test -> eval); samples whose source has none fall back
    to the subject hash.
    """
    if use_source_split:
        own = source_split(sample.split)
        if own:
            return own
    key = split_key(sample)
    if kfold is not None:
        k, fold = kfold
        return "eval" if assign_fold(key, k, seed) == int(fold) else "train"
    return assign_split(key, eval_fraction, seed)
