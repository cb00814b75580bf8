"""Reader for 300-W / iBUG ``.pts`` landmark files paired with their images.

Each ``name.pts`` sits beside ``name.png`` or ``name.jpg`` (any image
extension). The iBUG form has a header and braces; bare ``x y`` rows are read
too::

    version: 1
    n_points:  68
    {
    446.000 91.000
    449.459 119.344
    ...
    }

Points are pixel coordinates in iBUG 68-point order; the reader divides them by
the image width/height so they lie in [0, 1] (points slightly outside the image
stay slightly outside [0, 1], as annotated). These sources label no emotion
(``emotion = -1``). A folder named like a split anywhere in the relative path
(``helen/trainset/``, ``lfpw/testset/``) sets the split.
"""

from __future__ import annotations

import collections
import pathlib
from typing import Iterator, Optional, Tuple

import numpy as np

from components import contract
from components.quarantine import Quarantine
from components.readers import _common

# Which image is paired with a .pts when several share its stem.
_IMAGE_PREFERENCE = (".png", ".jpg", ".jpeg")


def parse_pts(text: str) -> Tuple[np.ndarray, Optional[int]]:
    """Points (N, 2) and the header's ``n_points`` (None without a header).

    Raises ValueError for text that is no landmark file.
    """
    declared = None
    rows = []
    in_braces = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if ":" in line:  # header line: "version: 1", "n_points: 68"
            key, _, value = line.partition(":")
            if key.strip().lower() == "n_points":
                try:
                    declared = int(value)
                except ValueError:
                    raise ValueError(f"line {number}: n_points {value.strip()!r} is no integer")
            continue
        if line == "{":
            in_braces = True
            continue
        if line == "}":
            if not in_braces:
                raise ValueError(f"line {number}: '}}' without '{{'")
            in_braces = False
            continue
        fields = line.replace(",", " ").split()
        if len(fields) != 2:
            raise ValueError(f"line {number}: expected 'x y', got {raw.strip()!r}")
        try:
            xy = [float(v) for v in fields]
        except ValueError:
            raise ValueError(f"line {number}: non-numeric coordinates {raw.strip()!r}")
        if not np.isfinite(xy).all():
            raise ValueError(f"line {number}: non-finite coordinates {raw.strip()!r}")
        rows.append(xy)
    if in_braces:
        raise ValueError("'{' without closing '}'")
    return np.asarray(rows, np.float32).reshape(-1, 2), declared


def _path_split(rel: pathlib.PurePath) -> str:
    for part in rel.parts[:-1]:
        split = _common.split_name(part)
        if split:
            return split
    return ""


def read_pts_landmarks(path, dataset: str, quarantine: Quarantine, *,
                       domain: str = "",
                       progress: bool = False) -> Iterator[contract.FaceSample]:
    """Yield one sample per ``.pts`` + image pair under ``path`` (recursive).

    ``uid`` is ``<dataset>/<image path relative to root>``. Rejected input goes
    to ``quarantine``: ``wrong_point_count`` (not 68 points, or not
    the header's ``n_points``), ``unparsable_landmarks``, ``missing_image``
    (a .pts with no image), ``missing_landmarks`` (an image with no .pts),
    ``duplicate_image`` (a second image with the same stem), ``empty_file``,
    ``undecodable_image``, ``image_too_small`` (under 16 x 16 px),
    ``unsupported_file``. 300-W crops (``NAME.jpg`` + ``NAME.pts``, 128 x 128)
    give landmarks in [0, 1] of the crop, ``landmarks_mask`` 1, no emotion
    (``emotion`` -1, zero ``emotion_mask``) and no subject.

    Raises:
      EmptySourceError: no usable pair at all.
    """
    root = _common.require_dir(path, "pts_landmarks")
    pts_files, images = [], collections.defaultdict(list)
    for f in _common.list_files(root):
        if f.suffix.lower() == ".pts":
            pts_files.append(f)
        elif _common.is_image_file(f):
            images[f.with_suffix("")].append(f)
        else:
            quarantine.add(f, "unsupported_file", f"neither .pts nor an image ({f.suffix})")

    def rank(img: pathlib.Path):
        ext = img.suffix.lower()
        return (_IMAGE_PREFERENCE.index(ext) if ext in _IMAGE_PREFERENCE else 99, img.name)

    # Images with no .pts, and extra images sharing a stem, are reported.
    paired = {}
    pts_stems = {p.with_suffix("") for p in pts_files}
    for stem, candidates in images.items():
        candidates.sort(key=rank)
        if stem not in pts_stems:
            for img in candidates:
                quarantine.add(img, "missing_landmarks", "no .pts file with the same name")
            continue
        paired[stem] = candidates[0]
        for img in candidates[1:]:
            quarantine.add(img, "duplicate_image",
                           f"{candidates[0].name} is already paired with {stem.name}.pts")

    def samples():
        for pts in _common.progress(pts_files, progress, desc=f"{dataset} landmarks"):
            image_path = paired.get(pts.with_suffix(""))
            if image_path is None:
                quarantine.add(pts, "missing_image",
                               f"no image {pts.stem}{{{','.join(_IMAGE_PREFERENCE)}}} beside it")
                continue
            try:
                points, declared = parse_pts(pts.read_text(errors="strict"))
            except (ValueError, UnicodeDecodeError) as err:
                quarantine.add(pts, "unparsable_landmarks", str(err))
                continue
            if declared is not None and declared != len(points):
                quarantine.add(pts, "wrong_point_count",
                               f"header says n_points {declared}, file has {len(points)}")
                continue
            if len(points) != contract.NUM_LANDMARKS:
                quarantine.add(pts, "wrong_point_count",
                               f"{len(points)} points, expected {contract.NUM_LANDMARKS}")
                continue
            loaded = _common.load_image(image_path, quarantine)
            if loaded is None:
                continue
            image, width, height = loaded
            rel = image_path.relative_to(root)
            yield contract.FaceSample(
                image=image, dataset=dataset, uid=f"{dataset}/{rel.as_posix()}",
                landmarks=points / np.array([width, height], np.float32), landmarks_mask=1.0,
                domain=domain, split=_path_split(rel))

    return _common.non_empty(samples(), "pts_landmarks", path, quarantine)
