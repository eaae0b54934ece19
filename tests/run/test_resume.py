"""A label run killed with SIGKILL part-way leaves no process behind and resumes to exactly the annotations of
an uninterrupted run. The kill comes from the tests' kill_after runner (after N images are committed),
so the moment is deterministic."""

import pytest
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from folders import write_plain_folder

pytestmark = pytest.mark.slow  # end to end: real servers, workers or processes


KILL_AFTER = Path(__file__).resolve().parents[1] / "kill_after.py"


def label_command(root, out, model, kill_after=None):
    start = [sys.executable, "-m"] if kill_after is None else [sys.executable, str(KILL_AFTER), str(kill_after)]
    return [*start, "clearclip", "label", str(root), "--out", str(out), "--model", model,
            "--class", "background", "--class", "sky", "--class", "grass, lawn", "--class", "road",
            "--short-side", "96", "--crop", "32", "--stride", "16", "--device", "cpu", "--quiet",
            "--batch-size", "1", "--workers", "0", "--min-area", "3"]


def _live_session(process: psutil.Process) -> int | None:
    """The session of a live process (a zombie has ended; only its parent's reaping is missing)."""
    try:
        return None if process.status() == psutil.STATUS_ZOMBIE else os.getsid(process.pid)
    except (OSError, psutil.Error):
        return None


def test_sigkill_then_rerun_equals_uninterrupted(tiny_model_name, tmp_path):
    root = tmp_path / "data"
    files = write_plain_folder(root, 12, size=(72, 96))
    reference = tmp_path / "reference"
    subprocess.run(label_command(root, reference, tiny_model_name), check=True, capture_output=True, timeout=120)

    killed = tmp_path / "killed"
    process = subprocess.Popen(label_command(root, killed, tiny_model_name, kill_after=5), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    assert process.wait(timeout=120) == -signal.SIGKILL
    time.sleep(1)
    survivors = [p for p in psutil.process_iter(["pid"]) if _live_session(p) == process.pid]
    assert not survivors, "the killed labeler's finishing processes outlived it"
    done_at_kill = len(list((killed / "records").rglob("*.json")))
    assert 5 <= done_at_kill < len(files)
    assert not (killed / "annotations.json").exists()

    subprocess.run(label_command(root, killed, tiny_model_name), check=True, capture_output=True, timeout=120)
    assert (killed / "annotations.json").read_bytes() == (reference / "annotations.json").read_bytes()
    run = json.loads((killed / "run.json").read_text())["last_invocation"]
    assert run["skipped_as_done"] == done_at_kill and run["labeled"] == len(files) - done_at_kill
    assert not list(killed.rglob("*.tmp"))
