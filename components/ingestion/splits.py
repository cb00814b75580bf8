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

k-fold needs a global view, unlike the split: :func:`assign_folds` takes the
(population, split key, emotion) of every sample (:func:`fold_record`) and
assigns folds with scikit-learn's ``StratifiedGroupKFold`` (group order
shuffled by the seed): one subject in one fold, folds with a similar number
of subjects and the emotions spread evenly over them (samples without emotion,
-1, are a stratum of their own). Each population (dataset) is divided on its
own, so fold ``f`` of a mix is fold ``f`` of every dataset in it.
The Beam pipeline collects the records once and maps the result back onto the
samples (a side input). ``assign_fold(key, k, seed)`` is the older per-key hash
modulo ``k`` (still used by ``pipeline/benchmark.py``): subject-disjoint but
not balanced.
"""

from __future__ import annotations

import collections
import hashlib
import warnings
from typing import Dict, Iterable, Optional, Tuple

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

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


def fold_record(sample: contract.FaceSample) -> Tuple[str, str, int]:
    """``(population, split key, emotion)``: what :func:`assign_folds` needs of a sample."""
    return population(sample), split_key(sample), int(sample.emotion)


def assign_folds(records: Iterable[Tuple[str, str, int]], k: int,
                 seed: int = 0) -> Dict[str, int]:
    """Fold in ``[0, k)`` of every split key, balanced and stratified.

    ``records`` holds one ``(population, key, emotion)`` per sample
    (:func:`fold_record`). Per population, scikit-learn's
    ``StratifiedGroupKFold(n_splits=k)`` with groups = keys and classes =
    emotions (-1 included) puts each key in one fold, its greedy pass going
    over the keys in an order shuffled by ``seed``. The result depends on the
    records and the seed only, not on the records' order.

    Why the shuffle is ours: in scikit-learn before the fix of issue #32478
    (PR #32540; 1.5 is pinned here) ``shuffle=True`` permutes the class
    counts but not the group ids, so the folds come out stratified for the
    wrong groups, i.e. not stratified at all. Numbering the groups in a
    seeded random order and calling it with ``shuffle=False`` is what the fix
    does: the shuffle only breaks ties between groups of equal class spread.

    Raises:
      ValueError: ``k < 2``, or a population with fewer than ``k`` keys.
    """
    if int(k) < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    by_population = collections.defaultdict(list)
    for pop, key, emotion in records:
        by_population[pop].append((key, int(emotion)))
    folds: Dict[str, int] = {}
    for pop in sorted(by_population):
        rows = sorted(by_population[pop])
        names = sorted({key for key, _ in rows})
        if len(names) < k:
            raise ValueError(f"{pop}: {len(names)} subjects (split keys) cannot fill {k} "
                             "folds; use fewer folds or add subjects")
        rng = np.random.default_rng([int(seed), _unit_hash(pop, seed, "fold-order") % (1 << 32)])
        order = dict(zip(names, rng.permutation(len(names)).tolist()))
        groups = np.array([order[key] for key, _ in rows])
        emotions = np.array([emotion for _, emotion in rows])
        with warnings.catch_warnings():
            # "The least populated class ... has only n members": expected for
            # rare emotions; the folds are still subject-disjoint.
            warnings.filterwarnings("ignore", message="The least populated class",
                                    category=UserWarning)
            splitter = StratifiedGroupKFold(n_splits=int(k), shuffle=False)
            for fold, (_, test) in enumerate(splitter.split(groups, emotions, groups=groups)):
                for i in test:
                    folds[rows[i][0]] = fold
    return folds


def source_split(split: str) -> str:
    """A source's own split mapped to ours: ``train`` -> train, ``val``/``test``
    -> eval; "" (the source has none) -> ""."""
    if not split:
        return ""
    return "train" if split == "train" else "eval"


def sample_split(sample: contract.FaceSample, eval_fraction: float = 0.2, seed: int = 0,
                 use_source_split: bool = False, eval_fold: Optional[int] = None) -> str:
    """The split of one sample under a spec's ``split`` settings.

    With ``use_source_split`` a sample of a source that has its own split keeps
    it (train -> train, val/test -> eval). Otherwise, with ``eval_fold`` the
    sample is eval when its ``fold`` (set by :func:`assign_folds`) is that fold,
    else the subject hash decides (``eval_fraction``).

    Raises:
      ValueError: ``eval_fold`` is given and the sample has no fold.
    """
    if use_source_split:
        own = source_split(sample.split)
        if own:
            return own
    if eval_fold is not None:
        if sample.fold < 0:
            raise ValueError(f"{sample.uid}: no fold assigned (eval_fold {eval_fold})")
        return "eval" if sample.fold == int(eval_fold) else "train"
    return assign_split(split_key(sample), eval_fraction, seed)
