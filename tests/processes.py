"""Process helpers for tests that start servers."""

from __future__ import annotations

import socket
import subprocess

import psutil


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
