import numpy as np
import pytest
import torch

from dist_geo.eval import search as search_module
from dist_geo.eval.search import build_index, search, torch_search


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_sharded_equals_unsharded_and_numpy():
    rng = np.random.default_rng(0)
    db, q = _unit(rng, 1001, 32), _unit(rng, 50, 32)
    s1, i1 = search(build_index(db, shards=1), q, 20)
    s4, i4 = search(build_index(db, shards=4), q, 20)
    np.testing.assert_array_equal(i1, i4)
    np.testing.assert_array_equal(s1, s4)
    np.testing.assert_array_equal(i1, np.argsort(-(q @ db.T), axis=1)[:, :20])


def test_never_truncates_and_caps_k():
    rng = np.random.default_rng(1)
    db = _unit(rng, 7, 8)
    index = build_index(db, shards=3)
    assert index.ntotal == 7
    _, ids = search(index, db, 20)
    assert ids.shape == (7, 7)
    assert (ids[:, 0] == np.arange(7)).all()


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_approximate_indexes_same_interface(kind):
    rng = np.random.default_rng(2)
    db = _unit(rng, 2000, 32)
    _, ids = search(build_index(db, kind=kind, shards=2), db[:50], 5)
    assert ids.shape == (50, 5)
    assert ids.min() >= 0 and ids.max() < 2000
    assert (ids[:, 0] == np.arange(50)).mean() > 0.5  # a vector finds itself most of the time


@pytest.mark.parametrize("devices", [1, 3])
def test_torch_search_over_device_shards_equals_faiss(devices, monkeypatch):
    """The GPU path without faiss-gpu, run on CPU tensors: shards over `devices` devices, query
    blocks smaller than the queries, a shard smaller than k: the flat FAISS index's results."""
    rng = np.random.default_rng(3)
    db, q = _unit(rng, 2003, 32), _unit(rng, 70, 32)
    sims, ids = search(build_index(db, shards=1), q, 20)
    monkeypatch.setattr(search_module, "QUERY_BLOCK", 32)
    t_sims, t_ids = torch_search(db, q, 20, [torch.device("cpu")] * devices)
    np.testing.assert_array_equal(t_ids, ids)
    np.testing.assert_allclose(t_sims, sims, rtol=1e-5, atol=1e-6)
    _, small = torch_search(db[:5], q, 20, [torch.device("cpu")] * 3)  # shards of 1-2 rows
    assert small.shape == (70, 5) and sorted(small[0]) == [0, 1, 2, 3, 4]
