"""Reading the samples of one shard, with faults named by shard and sample key.

webdataset's own tar expander hands its error handler an exception that names the tar but not
the member being read, so a truncated shard could not be reported by key. This reader (used by
`verify_shards` and the torch loader) streams the tar with `tarfile` and groups the members of
a sample by key, as webdataset does (`<key>.<ext>`, members of a key contiguous).
`decode_rgb` is the torch loader's image decoder (evaluation's too); it checks the header's
pixel count before decoding (dist_geo/images.py). An image is judged by the decoder that will
read it (`judge_images` with `torch_image_check`, or dali_check.py's DALI check), so the
verifier and the DALI loader's search for what its decoder failed on reject what the loader
would.
"""
from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torchvision.io import ImageReadMode, decode_image

from dist_geo.config import DataConfig
from dist_geo.images import open_checked


@dataclass(frozen=True)
class Fault:
    """One unusable sample (or shard, when `key` is empty) and why."""

    shard: str
    key: str
    fault: str

    def __str__(self) -> str:
        return f"{self.shard}: sample '{self.key}': {self.fault}" if self.key else f"{self.shard}: {self.fault}"


class ShardReadError(Exception):
    def __init__(self, fault: Fault):
        super().__init__(str(fault))
        self.fault = fault


def decode_rgb(data: bytes, max_pixels: int = DataConfig.max_image_pixels) -> torch.Tensor:
    """A uint8 [3, H, W] image from encoded bytes; ValueError saying why it cannot be decoded
    (dist_geo.images.ImageError when its header promises more than `max_pixels` pixels)."""
    with open_checked(data, max_pixels):  # the header only, before any pixel is decoded
        pass
    try:
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError as e:
        # torchvision prefixes "<function>, <source file>:<line>, " to libjpeg's message.
        raise ValueError(f"undecodable image: {str(e).split(', ', 2)[-1]}") from None


# An image check: per encoded image, "" when its decoder reads it, else why not.
ImageCheck = Callable[[list[bytes]], list[str]]


def torch_image_check(images: list[bytes],
                      max_pixels: int = DataConfig.max_image_pixels) -> list[str]:
    """The torch loader's verdicts (torchvision's decoder, headers over `max_pixels` refused)."""
    verdicts = []
    for image in images:
        try:
            decode_rgb(image, max_pixels)
            verdicts.append("")
        except ValueError as e:
            verdicts.append(str(e))
    return verdicts


def judge_images(samples: Iterable[dict], check: ImageCheck,
                 batch_size: int = 64) -> Iterator[tuple[dict, str]]:
    """Each sample with the verdict of `check` on its .jpg ("missing member .jpg" when it has
    none), `batch_size` images per call; a ShardReadError passes on after the samples read."""
    pending: list[dict] = []

    def judged() -> Iterator[tuple[dict, str]]:
        yield from zip(pending, check([s["jpg"] for s in pending]))
        pending.clear()

    try:
        for sample in samples:
            if "jpg" not in sample:
                yield sample, "missing member .jpg"
                continue
            pending.append(sample)
            if len(pending) == batch_size:
                yield from judged()
    except ShardReadError:
        yield from judged()
        raise
    yield from judged()


def split_key(name: str) -> tuple[str, str]:
    """`dir/abc.json` -> (`dir/abc`, `json`): the extension is everything after the first dot."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    return (name, "") if dot < 0 else (name[:dot], name[dot + 1:])


def iter_samples(shard: str | Path) -> Iterator[dict[str, Any]]:
    """The samples of a tar as dicts {"__key__", "__url__", ext: bytes, ...}, in tar order.

    A tar that cannot be read to its end (truncated, garbage) raises ShardReadError naming the
    shard and the key of the member being read; the samples before it have been yielded.
    """
    url = str(shard)
    sample: dict[str, Any] | None = None
    key, in_member = "", False
    try:
        with tarfile.open(url, mode="r|") as tar:
            for info in tar:
                if not info.isreg():
                    continue
                key, ext = split_key(info.name)
                if sample is not None and sample["__key__"] != key:
                    yield sample
                    sample = None
                if sample is None:
                    sample = {"__key__": key, "__url__": url}
                in_member = True
                sample[ext] = tar.extractfile(info).read()
                in_member = False
    except (tarfile.TarError, OSError, EOFError) as e:
        if in_member or sample is None:
            raise ShardReadError(Fault(url, key, f"unreadable tar member ({e})")) from None
        # The members read so far are whole: hand their sample on, then name where it broke.
        yield sample
        raise ShardReadError(Fault(url, "", f"unreadable tar after sample '{key}' ({e})")) from None
    if sample is not None:
        yield sample

__all__ = ["Fault", "ImageCheck", "ShardReadError", "decode_rgb", "iter_samples", "judge_images",
           "split_key", "torch_image_check"]
