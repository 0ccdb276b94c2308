"""Descriptors of a list of image files, computed by all ranks together.

Each rank embeds one contiguous slice of the files (a torch DataLoader over its slice, test-time
resize, ImageNet normalisation) and the slices are gathered with a padded `all_gather`, so every
rank ends with the whole [N, ...] array in file order, as a single process would compute it.
`views` turns a batch into several batches (flips, crops, scales: see tta.py); the result then
has one descriptor per view, [N, V, D].
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as F

from dist_geo.distributed import DistContext
from dist_geo.errors import DataError
from dist_geo.eval.night import preprocess_night
from dist_geo.loaders.augment import IMAGENET_MEAN, IMAGENET_STD
from dist_geo.logs import progress

Views = Callable[[torch.Tensor], list[torch.Tensor]]


def load_image(path: str, image_size: int = 0, night: str = "none") -> torch.Tensor:
    """An image file as a normalised float32 [3, H, W] tensor, shorter side resized to
    `image_size` (0 keeps the native size), night pre-processing applied first if asked."""
    try:
        image = decode_image(path, mode=ImageReadMode.RGB)
    except (RuntimeError, OSError) as e:
        raise DataError(f"{path}: image cannot be read ({str(e).splitlines()[0]})") from None
    if image_size:
        image = F.resize(image, [image_size], antialias=True)
    image = preprocess_night(image, night)
    image = F.to_dtype(image, torch.float32, scale=True)
    return F.normalize(image, IMAGENET_MEAN, IMAGENET_STD)


class ImageFiles(Dataset):
    """(image, index) for each path; images of one batch must share a size (VG splits do)."""

    def __init__(self, paths: Sequence[str], image_size: int = 0, night: str = "none"):
        self.paths = list(paths)
        self.image_size = image_size
        self.night = night

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return load_image(self.paths[i], self.image_size, self.night), i


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
) -> np.ndarray:
    """float32 [N, D] descriptors of `paths` in order, or [N, V, D] when `views` is given.

    Wrapped models (DDP, DeepSpeed engines) are unwrapped: evaluation needs no gradient
    synchronisation, and ranks may run a different number of batches. The model's train/eval
    mode is restored afterwards, so the trainer can validate mid-training.
    """
    module = getattr(model, "module", model)
    was_training = module.training
    module.eval()
    part = rank_slice(len(paths), ctx.rank, ctx.world_size)
    loader = DataLoader(
        ImageFiles([paths[i] for i in part], image_size, night),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=ctx.device.type == "cuda",
    )
    out = []
    for images, _ in progress(loader, desc=desc, enabled=ctx.is_main):
        images = images.to(ctx.device, non_blocking=True)
        batches = views(images) if views else [images]
        out.append(torch.stack([module(b).float() for b in batches], dim=1))
    module.train(was_training)
    local = torch.cat(out) if out else torch.empty(0, device=ctx.device)
    descriptors = _gather(local, len(paths), ctx).numpy()
    return descriptors if views else descriptors[:, 0]
