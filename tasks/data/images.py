"""Safe image loading shared by every reader.

The official BEiT-3 code loads images with torchvision's ``default_loader`` (PIL, ``convert('RGB')``,
no EXIF transpose). We do the same, but turn every failure into one :class:`DataError` that names the
file and, when the caller passes one, the record that pointed at it.
"""

from __future__ import annotations

import io
import os
from typing import Any

from PIL import Image, UnidentifiedImageError

__all__ = ["DataError", "decode_image", "describe_record", "load_image", "readable_images"]


class DataError(ValueError):
    """Bad input data: a missing/corrupt file or a malformed record. The message names both."""


def describe_record(record: Any) -> str:
    """Return a short ``" (record ...)"`` suffix for error messages, or ``""`` when there is none."""
    if record is None:
        return ""
    text = repr(record)
    if len(text) > 200:
        text = text[:197] + "..."
    return f" (record {text})"


def _to_rgb(image: Image.Image) -> Image.Image:
    # convert() forces the full decode, so a truncated file fails here rather than in a transform.
    return image.convert("RGB")


def load_image(path: str | os.PathLike, record: Any = None) -> Image.Image:
    """Open an image file and return it as an RGB ``PIL.Image``.

    Args:
        path: image file.
        record: what pointed at the file (index, id or dict), quoted in the error message.

    Raises:
        DataError: the file is missing, unreadable, not an image, or truncated.
    """
    path = os.fspath(path)
    where = describe_record(record)
    if not os.path.isfile(path):
        raise DataError(f"image file not found: {path}{where}; check the image root and the annotation")
    try:
        with Image.open(path) as image:
            return _to_rgb(image)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exn:
        raise DataError(f"cannot decode image {path}{where}: {exn}; the file is corrupt or truncated") from exn


def decode_image(data: bytes, name: str, record: Any = None) -> Image.Image:
    """Decode image bytes (e.g. a member of a tar shard) into an RGB ``PIL.Image``.

    Args:
        data: encoded image bytes.
        name: where the bytes came from (shard and key), quoted in the error message.
        record: optional record quoted in the error message.

    Raises:
        DataError: the bytes are not a decodable image.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            return _to_rgb(image)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exn:
        raise DataError(f"cannot decode image {name}{describe_record(record)}: {exn}") from exn


def readable_images(root: str | os.PathLike, paths: list[str]) -> tuple[list[int], list[str]]:
    """Which of ``paths`` (relative to ``root``) open as images: (indices kept, what is wrong with the others).

    A folder reader's ``skip_bad`` check: ``PIL.Image.verify`` reads each file's structure without
    decoding the pixels, so it finds missing, empty, non-image and most truncated files in one pass.
    """
    kept, problems = [], []
    for index, path in enumerate(paths):
        full = os.path.join(root, path)
        try:
            with Image.open(full) as image:
                image.verify()
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exn:
            problems.append(f"{full}: {exn}")
            continue
        kept.append(index)
    return kept, problems
