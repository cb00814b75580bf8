"""The dataset spec of :class:`~components.ingestion.FaceIngestion`: which sources
to read, how to split them, how to align faces.

.. code-block:: yaml

    sources:
      - reader: class_folders        # class_folders | fer2013_csv | jaffe | pts_landmarks
                                     # | tfrecord (contract TFRecords) | synthetic
        path: ../shared/datasets/fer2013   # relative paths resolve against the YAML's folder
        dataset: fer2013
        domain: wild                 # optional, default = the reader's (the dataset name)
        label_set: [anger, disgust, fear, happiness, sadness, surprise, neutral]  # optional
        au_table: {path: aus.csv, key: stem}   # optional: key stem | path | uid | sequence
                                     # (also id_column, intensity_max, missing: keep | quarantine)
        aligned: true                # already cropped faces: resize only, no detection
        options: {}                  # the reader's keyword options
    split:
      eval_fraction: 0.2
      seed: 0
      use_source_split: false        # true: a source's own split (train -> train, val/test -> eval)
      kfold: null                    # {k: 10}: every example gets its fold (StratifiedGroupKFold
                                     # by subject and emotion, seed above); {k: 10, fold: 3}:
                                     # also eval = fold 3 (for sources without own split)
    image_size: 64                   # stored aligned face size (px)
    detector: haar                   # haar | none
    max_per_source: null             # optional cap for quick runs

Dataset names: ``synthetic`` sources name their samples ``<dataset>_<domain>``
(``dataset`` defaults to ``synth``, giving ``synth_lab`` / ``synth_wild`` like
:func:`components.synthetic.generate`); a ``tfrecord`` source keeps the names
recorded in its files unless ``dataset`` is given, which renames them.

The component's parameter is :meth:`DataSpec.to_json`, with every path already
resolved to an absolute path (or kept as a ``scheme://`` URI), so the executor
does not depend on the working directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from components import contract, readers
from components.readers import synthetic_faces, tfrecord

DETECTORS = ("haar", "none")
AU_KEYS = readers.JOIN_KEYS
SYNTHETIC_DATASET = synthetic_faces.DEFAULT_DATASET
# Fields of a source that are top-level spec fields, not reader options.
_TOP_LEVEL_OPTIONS = ("label_set", "domain", "au_table", "path", "dataset")


class SpecError(ValueError):
    """The data spec is invalid; the message names the offending field."""


def reader_types() -> Tuple[str, ...]:
    return tuple(readers.READERS)


def _resolve(path: str, base_dir: Optional[str]) -> str:
    if "://" in path or os.path.isabs(path):
        return path
    return os.path.abspath(os.path.join(base_dir or os.getcwd(), path))


def _check_keys(d: Mapping, known: Sequence[str], where: str) -> None:
    if not isinstance(d, Mapping):
        raise SpecError(f"{where}: expected a mapping, got {type(d).__name__} {d!r}")
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")


def _as_bool(value, where: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"{where}: expected true/false, got {value!r}")
    return value


def _as_int(value, where: str, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{where}: expected an integer, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise SpecError(f"{where}: {value} outside [{lo}, {hi if hi is not None else 'inf'}]")
    return value


@dataclasses.dataclass
class AUTableSpec:
    path: str
    key: str = "stem"
    id_column: Optional[str] = None
    intensity_max: Union[str, float] = "auto"
    missing: str = "keep"        # a sample without a row: keep (no AUs) | quarantine

    FIELDS = ("path", "key", "id_column", "intensity_max", "missing")

    @classmethod
    def from_value(cls, value, base_dir: Optional[str], where: str) -> "AUTableSpec":
        if isinstance(value, str):
            value = {"path": value}
        _check_keys(value, cls.FIELDS, where)
        if not isinstance(value.get("path"), str) or not value["path"]:
            raise SpecError(f"{where}.path: an AU table path is required")
        key = value.get("key", "stem")
        if key not in AU_KEYS:
            raise SpecError(f"{where}.key: {key!r} is not one of {list(AU_KEYS)}")
        im = value.get("intensity_max", "auto")
        if im != "auto" and (isinstance(im, bool) or not isinstance(im, (int, float)) or im <= 0):
            raise SpecError(f"{where}.intensity_max: 'auto' or a positive number, got {im!r}")
        missing = value.get("missing", "keep")
        if missing not in readers.MISSING_ROW:
            raise SpecError(f"{where}.missing: one of {list(readers.MISSING_ROW)}, "
                            f"got {missing!r}")
        return cls(path=_resolve(value["path"], base_dir), key=key,
                   id_column=value.get("id_column"), intensity_max=im, missing=missing)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.FIELDS}


@dataclasses.dataclass
class SourceSpec:
    reader: str
    path: Optional[str] = None
    dataset: Optional[str] = None
    domain: str = ""
    label_set: Optional[List[str]] = None
    au_table: Optional[AUTableSpec] = None
    aligned: bool = False
    options: Dict[str, Any] = dataclasses.field(default_factory=dict)

    FIELDS = ("reader", "path", "dataset", "domain", "label_set", "au_table", "aligned",
              "options")

    @classmethod
    def from_dict(cls, d: Mapping, base_dir: Optional[str], where: str) -> "SourceSpec":
        _check_keys(d, cls.FIELDS, where)
        reader = d.get("reader")
        known = reader_types()
        if reader not in known:
            raise SpecError(f"{where}.reader: unknown reader {reader!r}; one of {list(known)}")
        path = d.get("path")
        if reader in readers.PATHLESS_READERS:
            if path is not None:
                raise SpecError(f"{where}.path: a synthetic source has no path "
                                "(its settings go in options)")
        else:
            if not isinstance(path, str) or not path:
                raise SpecError(f"{where}.path: a path is required for reader {reader!r}")
            path = _resolve(path, base_dir)
        dataset = d.get("dataset")
        if dataset is None and reader == "synthetic":
            dataset = SYNTHETIC_DATASET
        if dataset is None and reader not in readers.NAMING_READERS:
            raise SpecError(f"{where}.dataset: a dataset name is required")
        if dataset is not None and (not isinstance(dataset, str) or not dataset.strip()
                                    or "/" in dataset):
            raise SpecError(f"{where}.dataset: a non-empty name without '/', got {dataset!r}")
        domain = d.get("domain") or ""
        if not isinstance(domain, str):
            raise SpecError(f"{where}.domain: expected a string, got {domain!r}")
        label_set = d.get("label_set")
        if label_set is not None:
            if isinstance(label_set, str) or not isinstance(label_set, Sequence) or not label_set:
                raise SpecError(f"{where}.label_set: a non-empty list of emotions, "
                                f"got {label_set!r}")
            names = []
            for e in label_set:
                try:
                    idx = e if isinstance(e, int) and not isinstance(e, bool) else \
                        contract.canonical_emotion(e)
                    names.append(contract.EMOTIONS[idx])
                except (contract.ContractError, IndexError, TypeError):
                    raise SpecError(f"{where}.label_set: unknown emotion {e!r}; known: "
                                    f"{list(contract.EMOTIONS)}") from None
            label_set = [e for e in contract.EMOTIONS if e in names]
        au = d.get("au_table")
        au = AUTableSpec.from_value(au, base_dir, f"{where}.au_table") if au else None
        aligned = _as_bool(d.get("aligned", False), f"{where}.aligned")
        options = dict(d.get("options") or {})
        if not isinstance(d.get("options") or {}, Mapping):
            raise SpecError(f"{where}.options: expected a mapping, got {d.get('options')!r}")
        for name in _TOP_LEVEL_OPTIONS:
            if name in options:
                raise SpecError(f"{where}.options.{name}: set {name!r} on the source itself, "
                                "not in options")
        allowed = readers.reader_options(reader)
        if allowed is not None:
            bad = sorted(set(options) - set(allowed))
            if bad:
                raise SpecError(f"{where}.options: reader {reader!r} takes no option(s) {bad}; "
                                f"known: {sorted(set(allowed) - set(_TOP_LEVEL_OPTIONS))}")
        if reader == "synthetic" and "domains" in options:
            if isinstance(options["domains"], str):
                options["domains"] = [options["domains"]]
            options["domains"] = list(options["domains"])
        if reader == "tfrecord" and options.get("compression") not in (
                None, "", *tfrecord.COMPRESSIONS):
            raise SpecError(f"{where}.options.compression: one of "
                            f"{', '.join(tfrecord.COMPRESSIONS)}, got {options['compression']!r}")
        return cls(reader=reader, path=path, dataset=dataset, domain=domain,
                   label_set=label_set, au_table=au, aligned=aligned, options=options)

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in self.FIELDS}
        out["au_table"] = self.au_table.to_dict() if self.au_table else None
        return out

    def dataset_names(self) -> List[str]:
        """Dataset names this source's samples carry (reads a tfrecord source
        without a ``dataset`` to find them)."""
        return readers.dataset_names(self.reader, self.path, self.dataset, self.options)

    @property
    def name(self) -> str:
        """Short label for logs and metrics."""
        return self.dataset or os.path.basename(str(self.path).rstrip("/")) or self.reader


@dataclasses.dataclass
class SplitSpec:
    eval_fraction: float = 0.2
    seed: int = 0
    use_source_split: bool = False
    kfold: Optional[Tuple[int, Optional[int]]] = None   # (k, eval fold or None)

    FIELDS = ("eval_fraction", "seed", "use_source_split", "kfold")

    @classmethod
    def from_dict(cls, d: Optional[Mapping], where: str = "split") -> "SplitSpec":
        d = {} if d is None else d
        _check_keys(d, cls.FIELDS, where)
        frac = d.get("eval_fraction", 0.2)
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac < 1:
            raise SpecError(f"{where}.eval_fraction: a number in (0, 1), got {frac!r}")
        seed = _as_int(d.get("seed", 0), f"{where}.seed")
        use_source = _as_bool(d.get("use_source_split", False), f"{where}.use_source_split")
        kfold = d.get("kfold")
        if kfold is not None:
            if isinstance(kfold, (list, tuple)) and len(kfold) == 2:
                kfold = {"k": kfold[0], "fold": kfold[1]}
            _check_keys(kfold, ("k", "fold"), f"{where}.kfold")
            if "k" not in kfold:
                raise SpecError(f"{where}.kfold: k is required, e.g. {{k: 10}} (every example "
                                "gets its fold) or {k: 10, fold: 3} (and eval = fold 3)")
            k = _as_int(kfold["k"], f"{where}.kfold.k", 2)
            fold = kfold.get("fold")
            if fold is not None:
                fold = _as_int(fold, f"{where}.kfold.fold", 0, k - 1)
            kfold = (k, fold)
        return cls(eval_fraction=float(frac), seed=seed, use_source_split=use_source,
                   kfold=kfold)

    @property
    def eval_fold(self) -> Optional[int]:
        """The fold that is the eval split (None: eval_fraction decides)."""
        return None if self.kfold is None else self.kfold[1]

    def to_dict(self) -> dict:
        kfold = None
        if self.kfold is not None:
            kfold = {"k": self.kfold[0]}
            if self.kfold[1] is not None:
                kfold["fold"] = self.kfold[1]
        return {"eval_fraction": self.eval_fraction, "seed": self.seed,
                "use_source_split": self.use_source_split, "kfold": kfold}

    def describe(self) -> str:
        hashed = f"eval_fraction {self.eval_fraction:g} by subject (seed {self.seed})"
        if self.kfold and self.eval_fold is not None:
            what = f"eval = fold {self.eval_fold}"
        else:
            what = hashed
        if self.use_source_split:
            what = "the sources' own splits, else " + what
        if self.kfold:
            what = (f"stratified subject-disjoint {self.kfold[0]}-fold (seed {self.seed}), "
                    + what)
        return what


@dataclasses.dataclass
class DataSpec:
    sources: List[SourceSpec]
    split: SplitSpec = dataclasses.field(default_factory=SplitSpec)
    image_size: int = 64
    detector: str = "haar"
    max_per_source: Optional[int] = None

    FIELDS = ("sources", "split", "image_size", "detector", "max_per_source")

    # --- construction ------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping, base_dir: Optional[str] = None) -> "DataSpec":
        """Validate a spec mapping; relative paths resolve against ``base_dir``
        (default: the working directory)."""
        _check_keys(d, cls.FIELDS, "data spec")
        sources = d.get("sources")
        if not isinstance(sources, Sequence) or isinstance(sources, str) or not sources:
            raise SpecError("sources: a non-empty list of sources is required")
        parsed = [SourceSpec.from_dict(s, base_dir, f"sources[{i}]")
                  for i, s in enumerate(sources)]
        split = SplitSpec.from_dict(d.get("split"))
        size = _as_int(d.get("image_size", 64), "image_size", 16, 512)
        detector = d.get("detector", "haar")
        if detector not in DETECTORS:
            raise SpecError(f"detector: {detector!r} is not one of {list(DETECTORS)}")
        cap = d.get("max_per_source")
        if cap is not None:
            cap = _as_int(cap, "max_per_source", 1)
        return cls(sources=parsed, split=split, image_size=size, detector=detector,
                   max_per_source=cap)

    @classmethod
    def from_yaml(cls, path: str) -> "DataSpec":
        if not os.path.exists(path):
            raise SpecError(f"data spec file not found: {path}")
        with open(path) as f:
            raw = yaml.safe_load(f)
        if not isinstance(raw, Mapping):
            raise SpecError(f"{path}: a data spec must be a YAML mapping")
        try:
            return cls.from_dict(raw, os.path.dirname(os.path.abspath(path)))
        except SpecError as err:
            raise SpecError(f"{path}: {err}") from None

    @classmethod
    def from_json(cls, text: str) -> "DataSpec":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise SpecError(f"data spec JSON does not parse: {err}") from None
        return cls.from_dict(raw, None)

    @classmethod
    def load(cls, spec: Union["DataSpec", Mapping, str]) -> "DataSpec":
        """A spec from a :class:`DataSpec`, a mapping, a JSON string or a YAML path."""
        if isinstance(spec, DataSpec):
            return spec
        if isinstance(spec, Mapping):
            return cls.from_dict(spec)
        if isinstance(spec, (str, os.PathLike)):
            text = str(spec)
            if text.lstrip().startswith("{"):
                return cls.from_json(text)
            return cls.from_yaml(text)
        raise SpecError(f"a data spec is a DataSpec, mapping, JSON string or YAML path; "
                        f"got {type(spec).__name__}")

    # --- output ------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"sources": [s.to_dict() for s in self.sources], "split": self.split.to_dict(),
                "image_size": self.image_size, "detector": self.detector,
                "max_per_source": self.max_per_source}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    # --- queries -----------------------------------------------------------
    def dataset_names(self) -> List[str]:
        """Dataset names of all sources, in source order, without repeats."""
        names: List[str] = []
        for s in self.sources:
            for n in s.dataset_names():
                if n not in names:
                    names.append(n)
        return names

    def label_sets(self) -> Dict[str, Optional[List[str]]]:
        """Emotion label set of each dataset named in the spec (None: the
        reader's own, e.g. the classes found in a class-folder tree)."""
        out: Dict[str, Optional[List[str]]] = {}
        for s in self.sources:
            ls = s.label_set
            if ls is None and s.reader == "synthetic":
                ls = list(contract.EMOTIONS)  # generate() labels with the full set
            for n in s.dataset_names():
                out.setdefault(n, ls)
        return out
