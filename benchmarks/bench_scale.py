"""Does a run stay bounded as it grows? Time and peak RSS of the steps that touch every image, at several sizes.

Builds runs of N images through the labeler's own writer (``finish_maps``: label map PNG, regions, RLE,
record) from synthetic 500x375 label maps with about 20 regions each (no model), then runs each step in a
fresh process: the resume check of the finished run (listing + per-image state), the merge, ``clearclip
review --no-launch`` (the first load) and ``clearclip export`` in every format. Peak RSS is the step's own process. Last, the finish of one
12-megapixel label map with about 100 regions, in memory above the label map itself.

    python benchmarks/bench_scale.py --sizes 1000 10000 100000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

CLASSES = ["background"] + [f"class {i}" for i in range(20)]


def synthetic_map(seed: int, height: int = 375, width: int = 500, regions: int = 20):
    """A category map and scores of a Voronoi partition: ``regions`` cells, each a class, one score per cell."""
    rng = np.random.default_rng(seed)
    seeds = rng.random((regions, 2)) * (height, width)
    yy, xx = np.ogrid[:height, :width]
    nearest = np.full((height, width), np.inf, np.float32)
    cell = np.zeros((height, width), np.int32)
    for index, (y, x) in enumerate(seeds):  # one seed at a time: memory stays a few maps
        distance = ((yy - y) ** 2 + (xx - x) ** 2).astype(np.float32)
        closer = distance < nearest
        nearest[closer], cell[closer] = distance[closer], index
    labels = rng.integers(1, len(CLASSES), regions)[cell].astype(np.uint8)  # category ids (class 0 is background)
    scores = (0.4 + 0.6 * rng.random(regions)[cell]).astype(np.float32)
    return labels, scores


def _build_chunk(args) -> None:
    run_dir, names, sizes = args
    from clearclip.run.finish import finish_maps
    from clearclip.io.images import ImageFile
    from clearclip.run.job import LabelJob
    from clearclip.run.folder import RunFolder

    config = LabelJob(CLASSES, pretrained=None).label_config()
    maps = [synthetic_map(seed) for seed in range(16)]
    folder = RunFolder(run_dir)
    for index, (name, (size, mtime)) in enumerate(zip(names, sizes)):
        categories, scores = maps[index % len(maps)]
        finish_maps(folder, ImageFile(name, size, mtime), categories, scores, config.vocabulary, config.region_filter,
                    "fp32")


def build_run(root: Path, count: int) -> tuple[Path, Path]:
    """A dataset of ``count`` placeholder images and a finished-but-unmerged run of them."""
    from clearclip.run.job import LabelJob
    from clearclip.run.folder import RunFolder

    dataset, run = root / f"data-{count}", root / f"run-{count}"
    names = [f"{i // 1000:04d}/img{i:07d}.jpg" for i in range(count)]
    for name in names:
        path = dataset / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\xff\xd8placeholder")
    sizes = [(os.stat(dataset / n).st_size, os.stat(dataset / n).st_mtime_ns) for n in names]
    job = LabelJob(CLASSES, pretrained=None)
    RunFolder(run).prepare(job.info())
    (run / "run.json").write_text(json.dumps({"dataset": str(dataset)}))  # what review reads before the merge writes it
    chunks = [(run, names[i::os.cpu_count()], sizes[i::os.cpu_count()]) for i in range(os.cpu_count())]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_build_chunk, chunks))
    return dataset, run


STEPS = {
    "resume check": """
from clearclip.io.images import scan_images
from clearclip.run.folder import DONE, RUN_MARKER, RunFolder
listing = scan_images(DATASET, exclude=(RUN,), marker=RUN_MARKER)
folder = RunFolder(RUN)
assert all(folder.state(image) == DONE for image in listing.images)
""",
    "merge": """
from clearclip.io.images import scan_images
from clearclip.run.job import LabelJob
from clearclip.run.merge import merge_run
from clearclip.run.folder import RUN_MARKER, RunFolder
job = LabelJob(CLASSES, pretrained=None)
config = job.label_config()
merge_run(RunFolder(RUN), scan_images(DATASET, exclude=(RUN,), marker=RUN_MARKER).images, config.vocabulary, job.info(config),
          {"dataset": str(DATASET)}, exclusive=True)
""",
    "review --no-launch": """
