"""Process helpers for tests that start servers."""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` of a server a test session starts: killed when the session's process dies."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def wait_for_server(process: subprocess.Popen, ping: Callable[[], object], timeout: float, log: Path) -> None:
    """Return once ``ping()`` succeeds; kill ``process`` and raise naming ``log`` if it exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ping()
            return
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"{Path(process.args[0]).name} did not start; see {log}") from None
            time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_tree(process: subprocess.Popen | psutil.Process, sig_kill: bool = True) -> None:
    """Stop a process and every descendant (flow-run processes start their own sessions): SIGKILL, or
    SIGTERM first when ``sig_kill`` is False, with SIGKILL for whatever still runs 15 s later."""
    try:
        parent = psutil.Process(process.pid)
        family = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        return
    for p in family:
        try:
            p.kill() if sig_kill else p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=15)
    for p in alive:  # whatever ignored the polite signal
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
