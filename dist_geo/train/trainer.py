"""`train(cfg, ctx)`: CosPlace's training schedule on a DeepSpeed engine, with exact resume.

One run, top to bottom:
  shards manifest (groups, classes per group)        dist_geo/shards/manifest.py
  one group's batches for this rank                   dist_geo/loaders/
  network in a DeepSpeed engine, one head per group   engine.py, dist_geo/model/
  for epoch k: group g = k mod groups_num              (CosPlace's schedule)
      head g (and its optimizer state) -> device, the others stay on the CPU
      iterations_per_epoch batches of group g's shards (every rank its own shards)
      validation recall on `val` -> best checkpoint by recall@1
      checkpoints/last (and best, epoch_NNN); MLflow; on_epoch_end hook
  final test of the best model on eval.splits (test, test-night)

Exact resume: a checkpoint holds the network, all heads, all optimizers, the lr schedule,
every rank's RNG states and the loader position (epoch, batch); the loader is deterministic in
(seed, epoch, rank) and skips the batches already done, so 1 epoch + resume + 1 epoch ends with
the same weights as 2 epochs. A run stopped by SIGTERM/SIGINT saves checkpoints/last at a step
all ranks agree on, and one whose loss stays non-finite stops without saving (stopping.py).
A train.out holding an earlier run's checkpoints is only resumed or, explicitly, overwritten.
"""
from __future__ import annotations

import logging
import math
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.profiler import record_function

from dist_geo.atomic import write_json
from dist_geo.config import Config
from dist_geo.distributed import DistContext
from dist_geo.errors import CheckpointError
from dist_geo.eval.evaluate import EvalResults, evaluate
from dist_geo.eval.plots import plot_training
from dist_geo.eval.report import Metrics, markdown_table, mlflow_metrics
from dist_geo.loaders.factory import build_train_loader
from dist_geo.logs import progress
from dist_geo.model.checkpoint import load_model, resolve
from dist_geo.model.checkpoint import read_manifest as read_checkpoint_manifest
from dist_geo.model.network import build_model
from dist_geo.model.partial_fc import build_head
from dist_geo.shards.manifest import read_manifest, shards_dir
from dist_geo.tracking import Tracker, peak_memory_mb
from dist_geo.train import checkpoint as ckpt
from dist_geo.train.engine import build_engine, step_head
from dist_geo.train.optim import build_optimizer, build_scheduler, head_lr, set_lr
from dist_geo.train.stopping import Preempted, RunGuard
from dist_geo.train.sync_batchnorm import synchronise_batchnorm

log = logging.getLogger(__name__)

EpochHook = Callable[[int, dict[str, float], Path], None]


def seed_everything(seed: int, rank: int, deterministic: bool) -> None:
    """Same torch seed on every rank (identical network init), per-rank python/numpy streams."""
    torch.manual_seed(seed)
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def move_head(
    head: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
) -> None:
    """A head and its optimizer's state to `device` (in place: the optimizer keeps its params).
    The step counts move too: fused optimizers keep them beside the weights."""
    head.to(device)
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value):
                state[key] = value.to(device)


def run_evaluation(
    model: torch.nn.Module, cfg: Config, ctx: DistContext, splits: list[str]
) -> dict[str, float]:
    """{"val_recall_at_1": %, ...} of `model` on `splits` (all ranks call it and get it)."""
    return mlflow_metrics(evaluate(model, cfg.data.dataset, cfg, ctx, splits=splits))


def prepare_network(model: torch.nn.Module, cfg: Config, ctx: DistContext) -> torch.nn.Module:
    """The network as the engine gets it: on its device, batch norm over the global batch when
    the batch is split (train/sync_batchnorm.py)."""
    if ctx.is_distributed and cfg.train.sync_bn:
        model = synchronise_batchnorm(model, ctx.device)
    return model.to(ctx.device)


def to_channels_last(engine: Any, cfg: Config) -> None:
    """NHWC weights, after `deepspeed.initialize` (its broadcast of the initial weights views
    them as contiguous bytes). ZeRO 1/2 keep the weights as views of their flat buffers, which
    must stay as they are: there only the activations are NHWC."""
    if cfg.train.channels_last and cfg.train.zero_stage == 0:
        engine.module.to(memory_format=torch.channels_last)


