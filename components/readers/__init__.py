"""Dataset readers: raw dataset formats -> contract :class:`FaceSample` streams.

Every reader has the signature ``reader(path, dataset, quarantine, **options)``
(options keyword-only), yields samples with grayscale PNG images at their
original size, records each rejected input in the :class:`Quarantine` with a
reason (an image under 16 x 16 pixels is ``image_too_small``), and raises
:class:`EmptySourceError` when nothing usable is found.

=================  =============================================================
type name          reads
=================  =============================================================
``class_folders``  ``root/[split/]<class>/*.jpg`` (FER2013 images, CK+48)
``fer2013_csv``    ``fer2013.csv`` (``emotion,pixels,Usage``)
``jaffe``          JAFFE ``KA.AN1.39.tiff`` images
``pts_landmarks``  300-W / iBUG ``.pts`` + image pairs
``tfrecord``       contract TFRecords (``dataset`` None keeps the recorded names)
``synthetic``      :func:`components.synthetic.generate` (no path)
=================  =============================================================

AU labels come from a separate table joined by id: :func:`join_au_table`.
"""

from __future__ import annotations

import csv
import inspect
import os
import pathlib
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

from components import contract, synthetic
from components.quarantine import Quarantine
from components.readers._common import EmptySourceError, split_name
from components.readers.au_table import (JOIN_KEYS, MISSING_ROW, AUTable, join_au_table,
                                         read_au_table, sample_key)
from components.readers.class_folders import read_class_folders
from components.readers.fer2013_csv import read_fer2013_csv
from components.readers.jaffe import JAFFE_NAME, read_jaffe
from components.readers.pts_landmarks import parse_pts, read_pts_landmarks
from components.readers.synthetic_faces import read_synthetic, synthetic_dataset_names
from components.readers.tfrecord import read_tfrecord, recorded_dataset_names

READERS: Dict[str, Callable[..., Iterator[contract.FaceSample]]] = {
    "class_folders": read_class_folders,
    "fer2013_csv": read_fer2013_csv,
    "jaffe": read_jaffe,
    "pts_landmarks": read_pts_landmarks,
    "tfrecord": read_tfrecord,
    "synthetic": read_synthetic,
}
# Readers that take no path (their options say what to generate).
PATHLESS_READERS: Tuple[str, ...] = ("synthetic",)
# Readers that name samples without a ``dataset`` (the names in their input).
NAMING_READERS: Tuple[str, ...] = ("tfrecord", "synthetic")
# Readers passing ``**options`` on: these functions define the options.
_OPTIONS_OF = {"synthetic": synthetic.generate}
# A reader's leading arguments, which are no options.
_READER_ARGS = ("path", "dataset", "quarantine")

__all__ = ["READERS", "PATHLESS_READERS", "NAMING_READERS", "JOIN_KEYS", "MISSING_ROW",
           "read_source", "detect_reader",
           "reader_options", "dataset_names", "join_au_table", "read_au_table",
           "AUTable", "EmptySourceError", "sample_key", "parse_pts",
           "read_class_folders", "read_fer2013_csv", "read_jaffe", "read_pts_landmarks",
           "read_tfrecord", "read_synthetic"]


