"""Dataset readers: raw dataset formats -> contract :class:`FaceSample` streams.

Every reader has the signature ``reader(path, dataset, quarantine, **options)``
(options keyword-only), yields samples with grayscale PNG images at their
original size, records each rejected input in the :class:`Quarantine` with a
reason, and raises :class:`EmptySourceError` when nothing usable is found.

=================  =============================================================
type name          reads
=================  =============================================================
``class_folders``  ``root/[split/]<class>/*.jpg`` (FER2013 images, CK+48)
``fer2013_csv``    ``fer2013.csv`` (``emotion,pixels,Usage``)
``jaffe``          JAFFE ``KA.AN1.39.tiff`` images
``pts_landmarks``  300-W / iBUG ``.pts`` + image pairs
=================  =============================================================

AU labels come from a separate table joined by id: :func:`join_au_table`.
"""

from __future__ import annotations

import csv
import os
import pathlib
from typing import Callable, Dict, Iterator, Optional, Union

from components import contract
from components.quarantine import Quarantine
from components.readers._common import EmptySourceError, split_name
from components.readers.au_table import AUTable, join_au_table, read_au_table, sample_key
from components.readers.class_folders import read_class_folders
from components.readers.fer2013_csv import read_fer2013_csv
from components.readers.jaffe import JAFFE_NAME, read_jaffe
from components.readers.pts_landmarks import parse_pts, read_pts_landmarks

READERS: Dict[str, Callable[..., Iterator[contract.FaceSample]]] = {
    "class_folders": read_class_folders,
    "fer2013_csv": read_fer2013_csv,
    "jaffe": read_jaffe,
    "pts_landmarks": read_pts_landmarks,
}

__all__ = ["READERS", "read_source", "detect_reader", "join_au_table", "read_au_table",
           "AUTable", "EmptySourceError", "sample_key", "parse_pts",
           "read_class_folders", "read_fer2013_csv", "read_jaffe", "read_pts_landmarks"]


def read_source(reader: str, path: str, dataset: str, quarantine: Quarantine, *,
                au_table: Optional[str] = None,
                au_key: str = "stem",
                au_id_column: Optional[str] = None,
                au_intensity_max: Union[str, float] = "auto",
                **options) -> Iterator[contract.FaceSample]:
    """Samples of one source, as an ingestion spec names it.

    Args:
      reader: a key of :data:`READERS`.
      path: the source file or folder.
      dataset: dataset name written into every sample.
      quarantine: collects every rejected input with its reason.
      au_table: optional AU CSV joined onto the samples (:func:`join_au_table`
        with ``key=au_key``, ``id_column=au_id_column``,
        ``intensity_max=au_intensity_max``).
      **options: the reader's keyword options (``domain``, ``progress``,
        ``label_set`` ...).

    Raises:
      ValueError: unknown reader type or option.
      EmptySourceError: the source has no usable input.
    """
    if reader not in READERS:
        raise ValueError(f"unknown reader {reader!r}; one of {sorted(READERS)}")
    if not dataset:
        raise ValueError("a dataset name is required")
    try:
        samples = READERS[reader](path, dataset, quarantine, **options)
    except TypeError as err:  # an option the reader does not take
        raise ValueError(f"reader {reader!r}: {err}") from err
    if au_table:
        samples = join_au_table(samples, au_table, quarantine, key=au_key,
                                id_column=au_id_column, intensity_max=au_intensity_max)
    return samples


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
