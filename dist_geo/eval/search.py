"""Nearest-neighbour search of query descriptors in the database, with FAISS, sharded.

Descriptors are L2-normalised, so the exact search is a flat inner-product index (the same
ranking as L2). The database is always split into shards rather than truncated:
- with GPUs, `faiss.index_cpu_to_all_gpus(..., co=GpuMultipleClonerOptions(shard=True))`
  gives each GPU a slice of the database (float16 storage if `fp16`), and FAISS merges the
  per-GPU top-k; a database too large for the GPUs together is searched on CPU shards instead;
- on CPU, an `IndexShards` of per-shard indexes searched in parallel threads, whose
  `successive_ids` turns each shard's local ids into database ids before merging the top-k.
Approximate indexes (IVF-PQ, HNSW) sit behind the same `build_index`/`search` pair; evaluation
measures what they lose against the exact index.

GPUs without faiss-gpu (its wheels need CUDA 12 libraries beside our CUDA 13 torch, so most GPU
machines have faiss-cpu): the exact search runs on the GPUs with torch instead (`torch_search`):
the database split in row shards over the devices, each shard's top-k of a block of queries by
matrix product, the shards' candidates merged into the global top-k. Same results as the flat
FAISS index (ties aside).
"""
from __future__ import annotations

import logging
import math

import faiss
import numpy as np
import torch

log = logging.getLogger(__name__)

INDEX_KINDS = ("flat", "ivfpq", "hnsw")
HNSW_NEIGHBOURS = 32  # graph degree M; FAISS's usual default
HNSW_EF_SEARCH = 128  # search breadth: recall close to exact on a few hundred thousand vectors
IVF_PROBE_FRACTION = 8  # visit 1/8 of the inverted lists
GPU_MEMORY_FRACTION = 0.7  # of the GPUs' free memory the database may take
QUERY_BLOCK = 1024  # queries per matrix product: bounds the [block, shard] similarity matrix


def gpu_count() -> int:
    """Number of GPUs FAISS can use (always 0 with faiss-cpu)."""
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def _fits_on_gpus(nbytes: int) -> bool:
    """Whether the sharded database leaves the GPUs a working margin (search buffers, top-k)."""
    free = sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
    return nbytes < GPU_MEMORY_FRACTION * free


def _factory_string(kind: str, dim: int, size: int) -> str:
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        return f"HNSW{HNSW_NEIGHBOURS},Flat"
    # IVF-PQ: ~sqrt(N) lists and 2**bits codes per sub-quantizer, each with at least 39 training
    # points (FAISS's minimum advice); the largest sub-quantizer count <= dim/4 dividing dim.
    nlist = max(1, min(int(math.sqrt(size)), size // 39))
    bits = max(1, min(8, int(math.log2(max(2, size // 39)))))
    m = max(d for d in range(1, max(1, dim // 4) + 1) if dim % d == 0)
    return f"IVF{nlist},PQ{m}x{bits}"


def _trained_index(kind: str, database: np.ndarray) -> faiss.Index:
    """An empty index of `kind`, trained on the database when the kind needs training."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r} (known: {', '.join(INDEX_KINDS)})")
    size, dim = database.shape
    index = faiss.index_factory(dim, _factory_string(kind, dim, size), faiss.METRIC_INNER_PRODUCT)
    if kind == "hnsw":
        index.hnsw.efSearch = HNSW_EF_SEARCH
    if kind == "ivfpq":
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = max(1, ivf.nlist // IVF_PROBE_FRACTION)
        index.train(database)
    return index


def build_index(
    database: np.ndarray,
    kind: str = "flat",
    shards: int = 0,
    use_gpu: bool | None = None,
    fp16: bool = False,
) -> faiss.Index:
    """An index holding every database row, split over GPUs or CPU shards.

    `shards=0` means one shard per GPU when GPUs are used, else one per FAISS thread.
    `use_gpu=None` uses GPUs when FAISS sees any.
    """
    database = np.ascontiguousarray(database, dtype=np.float32)
    size, dim = database.shape
    gpus = gpu_count()
    use_gpu = gpus > 0 if use_gpu is None else use_gpu
    if use_gpu and kind == "hnsw":
        log.info("HNSW has no GPU implementation in FAISS: searching it on CPU shards")
        use_gpu = False
    if use_gpu and not _fits_on_gpus(database.size * (2 if fp16 else 4)):
        log.warning("%d descriptors do not fit the GPUs' free memory: searching on CPU shards",
                    size)
        use_gpu = False
    template = _trained_index(kind, database)
    if use_gpu:
        options = faiss.GpuMultipleClonerOptions()
        options.shard = True
        options.useFloat16 = fp16
        index = faiss.index_cpu_to_all_gpus(template, co=options, ngpu=min(shards or gpus, gpus))
    else:
        n = max(1, min(shards or faiss.omp_get_max_threads(), size))
        index = faiss.IndexShards(dim, True, True)  # threaded, successive ids
        for _ in range(n):
            index.add_shard(faiss.clone_index(template))
    index.add(database)  # IndexShards splits the rows evenly over its shards, in order
    if index.ntotal != size:
        raise RuntimeError(f"index holds {index.ntotal} of {size} database descriptors")
    return index


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(similarities [Q, k], database ids [Q, k]), best first; k is capped at the database size."""
    k = min(k, index.ntotal)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def torch_search(
    database: np.ndarray, queries: np.ndarray, k: int, devices: list[torch.device]
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k with the database sharded over `devices` (see the docstring):
    (similarities [Q, k], database ids [Q, k]), best first, like `search`."""
    k = min(k, len(database))
    bounds = np.linspace(0, len(database), len(devices) + 1).astype(int)
    shards = [(torch.from_numpy(np.ascontiguousarray(database[a:b], dtype=np.float32)).to(d), a)
              for d, a, b in zip(devices, bounds[:-1], bounds[1:]) if b > a]
    sims_out, ids_out = [], []
    for start in range(0, len(queries), QUERY_BLOCK):
        block = torch.from_numpy(np.ascontiguousarray(queries[start:start + QUERY_BLOCK],
                                                      dtype=np.float32))
        candidates = []
        for shard, offset in shards:
            top = (block.to(shard.device) @ shard.T).topk(min(k, len(shard)), dim=1)
            candidates.append((top.values.cpu(), top.indices.cpu() + offset))
        sims = torch.cat([c[0] for c in candidates], dim=1)
        ids = torch.cat([c[1] for c in candidates], dim=1)
        best = sims.topk(k, dim=1)
        sims_out.append(best.values)
        ids_out.append(ids.gather(1, best.indices))
    return torch.cat(sims_out).numpy(), torch.cat(ids_out).numpy()


def search_database(
    database: np.ndarray,
    queries: np.ndarray,
    k: int,
    kind: str = "flat",
    shards: int = 0,
    fp16: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Build the index, search, free it: the one call evaluation makes per split (an exact
    search on GPUs FAISS cannot use goes through `torch_search`)."""
    if kind == "flat" and gpu_count() == 0 and torch.cuda.is_available():
        count = torch.cuda.device_count()
        devices = [torch.device("cuda", i) for i in range(min(shards or count, count))]
        return torch_search(database, queries, k, devices)
    index = build_index(database, kind=kind, shards=shards, fp16=fp16)
    try:
        return search(index, queries, k)
    finally:
        index.reset()