def reader_options(reader: str) -> Optional[Tuple[str, ...]]:
    """Keyword options ``reader`` accepts (None: any). ``progress`` is always
    accepted."""
    if reader not in READERS:
        raise ValueError(f"unknown reader {reader!r}; one of {sorted(READERS)}")
    params = inspect.signature(_OPTIONS_OF.get(reader, READERS[reader])).parameters.values()
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    names = tuple(p.name for p in params if p.name not in _READER_ARGS and p.kind in (
        p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
    return names if "progress" in names else names + ("progress",)


def dataset_names(reader: str, path: Optional[str], dataset: Optional[str],
                  options: Mapping) -> List[str]:
    """Dataset names the samples of a source carry (a ``tfrecord`` source
    without ``dataset`` is read to find them)."""
    if reader == "synthetic":
        return synthetic_dataset_names(dataset, options)
    if dataset:
        return [dataset]
    if reader == "tfrecord":
        return recorded_dataset_names(str(path), options.get("compression"))
    raise ValueError(f"reader {reader!r} needs a dataset name")


def read_source(reader: str, path: str, dataset: str, quarantine: Quarantine, *,
                au_table: Optional[str] = None,
                au_key: str = "stem",
                au_id_column: Optional[str] = None,
                au_intensity_max: Union[str, float] = "auto",
                au_missing: str = "keep",
                **options) -> Iterator[contract.FaceSample]:
    """Samples of one source, as an ingestion spec names it.

    Args:
      reader: a key of :data:`READERS`.
      path: the source file or folder.
      dataset: dataset name written into every sample.
      quarantine: collects every rejected input with its reason.
      au_table: optional AU CSV joined onto the samples (:func:`join_au_table`
        with ``key=au_key``, ``id_column=au_id_column``,
        ``intensity_max=au_intensity_max``, ``missing=au_missing``). A table
        kept inside a class-folder tree (CK+'s ``facs.csv``) is no input of it.
      **options: the reader's keyword options (``domain``, ``progress``,
        ``label_set`` ...).

    Raises:
      ValueError: unknown reader type or option.
      EmptySourceError: the source has no usable input.
    """
    if reader not in READERS:
        raise ValueError(f"unknown reader {reader!r}; one of {sorted(READERS)}")
    if not dataset and reader not in NAMING_READERS:
        raise ValueError("a dataset name is required")
    if au_table and reader == "class_folders" and path and _inside(au_table, path):
        options["exclude"] = list(options.get("exclude", ())) + [
            os.path.relpath(os.path.abspath(au_table), os.path.abspath(path))]
    try:
        samples = READERS[reader](path, dataset, quarantine, **options)
    except TypeError as err:  # an option the reader does not take
        raise ValueError(f"reader {reader!r}: {err}") from err
    if au_table:
        samples = join_au_table(samples, au_table, quarantine, key=au_key,
                                id_column=au_id_column, intensity_max=au_intensity_max,
                                missing=au_missing)
    return samples


def _inside(file, folder) -> bool:
    file, folder = os.path.abspath(file), os.path.abspath(folder)
    return os.path.commonpath([file, folder]) == folder


def _is_class_tree(root: pathlib.Path) -> bool:
    """True when ``root`` has class folders, directly or under split folders."""
    def is_class(name: str) -> bool:
        try:
            contract.canonical_emotion(name)
            return True
        except contract.ContractError:
            return False

    for entry in root.iterdir():
        if not entry.is_dir():
            continue
        if is_class(entry.name):
            return True
        if split_name(entry.name) and any(
                sub.is_dir() and is_class(sub.name) for sub in entry.iterdir()):
            return True
    return False


def detect_reader(path) -> str:
    """Reader type of a raw source by its look (see the module table).

    Raises ValueError when it matches none of them.
    """
    source = pathlib.Path(path)
    if source.is_file():
        if source.suffix.lower() == ".csv":
            with open(source, newline="") as f:
                header = [h.strip().lower() for h in next(csv.reader(f), [])]
            if "pixels" in header:
                return "fer2013_csv"
            raise ValueError(f"{str(path)!r}: a CSV without a 'pixels' column is no "
                             "FER2013 CSV (an AU table is joined with --au-table)")
        raise ValueError(f"{str(path)!r}: cannot tell the format of this file")
    if not source.is_dir():
        raise ValueError(f"{str(path)!r} does not exist")
    if _is_class_tree(source):
        return "class_folders"
    images = jaffe_named = 0
    for dirpath, _, filenames in os.walk(source):
        for name in filenames:
            p = pathlib.Path(name)
            if p.suffix.lower() == ".pts":
                return "pts_landmarks"
            if p.suffix.lower() in (".tif", ".tiff", ".png", ".jpg", ".bmp"):
                images += 1
                jaffe_named += bool(JAFFE_NAME.match(p.stem))
    if images and jaffe_named * 2 > images:
        return "jaffe"
    raise ValueError(f"{str(path)!r}: cannot tell the dataset format (no class folders, "
                     f".pts files or JAFFE-named images); pass the reader type explicitly "
                     f"(one of {sorted(READERS)})")
