"""How fast do the commands that need no model answer? Wall time of fresh processes, against two baselines
measured in the same run: the interpreter starting (``python -c pass``) and ``import torch``.

- rerun of a finished run: ``clearclip label`` into a run whose images are all done (resume check and merge);
- ``clearclip segment IMAGE`` without a class (the error line);
- ``clearclip label --help``.

The run is labeled first with a random full-size ViT-B-16 (``--pretrained none``), on the bundled samples.

    python benchmarks/bench_startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "workspace" / "samples"


def seconds(command: list[str], repeat: int, expect: int) -> float:
    """Median wall seconds of ``command`` in a fresh process; its exit status must be ``expect``."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if result.returncode != expect:
            raise SystemExit(f"{' '.join(command)} exited {result.returncode}:\n{result.stderr[-2000:]}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each command (median; default 5)")
    args = parser.parse_args()
    clearclip = [sys.executable, "-m", "clearclip"]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        label = [*clearclip, "label", str(SAMPLES), "--out", str(run), "--classes-file",
                 str(ROOT / "workspace" / "classes.txt"), "--pretrained", "none", "--device", "cpu", "--quiet"]
        first = seconds(label, 1, 0)
        rows = {
            "python -c pass (baseline)": seconds([sys.executable, "-c", "pass"], args.repeat, 0),
            "python -c 'import torch' (baseline)": seconds([sys.executable, "-c", "import torch"], args.repeat, 0),
            "clearclip label --help": seconds([*clearclip, "label", "--help"], args.repeat, 0),
            "clearclip segment IMAGE (no class: error)": seconds([*clearclip, "segment", str(SAMPLES / "chelsea.png")],
                                                                 args.repeat, 2),
            f"rerun of a finished {len(list(SAMPLES.iterdir()))}-image run": seconds(label, args.repeat, 0),
        }
    torch_import = rows["python -c 'import torch' (baseline)"]
    print(f"first run (labels the images, loads the model): {first:.2f} s\n")
    print(f"{'command':<46} {'median s':>9} {'x import torch':>15}")
    for name, value in rows.items():
        print(f"{name:<46} {value:>9.2f} {value / torch_import:>15.2f}")


if __name__ == "__main__":
    main()
