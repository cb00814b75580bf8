"""Action-unit label tables (DISFA/BP4D-style exports, OpenFace-like CSVs) and
their join onto samples of any reader.

A CSV with one id column (default: the first) and one column per AU; the AU
column names may be ``AU12``, ``au12``, ``AU12_r`` or ``12``::

    file,AU1,AU2,AU4,AU12,AU25
    S005_001_00000011,0,0,1,,1
    S010_004_00000017,1,1,0,0,0

Values are occurrences (0/1) or FACS intensities (0-5). A blank cell (or
``NA``/``NaN``) means "not labelled" and gives mask 0. A column named like an
AU the contract lacks (``AU43``) is reported in the quarantine as
``au_not_in_contract`` (never dropped silently); other columns (``frame``,
``confidence``) are ignored with a log warning.

CK+'s ``facs.csv`` has one row per *sequence* (``S010_002,1,1,0,...``): join it
with ``key="sequence"`` and the row covers every frame of that sequence.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import pathlib
import re
from typing import Dict, Iterable, Iterator, List, Optional, Union

import numpy as np

from components import contract
from components.quarantine import Quarantine
from components.readers import _common

log = logging.getLogger(__name__)

# Cells that mean "this AU is not labelled for this row".
_MISSING = {"", "na", "nan", "n/a"}
# Keys a table id can be matched on: the sample's full uid, its path relative
# to the source root, that path's file stem, or the sample's sequence.
JOIN_KEYS = ("stem", "path", "uid", "sequence")
# What happens to a sample without a table row: kept with no AU label (and
# counted in a warning), or quarantined as ``no_au_row``.
MISSING_ROW = ("keep", "quarantine")
_AU_NAME = re.compile(r"^AU(\d+)", re.IGNORECASE)


@dataclasses.dataclass
class AUTable:
    """AU labels per id, values already scaled to [0, 1]."""

    path: str
    aus: Dict[str, np.ndarray]        # id -> float32[NUM_AUS] in [0, 1]
    masks: Dict[str, np.ndarray]      # id -> float32[NUM_AUS] 0/1
    lines: Dict[str, int]             # id -> CSV line number (for reports)
    intensity_max: float              # the scale the raw values were divided by
    columns: Dict[str, int]           # CSV column -> index in contract.AUS
    ignored_columns: List[str]

    def __len__(self) -> int:
        return len(self.aus)


def _au_columns(header: List[str], id_col: int, path,
                quarantine: Quarantine) -> Dict[int, int]:
    """CSV column index -> index in :data:`contract.AUS`. AU columns the
    contract lacks are quarantined as ``au_not_in_contract``."""
    mapping, seen, ignored = {}, {}, []
    for i, name in enumerate(header):
        if i == id_col:
            continue
        try:
            au = contract.au_index(name)
        except contract.ContractError:
            if _AU_NAME.match(name.strip()):
                quarantine.add(f"{path}:1", "au_not_in_contract",
                               f"column {name!r}: not one of {', '.join(contract.AU_NAMES)}")
            else:
                ignored.append(name)
            continue
        if au in seen:
            raise ValueError(
                f"AU table {str(path)!r}: columns {header[seen[au]]!r} and {name!r} both hold "
                f"{contract.AU_NAMES[au]} (e.g. OpenFace _r and _c); keep one column")
        seen[au] = i
        mapping[i] = au
    if not mapping:
        raise ValueError(f"AU table {str(path)!r}: no AU column in header {header!r} "
                         f"(known AUs: {', '.join(contract.AU_NAMES)})")
    if ignored:
        log.warning("AU table %s: ignoring columns that are no AU: %s",
                    path, ", ".join(ignored))
    return mapping


def read_au_table(path, quarantine: Quarantine, *,
                  id_column: Optional[str] = None,
                  intensity_max: Union[str, float] = "auto",
                  delimiter: str = ",") -> AUTable:
    """Read an AU CSV (format in the module docstring).

    Args:
      path: the CSV file.
      quarantine: rows rejected as ``au_out_of_range`` (value < 0 or above
        ``intensity_max``), ``non_numeric_au``, ``missing_id``, ``duplicate_id``
        or ``malformed_row`` are recorded as ``<path>:<line>``; AU columns the
        contract lacks as ``au_not_in_contract`` (``<path>:1``).
      id_column: name of the id column (case-insensitive); default the first.
      intensity_max: the value that means "maximal": 1 for occurrence labels,
        5 for FACS intensities A-E. ``"auto"``: 5 if any value exceeds 1, else 1.
      delimiter: CSV delimiter.

    Raises:
      ValueError: no such file / id column, no AU column, two columns for one AU.
    """
    csv_path = pathlib.Path(path)
    if not csv_path.is_file():
        raise ValueError(f"AU table {str(path)!r} is not a file")
    with open(csv_path, newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = [h.strip() for h in next(reader, [])]
        if not header:
            raise ValueError(f"AU table {str(path)!r} is empty")
        if id_column is None:
            id_col = 0
        else:
            lowered = [h.lower() for h in header]
            if id_column.lower() not in lowered:
                raise ValueError(f"AU table {str(path)!r} has no id column {id_column!r}; "
                                 f"header: {header!r}")
            id_col = lowered.index(id_column.lower())
        au_cols = _au_columns(header, id_col, path, quarantine)

        raw = {}  # id -> (line, values with NaN for missing)
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            line = reader.line_num
            where = f"{csv_path}:{line}"
            if len(row) != len(header):
                quarantine.add(where, "malformed_row",
                               f"{len(row)} cells, header has {len(header)}")
                continue
            row_id = row[id_col].strip()
            if not row_id:
                quarantine.add(where, "missing_id", f"blank {header[id_col]!r}")
                continue
            values = np.full(contract.NUM_AUS, np.nan)
            error = None
            for col, au in au_cols.items():
                cell = row[col].strip()
                if cell.lower() in _MISSING:
                    continue
                try:
                    value = float(cell)
                except ValueError:
                    error = ("non_numeric_au", f"{header[col]}={cell!r}")
                    break
                if value < 0 or not math.isfinite(value):
                    error = ("au_out_of_range", f"{header[col]}={cell} is negative or infinite")
                    break
                values[au] = value
            if error:
                quarantine.add(where, *error)
                continue
            if row_id in raw:
                quarantine.add(where, "duplicate_id",
                               f"id {row_id!r} already on line {raw[row_id][0]}")
                continue
            raw[row_id] = (line, values)

    # The scale needs every value, so range checks come after reading.
    if intensity_max == "auto":
        top = max((np.nanmax(v) for _, v in raw.values() if not np.isnan(v).all()), default=0.0)
        scale = 5.0 if top > 1.0 else 1.0
    else:
        scale = float(intensity_max)
        if scale <= 0:
            raise ValueError(f"intensity_max must be > 0 or 'auto', got {intensity_max!r}")
    names = {au: header[col] for col, au in au_cols.items()}
    table = AUTable(path=str(path), aus={}, masks={}, lines={}, intensity_max=scale,
                    columns={header[c]: au for c, au in au_cols.items()},
                    ignored_columns=[h for i, h in enumerate(header)
                                     if i != id_col and i not in au_cols])
    for row_id, (line, values) in raw.items():
        known = ~np.isnan(values)
        over = known & (np.nan_to_num(values) > scale)
        if over.any():
            au = int(np.argmax(over))
            quarantine.add(f"{csv_path}:{line}", "au_out_of_range",
                           f"{names[au]}={values[au]:g} above intensity_max {scale:g}")
            continue
        table.aus[row_id] = np.where(known, values / scale, 0.0).astype(np.float32)
        table.masks[row_id] = known.astype(np.float32)
        table.lines[row_id] = line
    return table


def sample_key(sample: contract.FaceSample, key: str) -> str:
    """The id of ``sample`` an AU table is matched on (see :data:`JOIN_KEYS`)."""
    if key == "uid":
        return sample.uid
    if key == "sequence":
        return sample.sequence
    prefix = sample.dataset + "/"
    rel = sample.uid[len(prefix):] if sample.uid.startswith(prefix) else sample.uid
    if key == "path":
        return rel
    if key == "stem":
        return pathlib.PurePosixPath(rel).stem if _has_image_suffix(rel) else \
            pathlib.PurePosixPath(rel).name
    raise ValueError(f"unknown join key {key!r}; one of {JOIN_KEYS}")


def _has_image_suffix(name: str) -> bool:
    return pathlib.PurePosixPath(name).suffix.lower() in _common.IMAGE_EXTENSIONS


def _table_key(row_id: str, key: str) -> str:
    """Normalize a table id the way :func:`sample_key` names samples."""
    row_id = row_id.strip()
    if key in ("uid", "sequence"):
        return row_id
    row_id = row_id.replace("\\", "/")
    while row_id.startswith("./"):
        row_id = row_id[2:]
    if key == "stem":
        path = pathlib.PurePosixPath(row_id)
        # "KA.AN1.39" is a stem already; only an image extension is dropped.
        return path.stem if _has_image_suffix(row_id) else path.name
    return row_id


def join_au_table(samples: Iterable[contract.FaceSample], table, quarantine: Quarantine, *,
                  key: str = "stem",
                  id_column: Optional[str] = None,
                  intensity_max: Union[str, float] = "auto",
                  delimiter: str = ",",
                  missing: str = "keep") -> Iterator[contract.FaceSample]:
    """Attach AU values + mask from an AU table to samples of any reader.

    Each sample is matched by ``key`` (``"stem"``: file name without image
    extension, ``"path"``: path relative to the source root, ``"uid"``,
    ``"sequence"``: one row labels every frame of its sequence). A matched
    sample gets the table's values where the table knows them (mask 1). A
    sample without a row: ``missing="keep"`` keeps it with its AUs (zero mask
    unless set before) and a warning gives their number and the first ones;
    ``missing="quarantine"`` quarantines it as ``no_au_row``. Table rows that
    match no sample are recorded in ``quarantine`` as ``unmatched_au_row`` once
    the samples are exhausted.

    Args:
      samples: any iterable of samples (e.g. a reader's output).
      table: path of the AU CSV, or an :class:`AUTable` already read.
      quarantine: receives the table's rejected rows and the unmatched ones.
      key, id_column, intensity_max, delimiter: see above and :func:`read_au_table`.
      missing: ``"keep"`` or ``"quarantine"`` (see above).
    """
    if key not in JOIN_KEYS:
        raise ValueError(f"unknown join key {key!r}; one of {JOIN_KEYS}")
    if missing not in MISSING_ROW:
        raise ValueError(f"missing: one of {MISSING_ROW}, got {missing!r}")
    if not isinstance(table, AUTable):
        table = read_au_table(table, quarantine, id_column=id_column,
                              intensity_max=intensity_max, delimiter=delimiter)
    by_key = {}
    for row_id in table.aus:
        by_key.setdefault(_table_key(row_id, key), row_id)

    def joined():
        matched, n_samples, n_labelled, n_no_row, no_row = set(), 0, 0, 0, []
        for sample in samples:
            n_samples += 1
            row_id = by_key.get(sample_key(sample, key))
            if row_id is None:
                if missing == "quarantine":
                    quarantine.add(sample.uid, "no_au_row",
                                   f"no row of {table.path} has {key} "
                                   f"{sample_key(sample, key)!r}")
                    continue
                n_no_row += 1
                if len(no_row) < 5:
                    no_row.append(sample.uid)
            else:
                n_labelled += 1
                mask = table.masks[row_id] > 0
                sample.aus = np.where(mask, table.aus[row_id], sample.aus).astype(np.float32)
                sample.aus_mask = np.maximum(sample.aus_mask, table.masks[row_id])
                sample.validate()
                matched.add(row_id)
            yield sample
        unmatched = [r for r in table.aus if r not in matched]
        for row_id in unmatched:
            quarantine.add(f"{table.path}:{table.lines[row_id]}", "unmatched_au_row",
                           f"no sample has {key} {_table_key(row_id, key)!r}")
        log.info("AU table %s: %d of %d samples labelled, %d table rows unmatched "
                 "(intensity_max %g)", table.path, n_labelled, n_samples,
                 len(unmatched), table.intensity_max)
        if n_no_row:
            log.warning("AU table %s: %d of %d samples have no row (by %s) and no AU "
                        "label, e.g. %s", table.path, n_no_row, n_samples, key,
                        ", ".join(no_row))

    return joined()
