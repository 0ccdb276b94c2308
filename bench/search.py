"""Queries/s of exact top-k search: sharded FAISS vs one FAISS index vs numpy vs torch
(and, where CUDA is visible, evaluation's torch search sharded over the GPUs).

All on the same random L2-normalised float32 database (default 100k x 512) and queries, in one
run; prints one JSON object. Every method must return the same top-1 as the others (checked),
so only speed differs. FAISS shards are searched in parallel threads (IndexShards); the number
of shards and of threads used is reported.

    python bench/search.py [--database 100000] [--dim 512] [--queries 2000] [--k 20]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import faiss
import numpy as np
import torch

from dist_geo.eval.search import build_index, search, torch_search

BLOCK = 256  # queries per brute-force block: bounds the [block, N] similarity matrix


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_topk(db: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    out = []
    for start in range(0, len(q), BLOCK):
        sims = q[start:start + BLOCK] @ db.T
        part = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1)
        out.append(np.take_along_axis(part, order, axis=1))
    return np.concatenate(out)


def torch_topk(db: torch.Tensor, q: torch.Tensor, k: int) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([(q[s:s + BLOCK] @ db.T).topk(k, dim=1).indices
                          for s in range(0, len(q), BLOCK)]).numpy()


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(prog="dist-geo bench search",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--database", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--shards", type=int, default=0, help="0 = one per FAISS thread")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    db, q = unit(rng, args.database, args.dim), unit(rng, args.queries, args.dim)
    threads = faiss.omp_get_max_threads()
    shards = args.shards or threads
    results, top1 = {}, {}

    build_s, index = timed(lambda: build_index(db, shards=shards))
    seconds, (_, ids) = timed(lambda: search(index, q, args.k))
    results["faiss_sharded"] = {"queries_per_s": args.queries / seconds, "build_s": build_s,
                                "shards": shards}
    top1["faiss_sharded"] = ids[:, 0]

    build_s, index = timed(lambda: build_index(db, shards=1))
    seconds, (_, ids) = timed(lambda: search(index, q, args.k))
    results["faiss_single"] = {"queries_per_s": args.queries / seconds, "build_s": build_s,
                               "shards": 1}
    top1["faiss_single"] = ids[:, 0]

    seconds, ids = timed(lambda: numpy_topk(db, q, args.k))
    results["numpy_brute_force"] = {"queries_per_s": args.queries / seconds}
    top1["numpy_brute_force"] = ids[:, 0]

    tdb, tq = torch.from_numpy(db), torch.from_numpy(q)
    seconds, ids = timed(lambda: torch_topk(tdb, tq, args.k))
    results["torch_matmul_topk"] = {"queries_per_s": args.queries / seconds}
    top1["torch_matmul_topk"] = ids[:, 0]

    if torch.cuda.is_available():  # evaluation's GPU path when faiss has no GPU support
        gpus = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
        torch_search(db[:1000], q[:10], args.k, gpus)  # CUDA context and kernels, untimed
        seconds, (_, ids) = timed(lambda: torch_search(db, q, args.k, gpus))
        results["torch_gpu_sharded"] = {"queries_per_s": args.queries / seconds,
                                        "gpus": len(gpus), "includes_copy_to_gpu": True}
        top1["torch_gpu_sharded"] = ids[:, 0]

    reference = top1["faiss_single"]
    print(json.dumps({
        "database": args.database, "dim": args.dim, "queries": args.queries, "k": args.k,
        "faiss_threads": threads, "torch_threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS", ""),
        "results": results,
        "top1_agreement_with_faiss_single": {
            name: float((ids == reference).mean()) for name, ids in top1.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
