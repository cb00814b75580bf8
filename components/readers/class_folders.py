"""Reader for per-class image folders (FER2013 Kaggle images, CK+48, RAF-DB-style).

Two layouts are read, and may be mixed::

    root/train/angry/Training_10118481.jpg      # FER2013 Kaggle: split/class/file
    root/val/happy/PublicTest_11311174.jpg
    root/anger/S010_004_00000017.png            # CK+48: class/file, no split;
                                                # subject S010, sequence S010_004

Split folder names map to contract splits (``train``/``training`` -> train,
``val``/``validation``/``publictest`` -> val, ``test``/``privatetest`` -> test).
When ``root`` itself is named like a split (``fer2013/val``) its class folders
get that split. Class folder names map through :func:`contract.canonical_emotion`
(``angry``/``anger``, ``happy``/``happiness`` ...). Files may sit in sub-folders
of a class folder.
"""

from __future__ import annotations

import collections
import pathlib
import re
from typing import Iterator, List, Optional, Sequence, Tuple

from components import contract
from components.quarantine import Quarantine
from components.readers import _common

# CK+ file names carry the subject and the sequence: S005_001_00000011.png ->
# subject S005, sequence S005_001 (frame 11).
DEFAULT_SUBJECT_PATTERN = r"^(S\d+)_\d+"
DEFAULT_SEQUENCE_PATTERN = r"^(S\d+_\d+)_\d+"
# The frame number: the last digits of the stem (S005_001_00000011 -> 11).
FRAME_PATTERN = re.compile(r"(\d+)$")


def _first_group(pattern: Optional[re.Pattern], text: str) -> str:
    match = pattern.search(text) if pattern else None
    return match.group(1) if match else ""


def _last_frames(jobs, n: int, sequence_re, quarantine: Quarantine):
    """The jobs of the last ``n`` frames of each sequence (see read_class_folders)."""
    if n < 1:
        raise ValueError(f"class_folders: last_frames must be >= 1, got {n}")
    frames = collections.defaultdict(list)  # sequence -> [(frame, job)]
    for job in jobs:
        stem = job[0].stem
        sequence, frame = _first_group(sequence_re, stem), FRAME_PATTERN.search(stem)
        if not sequence or not frame:
            quarantine.add(job[0], "no_sequence_frame",
                           "last_frames needs a sequence and a frame number in the file name")
            continue
        frames[sequence].append((int(frame.group(1)), job))
    kept = []
    for sequence, items in frames.items():
        items.sort(key=lambda item: item[0])
        for frame, job in items[:-n]:
            quarantine.add(job[0], "not_in_last_frames",
                           f"frame {frame} of {sequence}: only its last {n} of "
                           f"{len(items)} frames are kept")
        kept += [job for _, job in items[-n:]]
    return sorted(kept, key=lambda job: job[0])


def _class_index(name: str) -> Optional[int]:
    try:
        return contract.canonical_emotion(name)
    except contract.ContractError:
        return None


def _scan(root: pathlib.Path, quarantine: Quarantine, excluded=frozenset()
          ) -> List[Tuple[pathlib.Path, str, str]]:
    """(class folder, class name, split) for every class folder under ``root``;
    stray files outside any class folder are quarantined, unless ``excluded``
    (resolved paths)."""
    root_split = _common.split_name(root.name) or ""
    folders = []

    def stray(path: pathlib.Path):
        if path.resolve() in excluded:
            return
        quarantine.add(path, "no_class_folder",
                       "file is not inside a class folder (root/<class>/ or root/<split>/<class>/)")

    for entry in sorted(p for p in root.iterdir() if not _common.is_hidden(p)):
        if entry.is_file():
            stray(entry)
        elif _common.split_name(entry.name) and _class_index(entry.name) is None:
            # root/<split>/<class>/...
            for sub in sorted(p for p in entry.iterdir() if not _common.is_hidden(p)):
                if sub.is_dir():
                    folders.append((sub, sub.name, _common.split_name(entry.name)))
                else:
                    stray(sub)
        elif entry.is_dir():
            folders.append((entry, entry.name, root_split))
    return folders


