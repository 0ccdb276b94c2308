import numpy as np
import pytest
import torch

from dist_geo.eval.ensemble import concat_descriptors
from dist_geo.eval.night import NIGHT_PREPROCESS, preprocess_night
from dist_geo.eval.pca import apply_pca, fit_pca
from dist_geo.eval.tta import (
    TTA_METHODS, database_views, merge_crop_predictions, pool_views, query_views,
)


@pytest.mark.parametrize("method", NIGHT_PREPROCESS)
def test_night_preprocess_keeps_shape_and_range(method):
    dark = torch.randint(0, 40, (3, 20, 30), dtype=torch.uint8)
    out = preprocess_night(dark, method)
    assert out.shape == dark.shape and out.dtype == torch.uint8
    if method != "none":
        assert out.float().mean() > dark.float().mean()  # brighter than the night input


def test_query_and_database_views_shapes():
    x = torch.randn(2, 3, 24, 32)
    shapes = {m: [tuple(v.shape) for v in (query_views(m) or (lambda t: [t]))(x)]
              for m in TTA_METHODS}
    assert shapes["none"] == [(2, 3, 24, 32)]
    assert shapes["central_crop"] == [(2, 3, 24, 24)]
    assert shapes["five_crops"] == [(2, 3, 24, 24)] * 5
    assert shapes["hflip"] == [(2, 3, 24, 32)] * 2
    assert shapes["multiscale"] == [(2, 3, 24, 32), (2, 3, 17, 23), (2, 3, 12, 16)]
    assert database_views("five_crops") is None  # crops are for queries only
    assert torch.equal(query_views("hflip")(x)[1], x.flip(-1))


def test_pool_views_is_normalised_mean():
    d = np.array([[[1.0, 0.0], [0.0, 1.0]]], dtype=np.float32)
    np.testing.assert_allclose(pool_views(d), [[2 ** -0.5, 2 ** -0.5]], rtol=1e-6)


def test_nearest_crop_and_majority_voting():
    # one query, 3 crops, top-3 each: (similarity, database id)
    sims = np.array([[[0.90, 0.50, 0.40], [0.89, 0.88, 0.10], [0.895, 0.30, 0.20]]])
    ids = np.array([[[7, 1, 2], [3, 7, 4], [3, 5, 6]]])
    # nearest crop: order by best similarity over crops, duplicates dropped
    assert merge_crop_predictions("nearest_crop", sims, ids, 3).tolist() == [[7, 3, 1]]
    # voting: id 3 is the top-1 of two crops, so it overtakes 7
    assert merge_crop_predictions("majority_voting", sims, ids, 3).tolist() == [[3, 7, 1]]


def test_pca_on_small_data():
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((3, 10))
    x = (rng.standard_normal((200, 3)) @ basis + 0.01 * rng.standard_normal((200, 10)))
    pca = fit_pca(x.astype(np.float32), 3, whiten=True)
    assert pca.explained_variance_ratio_.sum() > 0.99  # the 3-d structure is found
    y = apply_pca(pca, x)
    assert y.shape == (200, 3) and y.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, rtol=1e-5)


def test_ensemble_concatenation():
    a = np.array([[3.0, 4.0]], dtype=np.float32)
    b = np.array([[0.0, 1.0, 0.0]], dtype=np.float32)
    out = concat_descriptors([a, b])
    np.testing.assert_allclose(out, [[0.6, 0.8, 0.0, 1.0, 0.0]] / np.sqrt(2), rtol=1e-6)