class Trainer:
    """The live objects of a run and the epoch loop over them (use `train`)."""

    def __init__(self, cfg: Config, ctx: DistContext):
        self.cfg, self.ctx = cfg, ctx
        self.out = Path(cfg.train.out)
        self.checkpoints = self.out / "checkpoints"
        if ckpt.check_run_folder(cfg) and ctx.is_main:  # an earlier run, replaced on purpose
            log.warning("train.overwrite=true: deleting the earlier run's %s", self.checkpoints)
            shutil.rmtree(self.checkpoints)
        ctx.barrier()
        self.guard = RunGuard(self.out, cfg.train.max_nonfinite_steps, ctx)
        seed_everything(cfg.train.seed, ctx.rank, cfg.train.deterministic)
        shard_manifest = read_manifest(shards_dir(cfg.data))  # DataError naming it if missing
        groups = shard_manifest["groups"][: cfg.data.groups_num]
        if len(groups) < cfg.data.groups_num and ctx.is_main:
            log.warning("the shards hold %d groups, fewer than data.groups_num=%d",
                        len(groups), cfg.data.groups_num)
        model = prepare_network(build_model(cfg.model), cfg, ctx)
        optimizer = build_optimizer(model.parameters(), cfg.optim, cfg.optim.lr)
        scheduler = build_scheduler(optimizer, cfg.sched, cfg.train.iterations_per_epoch)
        self.engine = build_engine(model, optimizer, scheduler, cfg, ctx)
        to_channels_last(self.engine, cfg)
        if cfg.train.compile:
            self.engine.compile()
        self.loss_log: list[tuple[int, float]] = []  # (step, mean loss since the previous entry)
        # One head per group, seeded per group; inactive heads and their states live on the CPU.
        self.heads = [
            build_head(cfg.loss, cfg.model.fc_output_dim, int(g["num_classes"]), ctx,
                       seed=cfg.train.seed * 1000 + i).cpu()
            for i, g in enumerate(groups)
        ]
        self.head_optimizers = [
            build_optimizer(h.parameters(), cfg.optim, cfg.optim.classifiers_lr) for h in self.heads
        ]
        self.state = ckpt.RunState()
        if cfg.train.resume:
            last = self.checkpoints / "last"
            try:
                resolve(last)
            except CheckpointError:
                raise CheckpointError(
                    f"{last}: train.resume=true but there is no checkpoint to resume from"
                ) from None
            self.state = ckpt.load_checkpoint(
                last, ctx, self.engine, self.heads, self.head_optimizers
            )
            if ctx.is_main:
                log.info("resumed from %s at epoch %d batch %d (step %d)", last,
                         self.state.position.epoch, self.state.position.batch,
                         self.state.position.step)
        self.tracker = Tracker(cfg, ctx, self.state.mlflow_run_id)
        self.state.mlflow_run_id = self.tracker.run_id

    @property
    def num_groups(self) -> int:
        return len(self.heads)

    def save(self, name: str) -> Path:
        return ckpt.save_checkpoint(
            self.checkpoints / name, self.ctx, self.cfg, self.state, self.engine,
            self.heads, self.head_optimizers,
        )

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """The iterations of one epoch on group `epoch mod groups_num`, from the saved batch on.

        A step never waits for the device: the loss is summed on the device and read every
        `train.log_every` steps (and at the epoch's end), the only host syncs of the loop, with
        the checks that may stop the run (stopping.py).
        """
        cfg, ctx, engine = self.cfg, self.ctx, self.engine
        g = epoch % self.num_groups
        head, head_optimizer = self.heads[g], self.head_optimizers[g]
        move_head(head, head_optimizer, ctx.device)
        head.sample_step = self.state.position.step
        start = self.state.position.batch if self.state.position.epoch == epoch else 0
        loader = build_train_loader(cfg, g, ctx, epoch, start_batch=start)
        iterations = cfg.train.iterations_per_epoch
        memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        engine.train()
        head.train()
        bar = progress(total=iterations, initial=start, desc=f"epoch {epoch} (group {g})",
                       enabled=ctx.is_main)
        epoch_loss = torch.zeros((), device=ctx.device)
        window_loss = torch.zeros((), device=ctx.device)
        window_start = start
        started = time.perf_counter()
        for batch in range(start, iterations):
            # The phases are named for torch.profiler (`dist-geo bench train` breaks a step down).
            with record_function("data"):
                images, labels = next(loader)
            with record_function("forward"):
                descriptors = engine(images.contiguous(memory_format=memory_format))
            with record_function("head"):
                loss = head(descriptors, labels)
            with record_function("backward"):
                engine.backward(loss)
            with record_function("optimizer"):
                lr = engine.get_lr()[0]  # this step's lr (the scheduler steps in engine.step)
                set_lr(head_optimizer, head_lr(cfg.optim, lr))
                step_head(engine, head, head_optimizer, cfg.optim.clip_grad_norm)
                engine.step()
            epoch_loss += loss.detach()
            window_loss += loss.detach()
            self.guard.count(loss.detach())
            self.state.position = ckpt.Position(epoch, batch + 1, self.state.position.step + 1)
            bar.update()
            step = self.state.position.step
            if step % cfg.train.log_every == 0 or batch + 1 == iterations:
                (window,) = self.guard.check(step, window_loss)
                mean = window / (batch + 1 - window_start)
                window_loss.zero_()
                window_start = batch + 1
                speed = (batch + 1 - start) * cfg.train.batch_size / (time.perf_counter() - started)
                self.loss_log.append((step, mean))
                bar.set_postfix(loss=f"{mean:.4f}", img_s=f"{speed:.1f}")
                self.tracker.log_metrics(
                    {"loss": mean, "lr": lr, "classifiers_lr": head_lr(cfg.optim, lr),
                     "images_per_s": speed}, step)
            periodic = cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0
            if (periodic or self.guard.stop_now) and batch + 1 < iterations:  # else end_epoch
                self.guard.check(step)  # never save weights that have diverged
                self.save("last")
                if self.guard.stop_now:  # a signal, or one the ranks just agreed on
                    bar.close()
                    raise self.guard.preempted(**vars(self.state.position))
        bar.close()
        move_head(head, head_optimizer, torch.device("cpu"))
        elapsed = time.perf_counter() - started
        done = iterations - start
        corrupt = torch.tensor(float(loader.stats()["corrupt_samples"]), device=ctx.device)
        if ctx.is_distributed:
            torch.distributed.all_reduce(corrupt)  # skipped samples of all ranks
        return {
            "train_loss": epoch_loss.item() / done if done else float("nan"),
            "corrupt_samples": corrupt.item(),
            "images_per_s": done * cfg.train.batch_size / elapsed if elapsed > 0 else 0.0,
            "epoch_time_s": elapsed,
            "peak_memory_mb": peak_memory_mb(ctx.device),
        }

    def end_epoch(
        self, epoch: int, metrics: dict[str, float], on_epoch_end: EpochHook | None
    ) -> None:
        """Validate, checkpoint (last, best, epoch_NNN), log, call the hook.

        Epochs are numbered from 0 everywhere a person reads them (this log line, the `epoch`
        metric in MLflow and in the manifest's metrics, epoch_NNN, best_epoch, --epoch-log);
        epoch k trains group k mod groups_num. The manifest's `position.epoch` is where a
        resume continues: the next epoch's number.
        """
        cfg, ctx = self.cfg, self.ctx
        metrics["epoch"] = epoch
        if cfg.train.validate:
            metrics.update(run_evaluation(self.engine.module, cfg, ctx, ["val"]))
        recall = metrics.get("val_recall_at_1", float(epoch))  # no validation: latest is best
        is_best = recall > self.state.best_recall_at_1 and math.isfinite(metrics["train_loss"])
        if is_best:
            self.state.best_recall_at_1, self.state.best_epoch = recall, epoch
        self.state.metrics = metrics
        self.state.position = ckpt.Position(epoch + 1, 0, self.state.position.step)
        last = self.save("last")
        if ctx.is_main:
            if is_best:
                ckpt.copy_checkpoint(last, self.checkpoints / "best")
            if cfg.train.keep_epoch_checkpoints:
                ckpt.copy_checkpoint(last, self.checkpoints / f"epoch_{epoch:03d}")
            self.tracker.log_metrics(metrics, self.state.position.step)
            log.info("epoch %d of 0-%d (group %d): loss %.4f, %.1f images/s, %s%s", epoch,
                     cfg.train.epochs_num - 1, epoch % self.num_groups, metrics["train_loss"],
                     metrics["images_per_s"],
                     f"val R@1 {metrics['val_recall_at_1']:.1f}" if cfg.train.validate else "",
                     " (best)" if is_best else "")
            if on_epoch_end is not None:
                on_epoch_end(epoch, dict(metrics), last)
        ctx.barrier()

    def final_test(self) -> EvalResults:
        """The best checkpoint's network on eval.splits (test, test-night)."""
        model = load_model(self.checkpoints / "best", self.ctx.device)
        return evaluate(model, self.cfg.data.dataset, self.cfg, self.ctx, self.cfg.eval.splits)

    def report(self, test: Metrics) -> None:
        """Rank 0, once training and testing are done: the run's results table (best epoch's
        val recalls, test recalls) as `<train.out>/results.json` and as the MLflow run's
        description, the best checkpoint and the training curves as artifacts."""
        best = self.checkpoints / "best"
        best_metrics = read_checkpoint_manifest(best)["metrics"]
        val = {k.removeprefix("val_"): v for k, v in best_metrics.items() if k.startswith("val_")}
        table = ({f"val (epoch {self.state.best_epoch})": val} if val else {}) | dict(test)
        results = write_json(self.out / "results.json", {
            "best_epoch": self.state.best_epoch, "steps": self.state.position.step,
            "best_checkpoint": str(best), "results": table}, indent=1)
        self.tracker.log_artifacts(results)
        self.tracker.set_description(
            f"Best epoch {self.state.best_epoch} (by val recall@1) of {self.cfg.train.epochs_num}, "
            f"{self.state.position.step} steps; recall@N (%):\n\n"
            + markdown_table(table, self.cfg.eval.recall_values))
        for name in ("model.pt", "config.yaml", "manifest.json"):
            self.tracker.log_artifacts(best / name, "best_checkpoint")
        if self.tracker.run:
            curves = plot_training(
                self.tracker.history("loss"), self.tracker.history("val_recall_at_1"),
                self.tracker.history("epoch"), self.num_groups, self.out / "training_curves.png")
            self.tracker.log_artifacts(curves, "plots")

    def run(self, on_epoch_end: EpochHook | None = None) -> dict[str, Any]:
        cfg = self.cfg
        status = "FAILED"
        try:
            with self.guard:
                for epoch in range(self.state.position.epoch, cfg.train.epochs_num):
                    metrics = self.train_epoch(epoch)
                    self.end_epoch(epoch, metrics, on_epoch_end)
                    if self.guard.stop_now:  # saved by end_epoch (a resume runs what is left)
                        raise self.guard.preempted(**vars(self.state.position))
            final = dict(self.state.metrics)
            test = self.final_test() if cfg.train.test and cfg.eval.splits else {}
            final.update(mlflow_metrics(test))
            self.tracker.log_metrics(mlflow_metrics(test), self.state.position.step)
            if self.ctx.is_main:
                self.report(test)
            status = "FINISHED"
        except Preempted:
            status = "KILLED"
            raise
        finally:
            self.tracker.finish(status)
        return {
            "metrics": final,
            "best_checkpoint": str(self.checkpoints / "best"),
            "last_checkpoint": str(self.checkpoints / "last"),
            "best_epoch": self.state.best_epoch,
            "steps": self.state.position.step,
            "mlflow_run_id": self.state.mlflow_run_id,
        }


def train(cfg: Config, ctx: DistContext, on_epoch_end: EpochHook | None = None) -> dict[str, Any]:
    """Train as `cfg` says on this rank (every rank of the job calls it with the same cfg).

    Returns {"metrics": last epoch's and test metrics, "best_checkpoint": path,
    "last_checkpoint": path, "best_epoch", "steps", "mlflow_run_id"}.
    `on_epoch_end(epoch, metrics, checkpoint_dir)` runs on rank 0 after each epoch's checkpoint
    (`checkpoint_dir` is checkpoints/last, overwritten by the next epoch: copy it to keep it).
    """
    return Trainer(cfg, ctx).run(on_epoch_end)
