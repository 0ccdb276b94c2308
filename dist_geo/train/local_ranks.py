"""N training ranks on this machine, started without torchrun, meeting at a loopback store.

torchrun's agent serves its rendezvous store on every interface (torch 2.14.1: a TCPStore
binds `::` whatever address it is given, `--standalone`, `--master-addr 127.0.0.1` and a
`127.0.0.1` c10d endpoint alike), so anyone who reaches the machine could talk to a
single-machine job. Here the launcher serves the store itself, on a socket it bound to
127.0.0.1 (TCPStore's `master_listen_fd`), and starts the ranks with the variables torchrun
sets; `TORCHELASTIC_USE_AGENT_STORE=True` tells them, as under torchrun, that the store is the
launcher's (dist_geo/distributed.py joins it as a client). Their gloo and NCCL sockets are
pinned to the loopback interface (GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME) unless the
environment already names one.

What torchrun's agent does for a local job this does too: OMP_NUM_THREADS=1 per rank unless
set; a rank that fails takes the others down (SIGTERM, then SIGKILL after `GRACE_S`); a stop
request reaches every rank as SIGTERM. Jobs over several machines keep torchrun, the
deepspeed launcher or Slurm (launch/README.md).
"""
from __future__ import annotations

import signal
import socket
import subprocess
import time
from datetime import timedelta

import torch.distributed as dist

LOOPBACK = "127.0.0.1"
GRACE_S = 60.0  # what a rank gets to save and exit after SIGTERM, before SIGKILL
POLL_S = 0.2


def _loopback_interface() -> str | None:
    """The name of the loopback interface ("lo" on Linux), if this machine has it."""
    return next((name for _, name in socket.if_nameindex() if name in ("lo", "lo0")), None)


class LocalRanks:
    """The ranks of one job on this machine, as one process-like object (`poll`, `wait`,
    `terminate`, `returncode`), and the store they meet at, served on 127.0.0.1."""

    def __init__(self, command: list[str], nproc: int, env: dict[str, str]):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((LOOPBACK, 0))
        listener.listen(nproc)
        port = listener.getsockname()[1]
        self._store = dist.TCPStore(LOOPBACK, port, is_master=True, wait_for_workers=False,
                                    master_listen_fd=listener.detach(),  # the store's to close
                                    timeout=timedelta(minutes=30))
        shared = {**env, "MASTER_ADDR": LOOPBACK, "MASTER_PORT": str(port),
                  "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc), "GROUP_RANK": "0",
                  "TORCHELASTIC_USE_AGENT_STORE": "True"}
        if nproc > 1:
            shared.setdefault("OMP_NUM_THREADS", "1")
        interface = _loopback_interface()
        if interface:
            shared.setdefault("GLOO_SOCKET_IFNAME", interface)
            shared.setdefault("NCCL_SOCKET_IFNAME", interface)
        self.processes = [
            subprocess.Popen(command, env={**shared, "RANK": str(r), "LOCAL_RANK": str(r)})
            for r in range(nproc)
        ]
        self.returncode: int | None = None
        self._failure: int | None = None
        self._kill_at = float("inf")

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def poll(self) -> int | None:
        """None while a rank runs; then the first failing rank's exit code, or 0."""
        codes = [p.poll() for p in self.processes]
        failed = [c for c in codes if c not in (None, 0)]
        if failed and self._failure is None:
            self._failure = failed[0]
            self.terminate()  # the others would wait for it in their next collective
        if None in codes:
            if time.monotonic() > self._kill_at:
                for process in self.processes:
                    if process.poll() is None:
                        process.kill()
            return None
        if self.returncode is None:
            self.returncode = self._failure or 0
            del self._store  # closes its socket
        return self.returncode

    def wait(self) -> int:
        while self.poll() is None:
            time.sleep(POLL_S)
        return self.returncode

    def terminate(self) -> None:
        """SIGTERM to every rank still running: each saves and stops (train/stopping.py);
        those still running `GRACE_S` later are killed by `poll`."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        self._kill_at = min(self._kill_at, time.monotonic() + GRACE_S)


__all__ = ["LocalRanks"]
