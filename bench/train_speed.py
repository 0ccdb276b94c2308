"""Training images/s against the hardware's ceiling, per precision, with a per-step breakdown.

    dist-geo bench train [--size cpu|gpu] [--device cpu|cuda] [--precisions fp32 bf16]
                         [--steps 60] [--warmup 10] [--rounds 3] [--loader dali|torch]
                         [--out runs/bench_train] [key=value ...]

One process, one rank, the fidelity recipe's network and batch (bench/worlds.py), measured side
by side in one run, per precision (fp32, bf16, and fp16 on a GPU):
- `ceiling_images_per_s`: the model-only ceiling: the same network, CosFace head, optimizers
  (dist_geo/train/optim.py) and precision (autocast over fp32 weights, GradScaler for fp16,
  channels-last as configured) in a plain PyTorch loop on one batch already on the device;
- `engine_images_per_s`: `dist-geo train`'s own step (DeepSpeed engine, sharded head, head
  optimizer, device-side loss accumulation) on that same on-device batch: its overhead alone;
- `end_to_end_images_per_s`: `dist-geo train`'s epoch with its loader reading the shards;
- `breakdown_ms`: per step, the time in each phase the trainer names (data, forward, head,
  backward, optimizer), from torch.profiler over a separate end-to-end epoch (CPU time of the
  phase; on a GPU also the device time of its kernels).
Each kind is warmed up first (`--warmup` steps), then measured `--rounds` times, interleaved with
the others; the best of its rounds is reported.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from dist_geo.config import Config, build_config
from dist_geo.distributed import DistContext, single_process
from dist_geo.model.network import build_model
from dist_geo.model.partial_fc import build_head
from dist_geo.shards.writer import write_shards
from dist_geo.train import trainer as trainer_module
from dist_geo.train.optim import build_optimizer
from worlds import SIZES, bench_world, train_overrides

PHASES = ("data", "forward", "head", "backward", "optimizer")
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fixed_batch(cfg: Config, classes: int, device: torch.device):
    size, batch = cfg.data.image_size, cfg.train.batch_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, classes, (batch,), generator=generator).to(device)
    return images, labels


class PlainStep:
    """The model-only ceiling: network + head + two Adams in a plain PyTorch loop, on one batch
    already on the device, with the trainer's precision and memory format."""

    def __init__(self, cfg: Config, classes: int, ctx: DistContext):
        torch.manual_seed(0)
        self.device, self.batch_size = ctx.device, cfg.train.batch_size
        memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        self.model = build_model(cfg.model).to(ctx.device, memory_format=memory_format).train()
        self.head = build_head(cfg.loss, cfg.model.fc_output_dim, classes, ctx)
        self.optimizers = [build_optimizer(self.model.parameters(), cfg.optim, cfg.optim.lr),
                           build_optimizer(self.head.parameters(), cfg.optim,
                                           cfg.optim.classifiers_lr)]
        self.dtype = AUTOCAST.get(cfg.train.precision)
        self.scaler = (torch.amp.GradScaler(ctx.device.type) if cfg.train.precision == "fp16"
                       else None)
        images, self.labels = fixed_batch(cfg, classes, ctx.device)
        self.images = images.contiguous(memory_format=memory_format)
        self.total = torch.zeros((), device=ctx.device)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                            enabled=self.dtype is not None):
            loss = self.head(self.model(self.images), self.labels)
        if self.scaler is None:
            loss.backward()
            for optimizer in self.optimizers:
                optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            for optimizer in self.optimizers:
                self.scaler.step(optimizer)
            self.scaler.update()
        self.total += loss.detach()  # no host sync per step, as in the trainer

    def images_per_s(self, steps: int) -> float:
        synchronize(self.device)
        started = time.perf_counter()
        for _ in range(steps):
            self.step()
        synchronize(self.device)
        return steps * self.batch_size / (time.perf_counter() - started)


class OnDevice:
    """The loader contract over one batch already on the device, forever."""

    def __init__(self, batch):
        self.batch = batch

    def __next__(self):
        return self.batch

    def stats(self) -> dict:
        return {"corrupt_samples": 0}


