"""Helpers shared by the readers: image loading into the contract's grayscale
PNG, the too-small-to-be-a-face check, split-name mapping, file listing, the
progress bar and the empty-source error."""

from __future__ import annotations

import collections
import io
import os
import pathlib
from typing import Iterable, Iterator, List, Optional, Tuple

import numpy as np

from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from components import contract
from components.quarantine import Quarantine

# Smallest face side (pixels) a reader accepts: below it an image is no face
# (a 1x1 PNG, an icon); quarantined as ``image_too_small``.
MIN_FACE_SIZE = 16

# Image file extensions the readers accept (compared lower-case).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".pgm",
                    ".ppm", ".pnm", ".webp")

# Folder / CSV names of splits -> the contract's split names.
_SPLIT_SYNONYMS = {
    "train": "train", "training": "train", "trainset": "train",
    "val": "val", "valid": "val", "validation": "val", "publictest": "val", "dev": "val",
    "test": "test", "testing": "test", "testset": "test", "privatetest": "test",
}


class EmptySourceError(ValueError):
    """A source holds no usable input at all (nothing found, or all of it rejected)."""


def split_name(name: str) -> Optional[str]:
    """Contract split (``train``/``val``/``test``) of a folder or usage name, else None.

    >>> split_name("PublicTest"), split_name("Training"), split_name("angry")
    ('val', 'train', None)
    """
    return _SPLIT_SYNONYMS.get(str(name).strip().lower())


def is_image_file(path: pathlib.Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def is_hidden(path: pathlib.Path) -> bool:
    """Dot-files (``.DS_Store``, editor swap files) are not inputs."""
    return path.name.startswith(".")


def list_files(root: pathlib.Path) -> List[pathlib.Path]:
    """All non-hidden files under ``root`` (recursive), sorted for a stable order."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(pathlib.Path(dirpath) / f for f in filenames if not f.startswith("."))
    return sorted(files)


def relative_uid(dataset: str, root: pathlib.Path, path: pathlib.Path) -> str:
    """``uid`` of a file: dataset name + path relative to the source root."""
    return f"{dataset}/{path.relative_to(root).as_posix()}"


def require_dir(path, reader: str) -> pathlib.Path:
    root = pathlib.Path(path)
    if not root.is_dir():
        raise EmptySourceError(f"{reader}: {str(path)!r} is not a directory")
    return root


def _to_uint8(img) -> np.ndarray:
    """Grayscale uint8 array of a PIL image of any mode (16-bit and float rescaled)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA").convert("RGB")  # drop alpha, keep the colours
    return np.asarray(img.convert("L"))


def too_small(width: int, height: int, source, quarantine: Quarantine) -> bool:
    """True (after quarantining ``source`` as ``image_too_small``) when a side
    is under :data:`MIN_FACE_SIZE` pixels."""
    if min(width, height) >= MIN_FACE_SIZE:
        return False
    quarantine.add(source, "image_too_small",
                   f"{width}x{height} px, a face needs at least "
                   f"{MIN_FACE_SIZE}x{MIN_FACE_SIZE}")
    return True


def encoded_size(data: bytes) -> Tuple[int, int]:
    """(width, height) of encoded image bytes, read from the header only.
    Undecodable bytes give (0, 0)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return 0, 0


def load_image(path: pathlib.Path, quarantine: Quarantine) -> Optional[Tuple[bytes, int, int]]:
    """Grayscale PNG bytes, width and height of an image file of any format,
    size and colour mode (pixels kept as they are: no resizing).

    Returns None after recording the file in ``quarantine`` when it is empty
    (``empty_file``), cannot be decoded or is truncated (``undecodable_image``)
    or is too small to be a face (``image_too_small``, :func:`too_small`).
    """
    try:
        if path.stat().st_size == 0:
            quarantine.add(path, "empty_file", "zero-byte file")
            return None
        with Image.open(path) as img:
            img.load()  # decode fully: a truncated file fails here
            pixels = _to_uint8(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        quarantine.add(path, "undecodable_image", f"{type(err).__name__}: {err}")
        return None
    if pixels.ndim != 2 or pixels.size == 0:
        quarantine.add(path, "undecodable_image", f"unexpected pixel shape {pixels.shape}")
        return None
    height, width = pixels.shape
    if too_small(width, height, path, quarantine):
        return None
    return contract.encode_png(pixels), width, height


def progress(iterable: Iterable, enabled: bool, desc: str = "",
             total: Optional[int] = None, unit: str = "file") -> Iterable:
    """``iterable`` wrapped in a tqdm bar (on stderr) when ``enabled``."""
    if not enabled:
        return iterable
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False)


def non_empty(samples: Iterator[contract.FaceSample], reader: str, path,
              quarantine: Quarantine) -> Iterator[contract.FaceSample]:
    """Pass samples through; raise :class:`EmptySourceError` if there were none."""
    n_before = len(quarantine)
    n = 0
    for sample in samples:
        n += 1
        yield sample
    if n == 0:
        rejected = collections.Counter(e.reason for e in quarantine.entries[n_before:])
        why = (f"all {sum(rejected.values())} inputs were rejected ("
               + ", ".join(f"{r}={c}" for r, c in sorted(rejected.items())) + ")"
               if rejected else "no input was found")
        raise EmptySourceError(f"{reader}: no usable sample in {str(path)!r}: {why}")
