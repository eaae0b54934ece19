"""A label run killed with SIGKILL part-way resumes to exactly the annotations of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

from folders import write_plain_folder


def label_command(root, out, model):
    return [sys.executable, "-m", "clearclip", "label", str(root), "--out", str(out), "--model", model,
            "--class", "background", "--class", "sky", "--class", "grass, lawn", "--class", "road",
            "--short-side", "96", "--crop", "32", "--stride", "16", "--device", "cpu", "--quiet",
            "--batch-size", "1", "--workers", "0", "--min-area", "3"]


def test_sigkill_then_rerun_equals_uninterrupted(tiny_model_name, tmp_path):
    root = tmp_path / "data"
    files = write_plain_folder(root, 30, size=(72, 96))
    reference = tmp_path / "reference"
    subprocess.run(label_command(root, reference, tiny_model_name), check=True, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(label_command(root, killed, tiny_model_name), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    parts = killed / "parts"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(parts.rglob("*.json"))) < 4:
        time.sleep(0.01)
    assert process.poll() is None, "the run finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_at_kill = len(list(parts.rglob("*.json")))
    assert 4 <= done_at_kill < len(files)
    assert not (killed / "annotations.json").exists()

    subprocess.run(label_command(root, killed, tiny_model_name), check=True, capture_output=True)
    expected = json.loads((reference / "annotations.json").read_text())
    resumed = json.loads((killed / "annotations.json").read_text())
    assert resumed == expected
    assert (killed / "annotations.json").read_bytes() == (reference / "annotations.json").read_bytes()
    run = json.loads((killed / "run.json").read_text())["last_invocation"]
    assert run["skipped_as_done"] >= done_at_kill - 1  # a part may have landed between the count and the kill
    assert run["labeled"] + run["skipped_as_done"] == len(files)
    assert not list(killed.rglob("*.tmp"))