def epoch_speed(trainer, cfg: Config, steps: int, loader: OnDevice | None = None) -> float:
    """Images/s of one `dist-geo train` epoch of `steps` iterations (group 1, from its first
    batch), reading `loader` instead of the shards when given."""
    cfg.train.iterations_per_epoch = steps
    trainer.state.position = replace(trainer.state.position, epoch=1, batch=0)
    real = trainer_module.build_train_loader
    if loader is not None:
        trainer_module.build_train_loader = lambda *args, **kwargs: loader
    try:
        return trainer.train_epoch(1)["images_per_s"]
    finally:
        trainer_module.build_train_loader = real


def breakdown(trainer, cfg: Config, steps: int, device: torch.device) -> dict:
    """Per-step time of each phase the trainer names, from torch.profiler over one epoch."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        epoch_speed(trainer, cfg, steps)
    phases = {}
    for event in prof.key_averages():
        if event.key in PHASES:
            phases[event.key] = {"cpu_ms": round(event.cpu_time_total / 1e3 / steps, 3)}
            device_us = getattr(event, "device_time_total", 0) or 0
            if device_us:
                phases[event.key]["device_ms"] = round(device_us / 1e3 / steps, 3)
    return phases


def measure(cfg: Config, steps: int, warmup: int, rounds: int) -> dict:
    """The ceiling, the engine on the on-device batch and the trainer end to end, each the best
    of `rounds`, interleaved and in rotating order so that no kind is favoured by when it ran
    (this machine's speed drifts), after a warm-up of each; then the phase breakdown."""
    ctx = single_process(cfg.train.device)
    trainer = trainer_module.Trainer(cfg, ctx)
    classes = trainer.heads[1].num_classes
    plain = PlainStep(cfg, classes, ctx)
    constant = OnDevice(fixed_batch(cfg, classes, ctx.device))
    kinds = {"ceiling": lambda n: plain.images_per_s(n),
             "engine": lambda n: epoch_speed(trainer, cfg, n, constant),
             "end_to_end": lambda n: epoch_speed(trainer, cfg, n)}
    for run in kinds.values():
        run(warmup)
    best = dict.fromkeys(kinds, 0.0)
    names = list(kinds)
    for r in range(rounds):
        for name in names[r % 3:] + names[:r % 3]:
            best[name] = max(best[name], kinds[name](steps))
    return {**best, "breakdown": breakdown(trainer, cfg, steps, ctx.device)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="dist-geo bench train",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_train"))
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--loader", choices=["dali", "torch"], default="dali")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved measurements of each kind; the best is reported")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dist-geo config overrides, e.g. train.channels_last=false")
    args = parser.parse_args()
    precisions = args.precisions or (["fp32", "bf16", "fp16"] if args.device == "cuda"
                                     else ["fp32", "bf16"])
    recipe = SIZES[args.size]["recipe"]
    world = bench_world(args.out, args.size)
    shards = args.out / "shards"
    common = train_overrides(recipe, world, shards) + [
        f"train.device={args.device}", f"data.loader={args.loader}", "train.validate=false",
        "train.test=false", "train.log_every=20", *args.overrides]
    write_shards(world, shards, build_config(overrides=common).data)
    report: dict = {"size": args.size, "device": args.device, "loader": args.loader,
                    "image_size": recipe["image_size"], "batch": recipe["batch_size"],
                    "threads": torch.get_num_threads(), "steps": args.steps, "rounds": args.rounds,
                    "overrides": args.overrides, "ceiling_images_per_s": {},
                    "engine_images_per_s": {}, "end_to_end_images_per_s": {},
                    "end_to_end_over_ceiling": {}, "breakdown_ms": {}}
    for precision in precisions:
        with tempfile.TemporaryDirectory(dir=args.out) as out:
            cfg = build_config(overrides=common + [f"train.precision={precision}",
                                                   f"train.out={out}"])
            measured = measure(cfg, args.steps, args.warmup, args.rounds)
            ceiling = measured["ceiling"]
        report["ceiling_images_per_s"][precision] = round(ceiling, 1)
        report["engine_images_per_s"][precision] = round(measured["engine"], 1)
        report["end_to_end_images_per_s"][precision] = round(measured["end_to_end"], 1)
        report["end_to_end_over_ceiling"][precision] = round(measured["end_to_end"] / ceiling, 3)
        report["breakdown_ms"][precision] = measured["breakdown"]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
