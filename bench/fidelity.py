"""Does `dist-geo train` learn what the method learns? The oracle beside our trainer's variants.

    dist-geo bench fidelity [recipe_key=value ...] [--out runs/bench_fidelity] [--size cpu|gpu]
                            [--device cpu|cuda] [--seeds 0 1] [--variants oracle torch_fp32 ...]

One synthetic world, one recipe, one budget; every trainer trained with each seed from random
initialisation, its best epoch by val recall@1 tested on the test split:
- `oracle`: bench/oracle.py, a plain single-process PyTorch loop of CosPlace's method that
  shares nothing with dist-geo but the network definition;
- `torch_fp32`, `dali_fp32`: `dist-geo train`, one rank, each loader;
- `torch_fp32_2ranks`: two data-parallel ranks with the same global batch; `dali_fp32_2ranks`
  (asked for by name) the same with the DALI loader, as `dist-geo demo` trains on a CPU;
- `torch_bf16`: bf16 autocast (fp32 master weights); on a GPU also `dali_bf16`, `dali_fp16`.
The JSON holds, per trainer and seed, the per-epoch losses and val recalls and the test
recall@1/5, then per trainer the means over seeds, their spread (max - min) and the gap to the
oracle's mean (`fidelity`: within `--tolerance` points, or above). `untrained` is the initial
network's test recall (seed 0), the level learning must clearly exceed.

`--size cpu` (the default on the CPU, 38 minutes on 2 cores, README) renders a 96 px world and
trains on 64 px crops; `--size gpu` (the default with `--device cuda`) is the recipe of the
fidelity issue: a world rendered at 128 px and upscaled to 512 px, 512 px crops, test at native
size. Recipe overrides come before the options (`--seeds` takes every number after it).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from dist_geo.config import build_config
from dist_geo.shards.writer import write_shards
from dist_geo.train.launch import finished_result, start_local
from worlds import SIZES, bench_world, train_overrides

BENCH = Path(__file__).resolve().parent
ORACLE = BENCH / "oracle.py"
VARIANTS = {  # name: (loader, precision, ranks)
    "torch_fp32": ("torch", "fp32", 1),
    "dali_fp32": ("dali", "fp32", 1),
    "torch_fp32_2ranks": ("torch", "fp32", 2),
    "dali_fp32_2ranks": ("dali", "fp32", 2),
    "torch_bf16": ("torch", "bf16", 1),
    "dali_bf16": ("dali", "bf16", 1),
    "dali_fp16": ("dali", "fp16", 1),
}
CPU_VARIANTS = ["oracle", "torch_fp32", "dali_fp32", "torch_fp32_2ranks", "torch_bf16"]
GPU_VARIANTS = CPU_VARIANTS + ["dali_bf16", "dali_fp16"]


def run_oracle(world: Path, recipe: dict, seed: int, device: str, out: Path) -> dict:
    out.parent.mkdir(parents=True, exist_ok=True)
    pairs = [f"{k}={json.dumps(v)}" for k, v in recipe.items()]
    subprocess.run([sys.executable, str(ORACLE), "--dataset", str(world), "--seed", str(seed),
                    "--device", device, "--out", str(out), *pairs],
                   check=True, stdout=subprocess.DEVNULL)
    result = json.loads(out.read_text())
    return {"epochs": [{"loss": e["loss"], "val_recall_at_1": e["val_R@1"],
                        "val_recall_at_5": e["val_R@5"]} for e in result["epochs"]],
            "best_epoch": result["best_epoch"],
            "test_recall_at_1": result["test"]["test"]["R@1"],
            "test_recall_at_5": result["test"]["test"]["R@5"]}


def run_dist_geo(variant: str, overrides: list[str], seed: int, device: str, out: Path) -> dict:
    loader, precision, ranks = VARIANTS[variant]
    cfg = build_config(overrides=[
        *overrides, f"data.loader={loader}", f"train.precision={precision}",
        f"train.seed={seed}", f"train.device={device}", f"train.out={out}",
        "train.overwrite=true",  # a benchmark measures a fresh run every time
    ])
    epoch_log = out / "epochs.jsonl"
    epoch_log.unlink(missing_ok=True)
    process = start_local(cfg, nproc=ranks, epoch_log=epoch_log)
    process.wait()
    result = finished_result(cfg, process, ranks)
    epochs = [json.loads(line)["metrics"] for line in epoch_log.read_text().splitlines()]
    metrics = result["metrics"]
    return {"epochs": [{"loss": e["train_loss"], "val_recall_at_1": e["val_recall_at_1"],
                        "val_recall_at_5": e["val_recall_at_5"]} for e in epochs],
            "best_epoch": result["best_epoch"],
            "test_recall_at_1": metrics["test_recall_at_1"],
            "test_recall_at_5": metrics["test_recall_at_5"]}


def summarise(runs: dict[str, list[dict]], tolerance: float) -> dict[str, dict]:
    """Means over seeds, the spread, and each trainer's gap to the oracle's mean test R@1."""
    summary = {}
    for name, seeds in runs.items():
        r1 = [s["test_recall_at_1"] for s in seeds]
        r5 = [s["test_recall_at_5"] for s in seeds]
        summary[name] = {
            "test_recall_at_1_mean": round(statistics.mean(r1), 2),
            "test_recall_at_5_mean": round(statistics.mean(r5), 2),
            "test_recall_at_1_spread": round(max(r1) - min(r1), 2),
            "final_loss_mean": round(statistics.mean(s["epochs"][-1]["loss"] for s in seeds), 4),
        }
    if "oracle" in summary:
        reference = summary["oracle"]["test_recall_at_1_mean"]
        for name, row in summary.items():
            gap = row["test_recall_at_1_mean"] - reference
            row["gap_to_oracle"] = round(gap, 2)
            row["fidelity"] = gap >= -tolerance
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(prog="dist-geo bench fidelity",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_fidelity"))
    parser.add_argument("--size", choices=sorted(SIZES),
                        help="the world and crops (default: cpu on the CPU, gpu with --device cuda)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", choices=["oracle", *VARIANTS])
    parser.add_argument("--tolerance", type=float, default=1.5,
                        help="points of mean test R@1 a trainer may fall below the oracle")
    parser.add_argument("recipe", nargs="*", metavar="key=value",
                        help="recipe overrides (bench/oracle.py's Recipe keys), e.g. epochs_num=2")
    args = parser.parse_args()
    args.size = args.size or ("gpu" if args.device == "cuda" else "cpu")
    size = SIZES[args.size]
    recipe = dict(size["recipe"])
    for text in args.recipe:
        key, _, value = text.partition("=")
        if key not in recipe:
            parser.error(f"unknown recipe key '{key}' (known: {', '.join(recipe)})")
        recipe[key] = type(recipe[key])(json.loads(value) if value not in ("", None) else value)
    variants = args.variants or (GPU_VARIANTS if args.device == "cuda" else CPU_VARIANTS)

    started = time.perf_counter()
    world = bench_world(args.out, args.size)
    overrides = train_overrides(recipe, world, args.out / "shards")
    write_shards(world, args.out / "shards", build_config(overrides=overrides).data)
    report: dict = {"size": args.size, "device": args.device, "recipe": recipe,
                    "world": {"path": str(world), **size["world"]}, "seeds": args.seeds,
                    "untrained": run_oracle(world, {**recipe, "epochs_num": 0}, args.seeds[0],
                                            args.device, args.out / "oracle" / "untrained.json"),
                    "runs": {}, "time_s": {}}
    for name in variants:
        t = time.perf_counter()
        report["runs"][name] = []
        for seed in args.seeds:
            out = args.out / name / f"seed{seed}"
            run = (run_oracle(world, recipe, seed, args.device, out / "oracle.json")
                   if name == "oracle" else run_dist_geo(name, overrides, seed, args.device, out))
            report["runs"][name].append({"seed": seed, **run})
            print(f"{name} seed {seed}: test R@1 {run['test_recall_at_1']:.1f}", file=sys.stderr)
        report["time_s"][name] = round(time.perf_counter() - t, 1)
    report["summary"] = summarise(report["runs"], args.tolerance)
    report["time_s"]["total"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
