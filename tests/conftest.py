"""Shared test fixtures: tiny image files and a FER2013-style class-folder tree,
all written into ``tmp_path`` (tests never read the real datasets)."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest


def write_image(path, size=(20, 18), mode="L", seed=0) -> np.ndarray:
    """Write a random image of ``size`` (width, height) in PIL ``mode``; the
    format follows the extension. Returns the pixels written."""
    from PIL import Image

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(pixels, mode=mode).save(path)
    return pixels


def write_truncated(path) -> None:
    """An image file cut in half: its header decodes, its pixels do not."""
    write_image(path, size=(40, 40))
    data = pathlib.Path(path).read_bytes()
    pathlib.Path(path).write_bytes(data[: len(data) // 2])


@pytest.fixture
def image_writer():
    """The :func:`write_image` helper, for tests that build their own trees."""
    return write_image


@pytest.fixture
def fer_tree(tmp_path) -> pathlib.Path:
    """FER2013 Kaggle layout with 7 good images and 4 bad inputs::

        train/angry: 2 jpg + 1 truncated png   train/happy: 2 jpg + 1 zero-byte png
        train/weird: 2 jpg (unknown class)     val/sad: 1 jpg    test/angry: 1 jpg
        val/happy: 1 jpg
    """
    root = tmp_path / "fer"
    good = ["train/angry/Training_1.jpg", "train/angry/Training_2.jpg",
            "train/happy/Training_3.jpg", "train/happy/Training_4.jpg",
            "val/sad/PublicTest_5.jpg", "val/happy/PublicTest_6.jpg",
            "test/angry/PrivateTest_7.jpg"]
    for i, rel in enumerate(good):
        write_image(root / rel, size=(48, 48), seed=i)
    write_image(root / "train/weird/Training_8.jpg")
    write_image(root / "train/weird/Training_9.jpg")
    write_truncated(root / "train/angry/broken.png")
    (root / "train/happy/empty.png").write_bytes(b"")
    return root
