"""Peak memory of a run of many large images: decoders waiting on the shared pixel budget (``io.budget``)
against the same run with the budget lifted (every decoder free to decode, as before the budget).

The images are smooth PNGs (small files, many pixels: the case a per-image ``--max-pixels`` does not bound).
Peak memory is the largest sum of RSS over the labeling process and its children, sampled every 20 ms.
Each configuration runs in its own process, so one run's freed pages do not hide the other's peak.

    python benchmarks/bench_decode_budget.py                   # 8 images of 5000x5000, 2 decoders, batch 4
    python benchmarks/bench_decode_budget.py --side 9999 --images 6
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def write_images(folder: Path, count: int, side: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    for index in range(count):
        red = np.broadcast_to(ramp[None, :], (side, side))
        green = np.broadcast_to(ramp[::-1, None], (side, side))
        blue = np.full((side, side), 40 * index % 255, np.float32)
        Image.fromarray(np.stack([red, green, blue], axis=2).astype(np.uint8)).save(folder / f"{index:02d}.png")


def labeling(dataset: Path, out: Path, model: str, budget: int, workers: int, batch: int) -> dict:
    """Run the labeler in a child process with the given decode budget; its peak tree RSS and wall time."""
    code = (
        "import sys, clearclip.run.pipeline as p; p.DEFAULT_DECODE_BUDGET = int(sys.argv[1]); "
        "from clearclip.cli import main; raise SystemExit(main(sys.argv[2:]))"
    )
    command = [sys.executable, "-c", code, str(budget), "label", str(dataset), "--out", str(out), "--model", model,
               "--class", "sky", "--class", "grass", "--short-side", "224", "--device", "cpu", "--quiet",
               "--workers", str(workers), "--batch-size", str(batch), "--max-pixels", str(10**8)]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT)
    watched, peak, main_peak = psutil.Process(process.pid), 0, 0
    while process.poll() is None:
        try:
            main = watched.memory_info().rss
            children = sum(p.memory_info().rss for p in watched.children(recursive=True) if p.is_running())
            peak, main_peak = max(peak, main + children), max(main_peak, main)
        except psutil.Error:
            pass
        time.sleep(0.02)
    if process.returncode != 0:
        raise SystemExit(f"the labeler exited with {process.returncode}")
    return {"peak_gb": peak / 1e9, "main_gb": main_peak / 1e9, "seconds": time.perf_counter() - start,
            "labeled": json.loads((out / "run.json").read_text())["images_labeled"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--side", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_model import build_tiny_model, save_local_dir

    from clearclip.io.budget import DEFAULT_DECODE_BUDGET

    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        model = f"local-dir:{save_local_dir(build_tiny_model(), folder / 'model')}"
        write_images(folder / "images", args.images, args.side)
        pixels = args.side * args.side
        runs = {}
        for name, budget in [("no budget (baseline)", 10**15), (f"budget {DEFAULT_DECODE_BUDGET / 1e6:.0f} MP", DEFAULT_DECODE_BUDGET)]:
            runs[name] = labeling(folder / "images", folder / f"run-{budget}", model, budget, args.workers, args.batch_size)
        print(f"{args.images} images of {args.side}x{args.side} ({pixels / 1e6:.0f} MP), {args.workers} decoders, batch {args.batch_size}")
        baseline = runs["no budget (baseline)"]
        for name, run in runs.items():
            print(f"  {name:24s} peak {run['peak_gb']:5.2f} GB ({run['peak_gb'] / baseline['peak_gb']:.2f}x; "
                  f"main process {run['main_gb']:5.2f} GB)   "
                  f"{run['seconds']:6.1f} s ({run['seconds'] / baseline['seconds']:.2f}x)   labeled {run['labeled']}")


if __name__ == "__main__":
    main()
