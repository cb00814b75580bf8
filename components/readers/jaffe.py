"""Reader for JAFFE (Japanese Female Facial Expression) image folders.

The file name carries subject, expression (with a posing index) and image
number::

    KA.AN1.39.tiff      # subject KA, anger (AN), 1st posing, image 39
    YM.NE3.51.tiff      # subject YM, neutral

Expression codes: NE, HA, SA, SU, AN, DI, FE (neutral, happiness, sadness,
surprise, anger, disgust, fear). The label set is :data:`contract.BASIC7`.
"""

from __future__ import annotations

import re
from typing import Iterator

from components import contract
from components.quarantine import Quarantine
from components.readers import _common

# <subject>.<code><posing index>.<image number>
JAFFE_NAME = re.compile(r"^(?P<subject>[A-Za-z]+)\.(?P<code>[A-Za-z]{2})\d*\.\d+$")

_LABEL_SET = contract.label_set_mask(contract.BASIC7)


def read_jaffe(path, dataset: str, quarantine: Quarantine, *,
               domain: str = "",
               progress: bool = False) -> Iterator[contract.FaceSample]:
    """Yield one sample per JAFFE image under ``path`` (searched recursively).

    Rejected files go to ``quarantine`` as ``bad_file_name`` (not
    ``<subject>.<code><n>.<n>.<ext>``), ``unknown_class`` (code not in
    NE/HA/SA/SU/AN/DI/FE), ``unsupported_file`` (not an image),
    ``empty_file``, ``undecodable_image`` or ``image_too_small``.

    Raises:
      EmptySourceError: no usable image at all.
    """
    root = _common.require_dir(path, "jaffe")
    files = _common.list_files(root)

    def samples():
        for f in _common.progress(files, progress, desc=f"{dataset} images"):
            if not _common.is_image_file(f):
                quarantine.add(f, "unsupported_file",
                               f"not an image ({f.suffix or 'no extension'})")
                continue
            match = JAFFE_NAME.match(f.stem)
            if not match:
                quarantine.add(f, "bad_file_name",
                               "expected <subject>.<code><n>.<n> like KA.AN1.39.tiff")
                continue
            try:
                emotion = contract.canonical_emotion(match["code"])
            except contract.ContractError:
                emotion = -1
            if emotion < 0 or not _LABEL_SET[emotion]:
                quarantine.add(f, "unknown_class", f"expression code {match['code']!r}")
                continue
            loaded = _common.load_image(f, quarantine)
            if loaded is None:
                continue
            yield contract.FaceSample(
                image=loaded[0], dataset=dataset, uid=_common.relative_uid(dataset, root, f),
                emotion=emotion, emotion_mask=_LABEL_SET.copy(), domain=domain,
                subject=match["subject"].upper())

    return _common.non_empty(samples(), "jaffe", path, quarantine)
