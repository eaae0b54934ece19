"""How many cores this process may use, and how the labeler divides them.

Torch's default thread count follows the machine, not the process: inside a CPU quota or next to busy
neighbours its OpenMP threads spin-wait for each other and small work runs many times slower. The model's
intra-op threads follow the cores this process may use, helper processes use one thread each, and the
entry points (the CLI, the shard worker) let OpenMP threads sleep instead of spinning while they wait.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota if one is set."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def decode_workers(requested: int = -1) -> int:
    """DataLoader decode processes: ``requested``, or one per core beyond the first, up to 4."""
    return requested if requested >= 0 else max(0, min(4, available_cores() - 1))


def finisher_processes(requested: int = -1, workers: int = 0) -> int:
    """Processes that write label maps and records: ``requested``, or the cores left beyond the main
    process and the decode workers, at least 1 (0 means: finish in a thread of this process)."""
    return requested if requested >= 0 else max(1, available_cores() - 1 - workers)


def model_threads(requested: int = -1) -> int:
    """Intra-op threads of the model on the CPU: ``requested``, or the cores this process may use."""
    return requested if requested >= 1 else available_cores()


def sleep_when_waiting() -> None:
    """Let OpenMP threads sleep rather than spin while waiting (takes effect only before torch is imported)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
