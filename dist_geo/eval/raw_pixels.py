"""The raw-pixel baseline: nearest neighbour on 32x32 greyscale thumbnails.

Each thumbnail is flattened, its own mean subtracted and L2-normalised, so the inner product is
the normalised cross-correlation of the two thumbnails (insensitive to global brightness and
contrast). Scored with exactly the protocol of `evaluate`. A learnt model should beat it by a
wide margin; if it does not, the dataset is not a retrieval problem worth the name.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from dist_geo.config import Config, DataConfig
from dist_geo.data.vg_format import ImageRecord, list_images
from dist_geo.errors import DataError
from dist_geo.eval.evaluate import EvalResults, score_split, split_folders
from dist_geo.images import open_checked
from dist_geo.logs import progress

log = logging.getLogger(__name__)

THUMBNAIL_SIDE = 32


def thumbnail(path: str, max_pixels: int = DataConfig.max_image_pixels) -> np.ndarray:
    """[THUMBNAIL_SIDE**2] float32: grey, resized, mean-centred, L2-normalised. DataError
    naming the file if it cannot be read or promises more than `max_pixels` pixels."""
    try:
        with open_checked(Path(path).read_bytes(), max_pixels) as image:
            grey = image.convert("L").resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.BILINEAR)
    except OSError as e:
        raise DataError(f"{path}: image cannot be read ({e})") from None
    except ValueError as e:
        raise DataError(f"{path}: {e}") from None
    x = np.asarray(grey, dtype=np.float32).ravel()
    x -= x.mean()
    return x / max(float(np.linalg.norm(x)), 1e-6)


def thumbnails(records: Sequence[ImageRecord], data_cfg: DataConfig,
               desc: str = "thumbnails") -> tuple[np.ndarray, list[ImageRecord]]:
    """The thumbnails of `records`' images and the records they describe: with
    `data.skip_bad`, images that cannot be used are left out of both (and logged)."""
    rows, kept = [], []
    for record in progress(records, desc=desc):
        try:
            rows.append(thumbnail(record.path, data_cfg.max_image_pixels))
        except DataError as e:
            if not data_cfg.skip_bad:
                raise
            log.warning("skipped: %s", e)
            continue
        kept.append(record)
    return np.stack(rows).reshape(len(rows), THUMBNAIL_SIDE**2), kept


def raw_pixel_baseline(
    dataset_root: str | Path, cfg: Config, splits: Sequence[str] | None = None
) -> EvalResults:
    """Same shape as `evaluate`'s result, for the thumbnail descriptors (single process)."""
    metrics, details = {}, {}
    for split in splits or cfg.eval.splits:
        db_folder, q_folder = split_folders(dataset_root, split)
        db_listed, _ = list_images(db_folder, skip_bad=cfg.data.skip_bad)
        q_listed, _ = list_images(q_folder, skip_bad=cfg.data.skip_bad)
        database, db_records = thumbnails(db_listed, cfg.data, f"{split} database")
        queries, q_records = thumbnails(q_listed, cfg.data, f"{split} queries")
        result = score_split(split, database, queries, db_records, q_records, cfg.eval)
        if cfg.data.skip_bad:
            result.metrics["skipped_images"] = (
                len(db_listed) + len(q_listed) - len(db_records) - len(q_records))
        metrics[split], details[split] = result.metrics, result
    return EvalResults(metrics, details)
