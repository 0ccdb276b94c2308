"""Descriptors of a list of image files, computed by all ranks together.

Each rank embeds one contiguous slice of the files (a torch DataLoader over its slice, test-time
resize, ImageNet normalisation) and the slices are gathered with a padded `all_gather`, so every
rank ends with the whole [N, ...] array in file order, as a single process would compute it.
`views` turns a batch into several batches (flips, crops, scales: see tta.py); the result then
has one descriptor per view, [N, V, D].

Images of one batch may differ in size (query sets of mixed sizes are normal, Tokyo 24/7's
for one): each batch goes through the network in groups of equal shape, which gives every
image the descriptor it would get alone. A file that cannot be used (unreadable, more pixels
than `data.max_image_pixels`, too small for the network) stops every rank with a one-line
DataError naming it, or, when the caller collects `skipped`, is left out and counted.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as F

from dist_geo.config import DataConfig
from dist_geo.distributed import DistContext
from dist_geo.errors import DataError
from dist_geo.eval.night import preprocess_night
from dist_geo.loaders.augment import IMAGENET_MEAN, IMAGENET_STD
from dist_geo.logs import progress
from dist_geo.shards.reading import decode_rgb
from dist_geo.signals import ignore_stop_signals

log = logging.getLogger(__name__)

Views = Callable[[torch.Tensor], list[torch.Tensor]]
Item = tuple[torch.Tensor | None, int, str]  # (image, index, why it cannot be used)


def load_image(path: str, image_size: int = 0, night: str = "none",
               max_pixels: int = DataConfig.max_image_pixels) -> torch.Tensor:
    """An image file as a normalised float32 [3, H, W] tensor, shorter side resized to
    `image_size` (0 keeps the native size), night pre-processing applied first if asked.
    DataError naming the file if it cannot be read, or promises more than `max_pixels`."""
    try:
        image = decode_rgb(Path(path).read_bytes(), max_pixels)
    except OSError as e:
        raise DataError(f"{path}: image cannot be read ({e.strerror or e})") from None
    except ValueError as e:
        raise DataError(f"{path}: {e}") from None
    if image_size:
        image = F.resize(image, [image_size], antialias=True)
    image = preprocess_night(image, night)
    image = F.to_dtype(image, torch.float32, scale=True)
    return F.normalize(image, IMAGENET_MEAN, IMAGENET_STD)


class ImageFiles(Dataset):
    """(image, index, "") for each path, or (None, index, why) for a file that cannot be used:
    the caller raises or skips it (raised inside a DataLoader worker, the error would reach the
    user wrapped in a multi-line traceback)."""

    def __init__(self, paths: Sequence[str], image_size: int = 0, night: str = "none",
                 max_pixels: int = DataConfig.max_image_pixels):
        self.paths = list(paths)
        self.image_size, self.night, self.max_pixels = image_size, night, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Item:
        try:
            return load_image(self.paths[i], self.image_size, self.night, self.max_pixels), i, ""
        except DataError as e:
            return None, i, str(e)


def rank_slice(n: int, rank: int, world_size: int) -> range:
    """A rank's contiguous share of n items (the first ranks take one more if uneven)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def _gather(local: torch.Tensor, n: int, ctx: DistContext) -> torch.Tensor:
    """Concatenate every rank's slice, in rank order, on every rank (padded all_gather)."""
    if not ctx.is_distributed:
        return local.cpu()
    shapes: list = [None] * ctx.world_size
    dist.all_gather_object(shapes, tuple(local.shape[1:]) if len(local) else None)
    feature_shape = next(s for s in shapes if s is not None)
    sizes = [len(rank_slice(n, r, ctx.world_size)) for r in range(ctx.world_size)]
    padded = torch.zeros((sizes[0], *feature_shape), dtype=torch.float32, device=ctx.device)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]).cpu()


def _same_shape(items: list[Item]) -> list[list[Item]]:
    """The usable items of a batch, grouped by image shape (in order of first appearance)."""
    groups: dict[tuple[int, ...], list[Item]] = defaultdict(list)
    for item in items:
        if item[0] is not None:
            groups[tuple(item[0].shape)].append(item)
    return list(groups.values())


