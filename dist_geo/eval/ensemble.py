"""Descriptor ensembles: several models describe each image, their descriptors are concatenated.

Each model's descriptor is L2-normalised before concatenation so that every model weighs the
same in the inner product; the concatenation is normalised again (a plain 1/sqrt(M) scale).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def concat_descriptors(per_model: Sequence[np.ndarray]) -> np.ndarray:
    """[N, (V,) D_m] for each model -> [N, (V,) sum D_m], L2-normalised on the last axis."""
    if len(per_model) == 1:
        return per_model[0]
    joined = np.concatenate([_normalise(d) for d in per_model], axis=-1)
    return _normalise(joined).astype(np.float32)
