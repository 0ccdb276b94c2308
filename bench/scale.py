"""Scale: how time and memory grow with images, classes and ranks, measured side by side.

    dist-geo bench scale [--quick] [--names 1000000 5000000] [--classes 100000 1000000]
                         [--worlds 1 2] [--sample-rates 1.0 0.1] [--nproc 2] [--device cpu]
                         [--only names heads scaling] [--out runs/bench_scale]

Prints one JSON object with three parts; every measurement runs in a fresh process, so that
one size's memory does not pollute the next one's (peak memory is that process's peak RSS
minus its RSS once the modules are imported; on a GPU, the CUDA allocator's peak).

- `names`: per size N, N VG names of a synthetic street grid (dist_geo/data/synth/names.py)
  written as `train_images_paths.txt` (cached under --out), then the dataset side of
  `dist-geo shard` without images: parsing (`list_images`), CosPlace grouping (M=10, alpha=30,
  N=5, L=2, classes of >= 10 images) and the class-uniform shard plan of every group, one group
  at a time as the shard writer does. Times are the process's CPU seconds (single-threaded
  work: its wall time on an idle machine, and steadier than wall time on a shared one; the
  wall time of all three is beside them), the fastest of --repeats runs. `names_growth`
  divides each figure by the previous size's, and that by the size ratio (`*_per_name_ratio`):
  1.0 is linear growth.
- `heads`: per (classes, world, sample_rate), one group's `ShardedMarginHead` alone, one rank
  per process (gloo and one thread each on the CPU; NCCL and one GPU each with --device cuda):
  bytes per rank of its weight and Adam state, from the tensors themselves
  (`partial_fc.memory_bytes`), the median step time (forward, backward, Adam step; 32
  embeddings of 512-d per rank; after one warm-up step) and each rank's peak memory above its
  start. `heads_vs_world_1` divides a rank's figures at world w by world 1's.
- `scaling`: `dist-geo train` end to end on the tiny synthetic world with 1 and --nproc ranks,
  one thread each, the same batch per rank; images/s is the trainer's own figure for its last
  epoch, efficiency = images/s(nproc) / images/s(1). The machine's load average is recorded
  beside it: ranks that share cores with other work do not scale. `--device cuda` runs it on
  GPUs (DALI's GPU decoding, NCCL), one rank per GPU.

--quick: 200k and 1M names, 2 timed head steps, 30 iterations per scaling epoch (under 15 min
on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dist_geo.config import LossConfig, OptimConfig, build_config
from dist_geo.data.groups import build_groups
from dist_geo.data.synth import write_world
from dist_geo.data.synth.names import write_names_list
from dist_geo.data.vg_format import images_paths_file, list_images
from dist_geo.distributed import DistContext
from dist_geo.model.partial_fc import build_head, memory_bytes
from dist_geo.shards.writer import plan_samples, write_shards
from dist_geo.tracking import peak_memory_mb
from dist_geo.train.engine import deepspeed_config
from dist_geo.train.launch import launch_local
from dist_geo.train.optim import build_optimizer

GROUPING = {"M": 10, "alpha": 30, "N": 5, "L": 2, "min_images_per_class": 10}  # CosPlace's
DIM, HEAD_BATCH = 512, 32


# ---------------------------------------------------------------- names
def names_child(folder: Path, n: int) -> dict[str, Any]:
    """Parse, group and plan `folder`'s list in this (fresh) process."""
    cpu = torch.device("cpu")
    base, wall = peak_memory_mb(cpu), time.perf_counter()
    start = time.process_time()
    records, _ = list_images(folder)
    parsed = time.process_time()
    rss_parse = peak_memory_mb(cpu)
    groups = build_groups(records, **GROUPING)
    grouped = time.process_time()
    samples = 0
    for g, group in enumerate(groups):  # one plan at a time, as the shard writer does
        samples += len(plan_samples(group, "class_uniform", random.Random(f"0/{g}")))
    planned = time.process_time()
    peak = peak_memory_mb(cpu) - base
    return {
        "names": n, "parse_s": round(parsed - start, 2), "group_s": round(grouped - parsed, 2),
        "plan_s": round(planned - grouped, 2), "wall_s": round(time.perf_counter() - wall, 2),
        "peak_mb": round(peak, 1),
        "parse_peak_mb": round(rss_parse - base, 1),
        "groups": len(groups),
        "classes": sum(g.num_classes for g in groups),
        "classes_per_group_max": max(g.num_classes for g in groups),
        "grouped_images": sum(g.num_images for g in groups), "planned_samples": samples,
    }


