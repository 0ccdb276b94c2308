"""The raw-pixel baseline: nearest neighbour on 32x32 greyscale thumbnails.

Each thumbnail is flattened, its own mean subtracted and L2-normalised, so the inner product is
the normalised cross-correlation of the two thumbnails (insensitive to global brightness and
contrast). Scored with exactly the protocol of `evaluate`. A learnt model should beat it by a
wide margin; if it does not, the dataset is not a retrieval problem worth the name.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from dist_geo.config import Config
from dist_geo.data.vg_format import list_images
from dist_geo.errors import DataError
from dist_geo.eval.evaluate import EvalResults, score_split, split_folders
from dist_geo.logs import progress

THUMBNAIL_SIDE = 32


def thumbnail(path: str) -> np.ndarray:
    """[THUMBNAIL_SIDE**2] float32: grey, resized, mean-centred, L2-normalised."""
    try:
        with Image.open(path) as image:
            grey = image.convert("L").resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.BILINEAR)
    except OSError as e:
        raise DataError(f"{path}: image cannot be read ({e})") from None
    x = np.asarray(grey, dtype=np.float32).ravel()
    x -= x.mean()
    return x / max(float(np.linalg.norm(x)), 1e-6)


def thumbnails(paths: Sequence[str], desc: str = "thumbnails") -> np.ndarray:
    return np.stack([thumbnail(p) for p in progress(paths, desc=desc)])


def raw_pixel_baseline(
    dataset_root: str | Path, cfg: Config, splits: Sequence[str] | None = None
) -> EvalResults:
    """Same shape as `evaluate`'s result, for the thumbnail descriptors (single process)."""
    metrics, details = {}, {}
    for split in splits or cfg.eval.splits:
        db_folder, q_folder = split_folders(dataset_root, split)
        db_records, _ = list_images(db_folder, skip_bad=cfg.data.skip_bad)
        q_records, _ = list_images(q_folder, skip_bad=cfg.data.skip_bad)
        result = score_split(
            split,
            thumbnails([r.path for r in db_records], f"{split} database"),
            thumbnails([r.path for r in q_records], f"{split} queries"),
            db_records, q_records, cfg.eval,
        )
        metrics[split], details[split] = result.metrics, result
    return EvalResults(metrics, details)
