"""PCA (optionally whitened) of descriptors to `eval.pca_dim` dimensions.

Fitted on descriptors of the training images (or of the database, `eval.pca_fit=database`), as
NetVLAD/GeM evaluations do: the projection must not be learnt on the queries it is tested on.
Projected descriptors are L2-normalised again so that inner product search still ranks by cosine.
"""
from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA

from dist_geo.config import ConfigError


def fit_pca(descriptors: np.ndarray, dim: int, whiten: bool = False, seed: int = 0) -> PCA:
    if dim > min(descriptors.shape):
        raise ConfigError(
            f"eval.pca_dim={dim} exceeds what {descriptors.shape[0]} fitting descriptors of "
            f"dimension {descriptors.shape[1]} allow ({min(descriptors.shape)})"
        )
    return PCA(n_components=dim, whiten=whiten, random_state=seed).fit(descriptors)


def apply_pca(pca: PCA, descriptors: np.ndarray) -> np.ndarray:
    """[N, D] -> [N, pca_dim] float32, L2-normalised."""
    projected = pca.transform(descriptors).astype(np.float32)
    return projected / np.maximum(np.linalg.norm(projected, axis=1, keepdims=True), 1e-12)
