"""SIGTERM and SIGINT: a request to stop, answered by the training loop, not by dying.

Slurm's preemption and `scancel` send SIGTERM to every process of the job, a terminal's
Ctrl-C sends SIGINT to every process of its group: the ranks, their launcher and their data
loader workers. A rank under `StopSignals` only records the request; the training loop finishes
its step, saves and exits (dist_geo/train/stopping.py). Data loader workers ignore both signals
(`ignore_stop_signals`): the rank they serve still needs the batch in flight, and torch ends
them itself when the rank exits.
"""
from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """A DataLoader `worker_init_fn`: the worker lives on until its rank no longer needs it."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class StopSignals:
    """While entered, SIGTERM/SIGINT set `requested` (and `signum`) instead of ending the
    process; the same signal again ends it as it would have without us. Only the main thread
    receives signals: elsewhere (a Ray Tune trial's thread) entering it changes nothing."""

    def __init__(self) -> None:
        self.requested = False
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.requested:
            if signum == self.signum:  # asked twice: stop at once, as without the handler
                self._restore()
                signal.raise_signal(signum)
            return  # the other one: a launcher passing Ctrl-C on as SIGTERM, already heeded
        self.requested, self.signum = True, signum
        log.warning("%s received: the run saves and stops at the next step all ranks reach "
                    "(send it again to stop at once, unsaved)", signal.Signals(signum).name)


__all__ = ["STOP_SIGNALS", "StopSignals", "ignore_stop_signals"]