def _describe_group(module: nn.Module, group: list[Item], views: Views | None,
                    files: ImageFiles, device: torch.device) -> torch.Tensor:
    """[len(group), V, D] descriptors of images of one shape; DataError naming the first file
    when the network cannot take that shape (an image too small for it, for one)."""
    images = torch.stack([image for image, _, _ in group]).to(device, non_blocking=True)
    try:
        return torch.stack([module(b).float() for b in (views(images) if views else [images])],
                           dim=1)
    except RuntimeError as e:
        h, w = images.shape[-2:]
        raise DataError(f"{files.paths[group[0][1]]}: a {w}x{h} image cannot go through the "
                        f"network ({str(e).splitlines()[0]})") from None


def _shared_faults(faults: list[tuple[int, str]], ctx: DistContext) -> list[tuple[int, str]]:
    """Every rank's (index, why) of the files it could not use, on every rank, by index."""
    if not ctx.is_distributed:
        return faults
    everyone: list = [None] * ctx.world_size
    dist.all_gather_object(everyone, faults)
    return sorted(f for part in everyone for f in part)


@torch.no_grad()
def extract_descriptors(
    model: nn.Module,
    paths: Sequence[str],
    ctx: DistContext,
    batch_size: int = 32,
    image_size: int = 0,
    night: str = "none",
    views: Views | None = None,
    num_workers: int = 0,
    desc: str = "descriptors",
    max_pixels: int = DataConfig.max_image_pixels,
    skipped: list[int] | None = None,
) -> np.ndarray:
    """float32 [N, D] descriptors of `paths` in order, or [N, V, D] when `views` is given.

    A file that cannot be used raises a DataError naming it on every rank; when `skipped` is
    given, its index into `paths` is appended to it instead (on every rank) and its row is
    zeros. Wrapped models (DDP, DeepSpeed engines) are unwrapped: evaluation needs no gradient
    synchronisation, and ranks may run a different number of batches. The model's train/eval
    mode is restored afterwards, so the trainer can validate mid-training.
    """
    module = getattr(model, "module", model)
    was_training = module.training
    module.eval()
    part = rank_slice(len(paths), ctx.rank, ctx.world_size)
    files = ImageFiles([paths[i] for i in part], image_size, night, max_pixels)
    loader = DataLoader(
        files, batch_size=batch_size, num_workers=num_workers, collate_fn=list,
        pin_memory=ctx.device.type == "cuda",
        worker_init_fn=ignore_stop_signals,  # a stop signal during validation waits for it
    )
    rows: dict[int, torch.Tensor] = {}
    faults: list[tuple[int, str]] = []
    for items in progress(loader, desc=desc, enabled=ctx.is_main):
        faults += [(part.start + i, why) for _, i, why in items if why]
        try:
            for group in _same_shape(items):
                described = _describe_group(module, group, views, files, ctx.device)
                rows.update({i: row for (_, i, _), row in zip(group, described)})
        except DataError as e:
            faults.append((-1, str(e)))  # the network's fault, not the file's: never skipped
        if faults and (skipped is None or faults[-1][0] < 0):
            break  # the job fails: the other ranks learn it from _shared_faults
    module.train(was_training)
    faults = _shared_faults(faults, ctx)
    fatal = [why for i, why in faults if i < 0 or skipped is None]
    if fatal:
        raise DataError(fatal[0])
    if len(faults) == len(paths) and paths:
        raise DataError(f"none of the {len(paths)} images can be used (first: {faults[0][1]})")
    if skipped is not None:
        skipped += [i for i, _ in faults]
        for _, why in faults if ctx.is_main else []:
            log.warning("skipped: %s", why)
    local = _assemble(rows, part, ctx.device)
    descriptors = _gather(local, len(paths), ctx).numpy()
    return descriptors if views else descriptors[:, 0]


def _assemble(rows: dict[int, torch.Tensor], part: range, device: torch.device) -> torch.Tensor:
    """The rank's [len(part), V, D] block in file order, zeros where a file was left out
    (empty when it described nothing: the padded gather fills its rows with zeros)."""
    if not rows:
        return torch.empty(0, device=device)
    first = next(iter(rows.values()))
    local = torch.zeros((len(part), *first.shape), dtype=first.dtype, device=device)
    for i, row in rows.items():
        local[i] = row
    return local
