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
    """Kill a process and every descendant (flow-run processes start their own sessions)."""
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
    psutil.wait_procs(family, timeout=20)
