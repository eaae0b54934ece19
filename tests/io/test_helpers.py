"""Helper processes (spawned: finishers, review's document builders, decoders of a remote dataset) keep freed
buffers for reuse as a forked process does, instead of faulting in fresh pages for every image, and end as a
forked process ends: output flushed, exit code kept, no interpreter teardown."""

import atexit
import resource
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from clearclip.io.helpers import helper_context
from clearclip.io.images import load_image

MAX_PIXELS = 1 << 30


def _faults_per_decode(path: str, times: int) -> float:
    """Page faults per decode of ``path`` once the process is warm (the first decodes are not counted)."""
    for _ in range(3):
        load_image(Path(path), MAX_PIXELS, lambda pixels: None)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(times):
        load_image(Path(path), MAX_PIXELS, lambda pixels: None)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / times


def test_a_helper_decodes_without_faulting_in_each_image(tmp_path):
    path = tmp_path / "photo.jpg"
    base = np.random.default_rng(0).integers(0, 255, (40, 53, 3), dtype=np.uint8)
    Image.fromarray(base).resize((1280, 960), Image.BICUBIC).save(path, quality=90)
    pages = 1280 * 960 * 3 / 4096  # one decoded image
    with ProcessPoolExecutor(1, mp_context=helper_context()) as pool:
        faults = pool.submit(_faults_per_decode, str(path), 20).result()
    assert faults < pages / 4, f"{faults:.0f} page faults per decode of a {pages:.0f}-page image"


def _write_and_end(marker: str, code: int) -> None:
    """Leave output in the buffers (no newline, no flush) and a handler for the interpreter's teardown."""
    atexit.register(lambda: print(f"{marker} teardown", flush=True))
    sys.stdout.write(f"{marker} buffered")
    sys.exit(code)


def test_a_helper_ends_as_a_forked_process_does(capfd):
    context = helper_context()
    for code in (0, 3):
        helper = context.Process(target=_write_and_end, args=(f"helper-{code}", code))
        helper.start()
        helper.join(60)
        assert helper.exitcode == code
    out = capfd.readouterr().out
    assert "helper-0 buffered" in out and "helper-3 buffered" in out  # flushed before the exit
    assert "teardown" not in out  # skipped, as a forked process skips it (torch's alone takes 0.3 s)