def measure_names(sizes: list[int], repeats: int, out: Path) -> tuple[list[dict], list[dict]]:
    """Each size `repeats` times, each in a fresh process; the fastest time of each stage (the
    least disturbed by other work on the machine), the largest peak memory."""
    keys = ("parse_s", "group_s", "plan_s", "wall_s", "peak_mb")
    rows = []
    for n in sizes:
        folder = out / f"names_{n}" / "train"
        if not images_paths_file(folder).exists():
            write_names_list(folder, n)
        runs = [json.loads(subprocess.run(
            [sys.executable, __file__, "--names-child", str(folder), str(n)],
            check=True, capture_output=True, text=True).stdout) for _ in range(repeats)]
        peak = max(r["peak_mb"] for r in runs)
        rows.append({**runs[0], **{k: min(r[k] for r in runs) for k in keys if k != "peak_mb"},
                     "peak_mb": peak, "bytes_per_name": round(peak * 2**20 / n),
                     "repeats": repeats})
    growth = [
        {"from": a["names"], "to": b["names"], "size_ratio": b["names"] / a["names"],
         **{f"{k}_ratio": round(b[k] / a[k], 2) for k in keys if a[k] > 0},
         **{f"{k}_per_name_ratio": round(b[k] / a[k] * a["names"] / b["names"], 2)
            for k in keys if a[k] > 0}}
        for a, b in zip(rows, rows[1:])
    ]
    return rows, growth


