"""A MongoDB server of the tests' own, for FiftyOne.

FiftyOne attaches to any database service already running on the machine, whatever FIFTYONE_DATABASE_DIR
says, so a review App or a benchmark running beside the tests would receive their datasets (and the tests
theirs). Pointing FIFTYONE_DATABASE_URI at a mongod started here keeps every test database private.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_private_mongod(directory: Path, timeout: float = 60.0) -> subprocess.Popen:
    """Start FiftyOne's bundled mongod on ``directory`` (killed when this process dies) and point
    FIFTYONE_DATABASE_URI at it; call before fiftyone is first imported, which reads the variable."""
    port = _free_port()
    uri = os.environ["FIFTYONE_DATABASE_URI"] = f"mongodb://127.0.0.1:{port}"
    from fiftyone.core.service import DatabaseService
    from pymongo import MongoClient

    directory.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [DatabaseService.find_mongod(), "--dbpath", str(directory), "--logpath", str(directory / "mongo.log"),
         "--bind_ip", "127.0.0.1", "--port", str(port), "--nounixsocket"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    deadline = time.monotonic() + timeout
    while True:
        try:
            MongoClient(uri, serverSelectionTimeoutMS=500).admin.command("ping")
            return process
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"mongod did not start; see {directory / 'mongo.log'}") from None
            time.sleep(0.2)