def read_class_folders(path, dataset: str, quarantine: Quarantine, *,
                       label_set: Optional[Sequence] = None,
                       domain: str = "",
                       subject_pattern: str = DEFAULT_SUBJECT_PATTERN,
                       sequence_pattern: str = DEFAULT_SEQUENCE_PATTERN,
                       exclude: Sequence[str] = (),
                       last_frames: Optional[int] = None,
                       progress: bool = False) -> Iterator[contract.FaceSample]:
    """Yield one sample per image in per-class folders.

    Args:
      path: root folder (see the module docstring for the layouts).
      dataset: dataset name; ``uid`` is ``<dataset>/<path relative to root>``.
      quarantine: collects rejected files: ``unknown_class`` (each file of a
        class folder whose name is no known emotion), ``class_not_in_label_set``,
        ``no_class_folder``, ``unsupported_file`` (not an image),
        ``empty_file``, ``undecodable_image``, ``image_too_small`` (under
        16 x 16 px).
      label_set: emotions (names or indices) the dataset labels; default the
        union of the known classes found in the tree.
      domain: capture domain (default: the dataset name).
      subject_pattern: regex whose first group is the subject id, searched in
        the file stem; files it does not match get subject "".
      sequence_pattern: regex whose first group is the sequence id (CK+:
        ``S005_001``), searched in the file stem; no match gives sequence "".
      exclude: paths relative to ``root`` that are no input (e.g. an AU table
        kept in the tree, ``facs.csv``); not reported.
      last_frames: keep only the last N frames (highest frame numbers, the
        stem's trailing digits) of each sequence, e.g. 1 for the "last frame"
        CK+ protocols; the other frames are quarantined as
        ``not_in_last_frames``, images without a sequence or frame number as
        ``no_sequence_frame``.
      progress: show a tqdm progress bar.

    Raises:
      EmptySourceError: no usable image at all.
    """
    root = _common.require_dir(path, "class_folders")
    subject_re = re.compile(subject_pattern) if subject_pattern else None
    sequence_re = re.compile(sequence_pattern) if sequence_pattern else None
    excluded = {(root / e).resolve() for e in ([exclude] if isinstance(exclude, str)
                                               else exclude)}

    # Collect the work first: the default label set needs the whole tree.
    jobs = []  # (file, emotion index, split)
    found = set()
    for folder, class_name, split in _scan(root, quarantine, excluded):
        files = [f for f in _common.list_files(folder) if f.resolve() not in excluded]
        emotion = _class_index(class_name)
        if emotion is None:
            for f in files:
                quarantine.add(f, "unknown_class",
                               f"class folder {class_name!r} is no known emotion")
            continue
        for f in files:
            if _common.is_image_file(f):
                jobs.append((f, emotion, split))
                found.add(emotion)
            else:
                quarantine.add(f, "unsupported_file",
                               f"not an image ({f.suffix or 'no extension'})")

    mask = contract.label_set_mask(label_set if label_set is not None else sorted(found))
    if last_frames is not None:
        jobs = _last_frames(jobs, int(last_frames), sequence_re, quarantine)

    def samples():
        for f, emotion, split in _common.progress(jobs, progress, desc=f"{dataset} images"):
            if not mask[emotion]:
                quarantine.add(f, "class_not_in_label_set",
                               f"{contract.EMOTIONS[emotion]} is not in the given label set")
                continue
            loaded = _common.load_image(f, quarantine)
            if loaded is None:
                continue
            yield contract.FaceSample(
                image=loaded[0], dataset=dataset, uid=_common.relative_uid(dataset, root, f),
                emotion=emotion, emotion_mask=mask.copy(), domain=domain, split=split,
                subject=_first_group(subject_re, f.stem),
                sequence=_first_group(sequence_re, f.stem))

    return _common.non_empty(samples(), "class_folders", path, quarantine)