# ---------------------------------------------------------------- heads
def head_rank(rank: int, world: int, classes: int, sample_rate: float, steps: int, port: int,
              device: str, out: str) -> None:
    """One rank: build the head and its Adam, time `steps` steps after one warm-up step."""
    on = torch.device("cuda", rank) if device == "cuda" else torch.device("cpu")
    ctx = DistContext(rank=rank, world_size=world, local_rank=rank, device=on)
    if device == "cuda":
        torch.cuda.set_device(ctx.device)
    else:
        torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group(ctx.backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)
    base = peak_memory_mb(ctx.device)  # RSS on the CPU, 0 on a GPU (its allocator's peak)
    head = build_head(LossConfig(sample_rate=sample_rate), DIM, classes, ctx, seed=0)
    optimizer = build_optimizer(head.parameters(), OptimConfig(), lr=1e-2)
    generator = torch.Generator(ctx.device).manual_seed(rank)
    times = []
    for _ in range(steps + 1):
        embeddings = torch.randn(HEAD_BATCH, DIM, generator=generator, device=ctx.device,
                                 requires_grad=True)
        labels = torch.randint(0, classes, (HEAD_BATCH,), generator=generator, device=ctx.device)
        start = time.perf_counter()
        head(embeddings, labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    result = {"step_ms": 1000 * statistics.median(times[1:]),
              "bytes": memory_bytes(head, optimizer), "peak_mb": peak_memory_mb(ctx.device) - base}
    Path(out.format(rank)).write_text(json.dumps(result))
    if world > 1:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_head(classes: int, world: int, sample_rate: float, steps: int, device: str,
                 out: Path) -> dict:
    pattern = str(out / f"head_{classes}_{world}_{sample_rate}_rank{{}}.json")
    mp.spawn(head_rank, args=(world, classes, sample_rate, steps, free_port(), device, pattern),
             nprocs=world, join=True)
    ranks = [json.loads(Path(pattern.format(r)).read_text()) for r in range(world)]
    return {
        "classes": classes, "world": world, "sample_rate": sample_rate,
        "bytes_per_rank": max(r["bytes"] for r in ranks),
        "step_ms": round(max(r["step_ms"] for r in ranks), 1),
        "peak_mb_per_rank": round(max(r["peak_mb"] for r in ranks), 1),
        "steps": steps, "batch_per_rank": HEAD_BATCH, "device": device,
    }


def head_goals(rows: list[dict]) -> list[dict]:
    """Per-rank bytes and peak memory at world w relative to world 1, per (classes, sample_rate)."""
    one = {(r["classes"], r["sample_rate"]): r for r in rows if r["world"] == 1}
    return [
        {"classes": r["classes"], "world": r["world"], "sample_rate": r["sample_rate"],
         "bytes_vs_world_1": round(r["bytes_per_rank"] / one[key]["bytes_per_rank"], 3),
         "peak_vs_world_1": round(r["peak_mb_per_rank"] / one[key]["peak_mb_per_rank"], 3)}
        for r in rows if r["world"] > 1 and (key := (r["classes"], r["sample_rate"])) in one
    ]


# ---------------------------------------------------------------- scaling
def batch_size_key(per_rank: int, nproc: int, base: dict[str, Any]) -> int:
    """The `train.batch_size` giving `per_rank` images per rank: the global batch per_rank *
    nproc when the key means the global batch, else per_rank (read from the engine's config)."""
    probe = build_config(base=base, overrides=[f"train.batch_size={per_rank * nproc}"])
    ctx = DistContext(rank=0, world_size=nproc, local_rank=0, device=torch.device("cpu"))
    micro = deepspeed_config(probe, ctx)["train_micro_batch_size_per_gpu"]
    return per_rank * nproc if micro == per_rank else per_rank


def measure_scaling(args: argparse.Namespace, out: Path) -> dict:
    world = write_world(out / "world", seed=0, preset="tiny")
    base = {
        "data": {"dataset": str(world), "shards": str(out / "shards"), "loader": args.loader,
                 "image_size": args.image_size, "N": 2, "L": 1, "groups_num": 1,
                 "min_images_per_class": 3, "num_workers": args.workers, "shard_size": 200},
        "train": {"epochs_num": args.epochs, "iterations_per_epoch": args.iterations,
                  "validate": False, "test": False, "device": args.device},
        "tracking": {"enabled": False},
    }
    write_shards(world, out / "shards", build_config(base=base).data)
    ranks = sorted({1, args.nproc})
    ips: dict[str, float] = {}
    load: dict[str, float] = {}
    for nproc in ranks:
        cfg = build_config(base=base, overrides=[
            f"train.batch_size={batch_size_key(args.batch, nproc, base)}",
            f"train.out={out / f'train_{nproc}'}"])
        threads = 1 if args.device == "cpu" else None
        ips[str(nproc)] = round(launch_local(cfg, nproc, threads)["metrics"]["images_per_s"], 1)
        load[str(nproc)] = round(os.getloadavg()[0], 1)
    return {
        "images_per_s": ips, "efficiency": round(ips[str(ranks[-1])] / ips["1"], 2),
        "load_avg_1min_after": load,
        "batch_per_rank": args.batch, "image_size": args.image_size, "epochs": args.epochs,
        "iterations_per_epoch": args.iterations, "device": args.device, "loader": args.loader,
        "workers": args.workers,
    }


# ---------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dist-geo bench scale",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, under 15 min here")
    parser.add_argument("--only", nargs="+", choices=("names", "heads", "scaling"),
                        default=["names", "heads", "scaling"])
    parser.add_argument("--names", type=int, nargs="+", help="sizes (default 1M 5M; quick 200k 1M)")
    parser.add_argument("--repeats", type=int, default=3, help="names: runs per size")
    parser.add_argument("--classes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sample-rates", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument("--head-steps", type=int, help="timed head steps (default 5; quick 2)")
    parser.add_argument("--nproc", type=int, default=2, help="ranks of the scaling run")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--loader", choices=("dali", "torch"),
                        help="scaling: default torch on cpu (in the rank's thread), dali on cuda")
    parser.add_argument("--workers", type=int,
                        help="scaling: data.num_workers (default 0 on cpu, 4 DALI threads on cuda)")
    parser.add_argument("--batch", type=int, default=32, help="scaling: images per rank")
    parser.add_argument("--image-size", type=int, default=32, help="scaling: crop side")
    parser.add_argument("--epochs", type=int, default=2, help="scaling: the last one is timed")
    parser.add_argument("--iterations", type=int, help="scaling: per epoch (default 60; quick 30)")
    parser.add_argument("--out", default="runs/bench_scale")
    parser.add_argument("--names-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.names = args.names or ([200_000, 1_000_000] if args.quick else [1_000_000, 5_000_000])
    args.head_steps = args.head_steps or (2 if args.quick else 5)
    args.iterations = args.iterations or (30 if args.quick else 60)
    cpu = args.device == "cpu"
    args.loader = args.loader or ("torch" if cpu else "dali")
    args.workers = (0 if cpu else 4) if args.workers is None else args.workers
    return args


def main() -> None:
    args = parse_args()
    if args.names_child:
        print(json.dumps(names_child(Path(args.names_child[0]), int(args.names_child[1]))))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"quick": args.quick, "cpus": os.cpu_count(),
                              "load_avg_1min_start": round(os.getloadavg()[0], 1)}
    started = time.perf_counter()
    if "names" in args.only:
        report["names"], report["names_growth"] = measure_names(args.names, args.repeats, out)
    if "heads" in args.only:
        report["heads"] = [measure_head(c, w, r, args.head_steps, args.device, out)
                           for c in args.classes for w in args.worlds for r in args.sample_rates]
        report["heads_vs_world_1"] = head_goals(report["heads"])
    if "scaling" in args.only:
        report["scaling"] = measure_scaling(args, out)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
