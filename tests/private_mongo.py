"""A MongoDB server of the tests' own, for FiftyOne.

FiftyOne attaches to any database service already running on the machine, whatever FIFTYONE_DATABASE_DIR
says, so a review App or a benchmark running beside the tests would receive their datasets (and the tests
theirs). Pointing FIFTYONE_DATABASE_URI at a mongod started here keeps every test database private.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from processes import die_with_parent, free_port, wait_for_server


def start_private_mongod(directory: Path, timeout: float = 60.0) -> subprocess.Popen:
    """Start FiftyOne's bundled mongod on ``directory`` (killed when this process dies) and point
    FIFTYONE_DATABASE_URI at it; call before fiftyone is first imported, which reads the variable."""
    port = free_port()
    uri = os.environ["FIFTYONE_DATABASE_URI"] = f"mongodb://127.0.0.1:{port}"
    from fiftyone.core.service import DatabaseService
    from pymongo import MongoClient

    directory.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [DatabaseService.find_mongod(), "--dbpath", str(directory), "--logpath", str(directory / "mongo.log"),
         "--bind_ip", "127.0.0.1", "--port", str(port), "--nounixsocket"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
    wait_for_server(process, lambda: MongoClient(uri, serverSelectionTimeoutMS=500).admin.command("ping"), timeout,
                    directory / "mongo.log")
    return process
