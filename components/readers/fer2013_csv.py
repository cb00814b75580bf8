"""Reader for the original FER2013 CSV (``fer2013.csv`` of the Kaggle challenge).

One face per row, 48x48 grayscale pixels row-major as space-separated ints::

    emotion,pixels,Usage
    0,70 80 82 72 58 58 60 63 54 58 ... (2304 values),Training

``emotion`` is 0..6 in FER2013's order (angry, disgust, fear, happy, sad,
surprise, neutral), which is the order of :data:`contract.BASIC7`. ``Usage``
Training -> train, PublicTest -> val, PrivateTest -> test. The ``Usage``
column may be missing (Kaggle's ``train.csv``: split ""), and so may
``emotion`` (Kaggle's ``test.csv``: no emotion label).
"""

from __future__ import annotations

import csv
import pathlib
from typing import Iterator

import numpy as np

from components import contract
from components.quarantine import Quarantine
from components.readers import _common

# FER2013 labels exactly the seven basic emotions, indices 0..6.
_LABEL_SET = contract.label_set_mask(contract.BASIC7)


def _columns(header, path) -> dict:
    """Index of the emotion / pixels / usage columns (case-insensitive)."""
    names = [h.strip().lower() for h in header]
    if "pixels" not in names:
        raise _common.EmptySourceError(
            f"fer2013_csv: {str(path)!r} is not a FER2013 CSV: header {header!r} has no "
            "'pixels' column (expected 'emotion,pixels,Usage')")
    return {k: names.index(k) if k in names else None for k in ("emotion", "pixels", "usage")}


def _parse_pixels(text: str, size: int):
    """(pixels, None) or (None, (reason, detail)) for one ``pixels`` cell."""
    tokens = text.split()
    want = size * size
    if len(tokens) < want:
        return None, ("short_pixel_row", f"{len(tokens)} pixel values, expected {want}")
    if len(tokens) > want:
        return None, ("long_pixel_row", f"{len(tokens)} pixel values, expected {want}")
    try:
        values = np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError):
        bad = next((t for t in tokens if not t.lstrip("+-").isdigit()), "?")
        return None, ("non_integer_pixel", f"pixel value {bad!r} is not an integer")
    if values.min() < 0 or values.max() > 255:
        bad = values[(values < 0) | (values > 255)][0]
        return None, ("pixel_out_of_range", f"pixel value {bad} outside 0-255")
    return values.astype(np.uint8).reshape(size, size), None


def read_fer2013_csv(path, dataset: str, quarantine: Quarantine, *,
                     domain: str = "",
                     image_size: int = 48,
                     progress: bool = False) -> Iterator[contract.FaceSample]:
    """Yield one sample per row of a FER2013 CSV.

    ``uid`` is ``<dataset>/<csv file name>/<line number>``; every rejected row is
    quarantined as ``<path>:<line number>`` with reason ``short_pixel_row``,
    ``long_pixel_row``, ``non_integer_pixel``, ``pixel_out_of_range``,
    ``bad_emotion_index``, ``unknown_usage``, ``malformed_row`` (wrong number
    of cells) or ``image_too_small`` (``image_size`` under
    :data:`_common.MIN_FACE_SIZE`).

    Raises:
      EmptySourceError: not a file, no ``pixels`` column, or no usable row.
    """
    csv_path = pathlib.Path(path)
    if not csv_path.is_file():
        raise _common.EmptySourceError(f"fer2013_csv: {str(path)!r} is not a file")
    with open(csv_path, newline="") as f:
        header = next(csv.reader(f), None)
    if header is None:
        raise _common.EmptySourceError(f"fer2013_csv: {str(path)!r} is empty")
    col = _columns(header, path)

    def samples():
        with open(csv_path, newline="") as f:
            reader = csv.reader(f)
            next(reader)  # header
            rows = _common.progress(reader, progress, desc=f"{dataset} rows", unit="row")
            for row in rows:
                line = reader.line_num
                where = f"{csv_path}:{line}"
                if not any(cell.strip() for cell in row):
                    continue  # blank line (e.g. trailing newline), not a sample
                if len(row) != len(header):
                    quarantine.add(where, "malformed_row",
                                   f"{len(row)} cells, header has {len(header)}")
                    continue
                emotion = -1
                if col["emotion"] is not None:
                    cell = row[col["emotion"]].strip()
                    if not (cell.isdigit() and int(cell) < len(contract.BASIC7)):
                        quarantine.add(where, "bad_emotion_index",
                                       f"emotion {cell!r} is not 0..{len(contract.BASIC7) - 1}")
                        continue
                    emotion = int(cell)
                split = ""
                if col["usage"] is not None and row[col["usage"]].strip():
                    split = _common.split_name(row[col["usage"]])
                    if split is None:
                        quarantine.add(where, "unknown_usage",
                                       f"Usage {row[col['usage']]!r} is not Training/"
                                       "PublicTest/PrivateTest")
                        continue
                pixels, error = _parse_pixels(row[col["pixels"]], image_size)
                if error:
                    quarantine.add(where, *error)
                    continue
                if _common.too_small(image_size, image_size, where, quarantine):
                    continue
                yield contract.FaceSample(
                    image=contract.encode_png(pixels), dataset=dataset,
                    uid=f"{dataset}/{csv_path.name}/{line}", emotion=emotion,
                    emotion_mask=_LABEL_SET.copy() if emotion >= 0 else np.zeros(
                        contract.NUM_EMOTIONS, np.float32),
                    domain=domain, split=split)

    return _common.non_empty(samples(), "fer2013_csv", path, quarantine)