from clearclip.cli import main
assert main(["review", str(RUN), "--name", NAME, "--no-launch"]) == 0
""",
    **{f"export {format}": f"""
from clearclip.cli import main
out = RUN.parent / f"{{RUN.name}}-exported-{format}"
assert main(["export", NAME, "--format", "{format}", "--out", str(out) + (".json" if "{format}" == "coco" else ""),
             "--overwrite"]) == 0
""" for format in ("coco", "yolo", "cvat", "masks")},
}


def run_step(step: str, dataset: Path, run: Path, env: dict) -> tuple[float, float]:
    """(seconds, peak RSS MB) of one step in a fresh process."""
    code = (f"import time\nfrom pathlib import Path\nfrom bench_scale import peak_rss_mb\n"
            f"DATASET, RUN = Path({str(dataset)!r}), Path({str(run)!r})\n"
            f"CLASSES = {CLASSES!r}\nNAME = {('bench-' + run.name)!r}\nstart = time.perf_counter()\n{STEPS[step]}\n"
            "print(time.perf_counter() - start, peak_rss_mb())")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{step} failed:\n{result.stderr[-3000:]}")
    seconds, peak = result.stdout.strip().splitlines()[-1].split()
    return float(seconds), float(peak)


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss it starts afresh at exec, not at the parent's peak)."""
    return _status_kb("VmHWM") / 1024


def rss_mb() -> float:
    return _status_kb("VmRSS") / 1024


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS (Linux 4.0 and later)


LARGE_MAP = """
import numpy as np
from bench_scale import synthetic_map, CLASSES, peak_rss_mb, reset_peak_rss, rss_mb
from clearclip.run.finish import finish_maps
from clearclip.io.images import ImageFile
from clearclip.run.job import LabelJob
from clearclip.run.folder import RunFolder
config = LabelJob(CLASSES, pretrained=None).label_config()
categories, scores = synthetic_map(0, 3000, 4000, 100)
reset_peak_rss()
before = rss_mb()
finish_maps(RunFolder(RUN), ImageFile("large.jpg", 1, 1), categories, scores, config.vocabulary, config.region_filter,
            "fp32")
print(peak_rss_mb() - before, (categories.nbytes + scores.nbytes) / 2**20)
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--keep", type=Path, help="build the runs here and keep them (default: a temp folder)")
    parser.add_argument("--steps", nargs="+", choices=list(STEPS), default=list(STEPS), metavar="STEP",
                        help="the steps to run, in this order (review needs the merge, the exports need review); default: "
                             + ", ".join(map(repr, STEPS)))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from private_mongo import start_private_mongod

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        mongod = start_private_mongod(root / "fiftyone-db")  # not whatever FiftyOne database runs here
        env = {**os.environ, "FIFTYONE_DO_NOT_TRACK": "true", "PYTHONPATH": str(Path(__file__).parent)}
        rows = []
        for count in args.sizes:
            start = time.perf_counter()
            dataset, run = build_run(root, count)
            print(f"built a run of {count} images in {time.perf_counter() - start:.0f} s", flush=True)
            for step in args.steps:
                seconds, peak = run_step(step, dataset, run, env)
                rows.append((count, step, seconds, peak))
                print(f"{count:>7} {step:<20} {seconds:>8.1f} s {peak:>8.0f} MB", flush=True)
        code = f"from pathlib import Path\nRUN = Path({str(root / 'large-run')!r})\n{LARGE_MAP}"
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        above, label_map = (float(v) for v in result.stdout.split())
        mongod.terminate()
    print(f"\n{'images':>7} {'step':<20} {'seconds':>10} {'ms/image':>9} {'peak RSS MB':>11}")
    for count, step, seconds, peak in rows:
        print(f"{count:>7} {step:<20} {seconds:>10.1f} {1000 * seconds / count:>9.2f} {peak:>11.0f}")
    largest, previous = max(args.sizes), sorted(args.sizes)[-2] if len(args.sizes) > 1 else None
    if previous:
        for step in [s for s in ("merge", "review --no-launch", "export cvat") if s in args.steps]:
            peaks = {c: p for c, s, _, p in rows if s == step}
            print(f"{step}: peak RSS at {largest} images / at {previous}: {peaks[largest] / peaks[previous]:.2f}")
    print(f"finish of a 12 MP label map with 100 regions: {above:.0f} MB above the process before it "
          f"(the label map and scores themselves: {label_map:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
