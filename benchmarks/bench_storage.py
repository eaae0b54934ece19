"""Object storage against local disk, side by side in one run, on a local SeaweedFS S3 server (the tests' own,
``tests/object_store.py``; ``pip install -e '.[test]'`` brings it).

1. Resume check of a finished run (listing + which images need work) and its merge, at each size: the run is
   built locally through the labeler's writer (``bench_scale.build_run``) and uploaded as is.
2. Images/s delivered to the model (fetched and decoded, what ``label_images``' DataLoader yields) from S3 with
   1, 4 and 16 fetchers per decoding process, and from local disk, from the first image on (the decoding
   processes' start is paid once per run: S3 workers are spawned, local ones forked).
3. The media cache fill of ``clearclip review s3://...``: files/s and MB/s into ``$CLEARCLIP_CACHE_DIR/runs``.

``--placement split`` pins the server to the last CPU and this process (and its decoders) to the others, for
the local and the S3 runs alike: on a small machine it separates the server's CPU from the client's.

    python benchmarks/bench_storage.py --sizes 10000 100000 --images 400
    python benchmarks/bench_storage.py --sizes --images 1000 --repeats 3 --placement split
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

from bench_scale import CLASSES, build_run  # noqa: E402
from object_store import start_object_store  # noqa: E402


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of process ``pid`` onto ``cpus`` (threads and processes started later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except ProcessLookupError:  # a thread that just ended
            pass


def upload(store, local: Path, url: str) -> float:
    """Upload a folder (concurrently, as s3fs's put does); returns seconds."""
    fs = store.filesystem()
    files = [p for p in local.rglob("*") if p.is_file()]
    start = time.perf_counter()
    for begin in range(0, len(files), 5000):
        chunk = files[begin : begin + 5000]
        fs.put([str(p) for p in chunk], [f"{url.removeprefix('s3://')}/{p.relative_to(local).as_posix()}" for p in chunk])
    return time.perf_counter() - start


def resume_and_merge(dataset, run, options) -> tuple[float, float, int]:
    """Seconds of the resume check (listing + pending) and of the merge of a finished run; images to label."""
    from clearclip.run.folder import RunFolder
    from clearclip.run.job import LabelJob
    from clearclip.run.merge import merge_run
    from clearclip.run.plan import list_dataset

    job = LabelJob(CLASSES, pretrained=None)
    folder = RunFolder(run, options)
    start = time.perf_counter()
    listing = list_dataset(dataset, folder, options)
    todo = folder.pending(listing.images)
    check = time.perf_counter() - start
    start = time.perf_counter()
    merge_run(folder, listing.images, job.label_config().vocabulary, job.info())
    return check, time.perf_counter() - start, len(todo)


def delivered_per_second(root, names: list[str], options, fetchers: int, workers: int) -> float:
    """Images/s out of ``label_images``' own DataLoader (fetch + decode)."""
    from clearclip.run.job import LabelJob
    from clearclip.run.pipeline import image_loader, stat_images

    config = LabelJob(CLASSES, pretrained=None, storage_options=options or {}).label_config()
    loader = image_loader(root, stat_images(root, names, options), config, workers, fetchers=fetchers)
    start, count = None, 0
    for (image, prepared, error, reserved), in loader:
        loader.dataset.budget.release(reserved)
        assert error is None, error
        if start is None:  # from the first image on: the workers' start (a spawn, for S3) is paid once a run
            start = time.perf_counter()
            continue
        count += 1
    return count / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10000])
    parser.add_argument("--images", type=int, default=400, help="JPEGs (640x480) for the delivery rate")
    parser.add_argument("--workers", type=int, default=1, help="decoding processes (as --workers)")
    parser.add_argument("--repeats", type=int, default=1, help="delivery measurements per case (each printed)")
    parser.add_argument("--placement", choices=["shared", "split"], default="shared",
                        help="split: the server on the last CPU, this process on the others")
    args = parser.parse_args(argv)
    os.environ.setdefault("CLEARCLIP_CACHE_DIR", tempfile.mkdtemp(prefix="bench-storage-cache-"))
    root = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    store = start_object_store(root / "seaweedfs")
    try:
        if args.placement == "split":
            cpus = sorted(os.sched_getaffinity(0))
            pin(store.process.pid, {cpus[-1]})
            pin(os.getpid(), set(cpus[:-1]))
            print(f"placement: server on CPU {cpus[-1]}, this process on {cpus[:-1]}")
        bucket = store.bucket("bench")
        print("size      step            disk s    S3 s   S3/disk   (upload s)")
        for size in args.sizes:
            dataset, run = build_run(root, size)
            disk = resume_and_merge(dataset, run, None)
            sent = upload(store, dataset, f"{bucket}/data-{size}") + upload(store, run, f"{bucket}/run-{size}")
            remote = resume_and_merge(f"{bucket}/data-{size}", f"{bucket}/run-{size}", store.options)
            assert disk[2] == remote[2] == 0, (disk, remote)
            print(f"{size:<9} resume check  {disk[0]:8.2f} {remote[0]:8.2f} {remote[0] / disk[0]:8.2f}x   ({sent:.0f})")
            print(f"{size:<9} merge         {disk[1]:8.2f} {remote[1]:8.2f} {remote[1] / disk[1]:8.2f}x")

        photos = root / "photos"
        rng = np.random.default_rng(0)
        names = []
        for index in range(args.images):
            name = f"{index // 100:02d}/photo{index:05d}.jpg"
            (photos / name).parent.mkdir(parents=True, exist_ok=True)
            base = rng.integers(0, 255, (40, 53, 3), dtype=np.uint8)
            Image.fromarray(base).resize((640, 480), Image.BICUBIC).save(photos / name, quality=90)
            names.append(name)
        upload(store, photos, f"{bucket}/photos")
        print(f"\ndelivered to the model, {args.workers} decoding process(es), {args.images} JPEGs 640x480:")
        for _ in range(args.repeats):  # local measured again before each S3 row: the ratio is to its neighbour
            for fetchers in (1, 4, 16):
                local = delivered_per_second(photos, names, None, 1, args.workers)
                rate = delivered_per_second(f"{bucket}/photos", names, store.options, fetchers, args.workers)
                print(f"  local disk {local:8.1f} images/s   S3, {fetchers:2d} fetchers {rate:8.1f} images/s   "
                      f"{rate / local:5.2f}x local")

        from clearclip.annotations.coco import CocoWriter
        from clearclip.run.copies import copy_dir, local_copy

        model_free = f"{bucket}/photos-run"
        with tempfile.TemporaryDirectory() as tmp:  # a finished run naming the photos, no labels needed
            path = Path(tmp) / "annotations.json"
            with CocoWriter(path, {}, [{"id": 1, "name": "x"}]) as coco:
                for name in names:
                    coco.add_image(name, 640, 480, [])
            fs = store.filesystem()
            fs.put_file(str(path), f"{model_free}/annotations.json".removeprefix("s3://"))
            fs.pipe_file(f"{model_free}/run.json".removeprefix("s3://"),
                         json.dumps({"dataset": f"{bucket}/photos"}).encode())
        start = time.perf_counter()
        report = local_copy(model_free, store.options)
        seconds = time.perf_counter() - start
        print(f"\nmedia cache fill: {report.fetched} files, {report.bytes / 1e6:.1f} MB in {seconds:.2f} s: "
              f"{report.fetched / seconds:.0f} files/s, {report.bytes / 1e6 / seconds:.1f} MB/s ({copy_dir(model_free)})")
        start = time.perf_counter()
        again = local_copy(model_free, store.options)
        print(f"  rerun: {again.reused} reused, {again.fetched} fetched in {time.perf_counter() - start:.2f} s")
    finally:
        store.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
