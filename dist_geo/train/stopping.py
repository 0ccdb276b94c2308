"""What ends a run early, and how every rank ends it at the same step.

Two things stop a run before its last epoch:
- a stop signal (SIGTERM from Slurm's preemption or `scancel`, SIGINT from Ctrl-C) on any
  rank (dist_geo/signals.py): the run finishes the step in flight, writes checkpoints/last,
  marks its MLflow run KILLED and exits with 128 + the signal's number (`Preempted`);
  `train.resume=true` continues exactly from there;
- a loss that is NaN or inf for `train.max_nonfinite_steps` steps in a row (`Diverged`): the
  run stops without writing a checkpoint of the diverged weights, so last and best keep the
  run as it was, and marks its MLflow run FAILED.

Neither adds a host sync to a step. The non-finite streak is counted on the device and read
with the loss, every `train.log_every` steps (the loop's only host sync). A checkpoint is one
step of every rank, so the ranks must stop at the same step, while a signal reaches each of
them at its own moment: in a single process the flag is read after every step; with several
ranks the flags are all-reduced together with the non-finite streaks at each loss read, a step
every rank shares, so all stop at the first loss read after the signal, at most `log_every`
steps later. Agreeing at every step instead would add a blocking collective to each step
(0.22 ms for a gloo all-reduce of one integer between 2 CPU ranks, measured here; with NCCL a
device sync as well).
"""
from __future__ import annotations

import signal
from pathlib import Path
from types import TracebackType

import torch
import torch.distributed as dist

from dist_geo.distributed import DistContext
from dist_geo.errors import DistGeoError
from dist_geo.signals import StopSignals


class Preempted(DistGeoError):
    """The run stopped on a signal after saving checkpoints/last."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum  # what the shell reports for a process the signal ended


class Diverged(DistGeoError):
    """The loss stayed NaN or inf: the run stopped without saving."""


class RunGuard:
    """The stop signals and the non-finite streak of one run (enter it around the epochs)."""

    def __init__(self, out: Path, max_nonfinite_steps: int, ctx: DistContext):
        self.out, self.limit, self.ctx = out, max_nonfinite_steps, ctx
        self.signals = StopSignals()
        self.agreed = 0  # the signal every rank agreed to stop on (0: none)
        self._streak = torch.zeros((), dtype=torch.int64, device=ctx.device)
        self._longest = torch.zeros((), dtype=torch.int64, device=ctx.device)

    def __enter__(self) -> RunGuard:
        self.signals.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.signals.__exit__(kind, error, trace)

    def count(self, loss: torch.Tensor) -> None:
        """Extend or end the streak of non-finite losses with this step's (on the device)."""
        self._streak = torch.where(torch.isfinite(loss), 0, self._streak + 1)
        torch.maximum(self._longest, self._streak, out=self._longest)

    def check(self, step: int, *values: torch.Tensor) -> list[float]:
        """Read `values` (scalar tensors) in one host sync with the streak and the stop flags,
        all-reduced over the ranks: every rank calls it at the same steps. Diverged when the
        loss was non-finite for too long; else `stop_now` tells whether to stop."""
        flags = torch.tensor([0.0, float(self.signals.signum)], device=self.ctx.device)
        flags[0] = self._longest
        if self.ctx.is_distributed:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        both = torch.cat([*(v.float().reshape(1) for v in values), flags])
        *read, longest, signum = both.tolist()
        self._longest.zero_()
        if longest >= self.limit:
            raise Diverged(
                f"{self.out}: the loss was NaN or inf for {int(longest)} steps in a row, the last "
                f"by step {step} (train.max_nonfinite_steps={self.limit}): stopped without "
                "saving them; the checkpoints hold the run before (lower optim.lr, loss.s, or "
                "check the data)")
        self.agreed = int(signum)
        return read

    @property
    def stop_now(self) -> bool:
        """Whether to save and stop after this step: as agreed at the last check, or, in a
        single process, as soon as a signal came."""
        return bool(self.agreed) or (not self.ctx.is_distributed and self.signals.requested)

    def preempted(self, epoch: int, batch: int, step: int) -> Preempted:
        """The error to stop with, the run having been saved at `epoch`, `batch` (`step`)."""
        signum = self.agreed or self.signals.signum
        return Preempted(
            f"{self.out}: stopped by {signal.Signals(signum).name} at step {step} (epoch {epoch}, "
            f"batch {batch}), saved in checkpoints/last: continue with train.resume=true", signum)


__all__ = ["Diverged", "Preempted", "RunGuard"]
