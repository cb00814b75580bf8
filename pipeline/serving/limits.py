"""Request limits, client errors and the counters behind ``/monitoring/counters``.

Every limit refuses a request with a 4xx (a gRPC ``INVALID_ARGUMENT`` or
``RESOURCE_EXHAUSTED``) and counts it under its reason; nothing a client sends
is answered 500. Image sizes are read from the encoded header (PIL's lazy
open parses the header only), so a decompression bomb is refused before a
pixel is decoded.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import threading
from typing import Dict, Iterable

import PIL.Image
from tensorflow.core.example import example_pb2
from google.protobuf.message import DecodeError

# PIL's own bomb guard would raise a warning (or error) inside ``open``; the
# limit below is ours and is checked explicitly.
PIL.Image.MAX_IMAGE_PIXELS = None


class RequestError(Exception):
    """A client error: answered with HTTP ``status`` and ``{"error": message}``,
    and counted under ``reason``."""

    def __init__(self, message: str, status: int = 400, reason: str = "bad_request"):
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclasses.dataclass
class Limits:
    """What one request may ask for (``fermtl serve`` flags of the same names)."""

    max_body_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 4096 * 4096         # decoded pixels per image (all frames)
    max_instances: int = 256              # rows per request
    read_timeout_s: float = 10.0          # to receive a whole request body


class Counters:
    """Thread-safe named counts: ``requests``, ``ok`` and one per refusal reason."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: Dict[str, int] = collections.Counter()

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def snapshot(self) -> Dict[str, int]:
        with self._lock:
            return dict(self._counts)


def image_pixels(data: bytes) -> int:
    """Decoded pixel count of an encoded image (width x height x frames), from
    its header only; :class:`RequestError` when the header is not an image's."""
    try:
        with PIL.Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            frames = getattr(img, "n_frames", 1)
    except (PIL.UnidentifiedImageError, OSError, ValueError, SyntaxError,
            EOFError) as err:
        raise RequestError(f"not an image (PNG/JPEG/BMP/GIF): {err}",
                           reason="bad_image") from None
    return int(width) * int(height) * int(frames)


def check_images(images: Iterable[bytes], max_pixels: int, what: str = "image") -> None:
    """Refuse any image over ``max_pixels`` decoded pixels (before decoding)."""
    for i, data in enumerate(images):
        pixels = image_pixels(data)
        if pixels > max_pixels:
            raise RequestError(f"{what} {i} would decode to {pixels} pixels; the limit is "
                               f"{max_pixels}", reason="too_many_pixels")


def example_images(examples: Iterable[bytes]):
    """The ``image`` feature of each serialized ``tf.train.Example``."""
    for i, data in enumerate(examples):
        try:
            ex = example_pb2.Example.FromString(data)
        except DecodeError:
            raise RequestError(f"example {i} is not a serialized tf.train.Example",
                               reason="bad_example") from None
        values = ex.features.feature["image"].bytes_list.value
        if len(values) != 1:
            raise RequestError(f"example {i} needs exactly one 'image' bytes value",
                               reason="bad_example")
        yield values[0]
