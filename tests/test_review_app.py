"""The FiftyOne App, served by `clearclip review`, seen through headless Chromium."""

import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from clearclip.cli import main
from folders import write_plain_folder
from processes import free_port, kill_tree

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--virtual-time-budget=20000", "--window-size=1400,900"]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
def test_app_shows_the_dataset(tmp_path, tiny_model_name):
    root = tmp_path / "data"
    write_plain_folder(root, 3, size=(48, 64))
    run = tmp_path / "run"
    assert main(["label", str(root), "--out", str(run), "--model", tiny_model_name, "--device", "cpu", "--quiet",
                 "--workers", "0", "--short-side", "48", "--crop", "32", "--stride", "16", "--class", "sky",
                 "--class", "grass"]) == 0
    port, name = free_port(), "app-check-run"
    log = open(tmp_path / "review.log", "wb")
    app = subprocess.Popen([sys.executable, "-m", "clearclip", "review", str(run), "--name", name, "--port", str(port)],
                           stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(), start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/datasets/{name}"
        deadline = time.monotonic() + 120
        while True:
            assert app.poll() is None, (tmp_path / "review.log").read_text()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, "the App did not start"
                time.sleep(0.5)
        screenshot = tmp_path / "app.png"
        subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile-1'}", f"--screenshot={screenshot}",
                        url], capture_output=True, timeout=120)
        assert screenshot.is_file() and screenshot.stat().st_size > 10_000
        dom = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile-2'}", "--dump-dom", url],
                             capture_output=True, text=True, timeout=120).stdout
        assert name in dom
        assert "pseudo_labels" in dom and "least-confident-first" in dom
    finally:
        kill_tree(app, sig_kill=False)
