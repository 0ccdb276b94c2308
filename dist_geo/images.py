"""Bounded image reading: an image's header is checked before anything decodes it.

A 1 KB JPEG can claim 30000 x 30000 pixels (a decompression bomb): decoding it takes gigabytes
before failing. Every decoder of dist-geo (the shard writer, the torch loader, evaluation, the
raw-pixel baseline) first opens the image's bytes with PIL, which reads the header only, and
refuses one that promises more than `data.max_image_pixels` pixels; only then does it decode.
"""
from __future__ import annotations

import io
import re
import warnings

from PIL import Image, UnidentifiedImageError


class ImageError(ValueError):
    """An image that cannot be used: unreadable, or more pixels than allowed. A ValueError as
    a decoder's errors are (the loaders count them as corrupt samples); callers name the file."""


def open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """The encoded image `data`, opened by PIL without decoding it (use it as a context
    manager); ImageError if its header cannot be read or promises more than `max_pixels`."""
    # PIL's own guard reads this global: it warns above it (an error here) and refuses above
    # twice it, both before any pixel is decoded.
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        promised = re.search(r"\((\d+) pixels\)", str(e))  # PIL names the size it read
        size = f"{promised.group(1)} pixels" if promised else "more pixels"
        raise ImageError(f"refused: its header promises {size}, more than "
                         f"data.max_image_pixels={max_pixels}") from None
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise ImageError(f"unreadable image ({e})") from None


__all__ = ["ImageError", "open_checked"]
