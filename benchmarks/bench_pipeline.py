"""Can the host keep up with the model? Host cost per image, finishing throughput per core, model-only against
end-to-end images/s, and a run beside a CPU-bound neighbour.

1. Host cost per VOC-size image, CPU ms by step, on label maps and scores stored from real labeler runs
   (ViT-B-16 random weights, 500x375, the 21 VOC classes): synthetic images (~40 kept regions per image,
   about what #14 measured), the same images through other random weights that fragment them more (~75),
   and the workspace photos resized (~10): decode, host-side prepare, finish (label map PNG, regions, RLE,
   record). Resize and normalisation run on the model's device,
   so they are model work. The baseline is the straightforward finish this replaced (one scipy labeling and
   one full-image mask per region, PIL's default PNG, one json.dumps per annotation), same outputs.
2. Finishing throughput: the same stored maps through 1 finishing process, then through all the cores.
3. Model-only (decoded images, ``segment_categories`` alone) against ``clearclip label`` end to end.
4. ``clearclip label`` of small images idle, then beside a process that keeps one core busy.

    python benchmarks/bench_pipeline.py --quick
    python benchmarks/bench_pipeline.py --device cuda      # bf16, batch sizes 8..64, share of GPU time in the model
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clearclip.io.threads import available_cores, sleep_when_waiting

sleep_when_waiting()  # as the CLI does, before torch loads

import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402
from scipy import ndimage  # noqa: E402

from clearclip import ClearCLIP  # noqa: E402
from clearclip.evaluation.benchmarks import BENCHMARKS  # noqa: E402
from clearclip.run.finish import Finishers, finish_maps  # noqa: E402
from clearclip.io.images import ImageFile, load_image, scan_images  # noqa: E402
from clearclip.run.job import LabelJob  # noqa: E402
from clearclip.run.plan import label_folder  # noqa: E402
from clearclip.run.folder import RunFolder  # noqa: E402
from clearclip.annotations.regions import extract_regions  # noqa: E402
from clearclip.inference.segmentation import prepare_image  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from bench_inference import synthetic_images  # noqa: E402

WORKSPACE_SAMPLES = Path(__file__).resolve().parent.parent / "workspace" / "samples"


def random_model(seed: int, device: torch.device, precision: str) -> ClearCLIP:
    """ViT-B-16 with the random weights of ``seed``."""
    torch.manual_seed(seed)
    return ClearCLIP(open_clip.create_model("ViT-B-16", pretrained=None).to(device).eval(),
                     open_clip.get_tokenizer("ViT-B-16"), precision=precision)


def cpu_ms(function, repeat: int, rounds: int = 3) -> float:
    """CPU milliseconds of one call (this process's CPU time: no waiting on disks counted), best of rounds."""
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for index in range(repeat):
            function(index)
        best = min(best, (time.process_time() - start) / repeat)
    return 1e3 * best


def baseline_finish(out: Path, categories: np.ndarray, scores: np.ndarray, config) -> None:
    """The finish #14 replaced: per class a scipy labeling, per region a full-image mask and its RLE."""
    Image.fromarray(categories.astype(np.uint8)).save(out / "labels.png", format="PNG")
    class_of_category = {cid: i for i, cid in enumerate(config.vocabulary.category_ids()) if cid is not None}
    lines = []
    for category in np.unique(categories):
        if category == 0:
            continue
        thresholds = config.region_filter.for_class(config.vocabulary.names[class_of_category[int(category)]])
        components, count = ndimage.label(categories == category, structure=np.ones((3, 3), dtype=bool))
        areas = np.bincount(components.ravel(), minlength=count + 1)
        sums = np.bincount(components.ravel(), weights=scores.ravel(), minlength=count + 1)
        for index, box in enumerate(ndimage.find_objects(components), start=1):
            area, score = int(areas[index]), float(sums[index] / areas[index])
            if area < thresholds.min_pixels(categories.size) or score < thresholds.min_score:
                continue
            rle = mask_utils.encode(np.asfortranarray((components == index).astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            rows, cols = box
            bbox = [cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start]
            lines.append(json.dumps({"category_id": int(category), "segmentation": rle, "area": area, "bbox": bbox,
                                     "iscrowd": 0, "score": round(score, 6)}, ensure_ascii=False))
    (out / "record.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def host_costs(folder: Path, maps: list, config, out: Path) -> dict[str, tuple[float, float]]:
    """CPU ms per image by step: (baseline, ours); decode and prepare have no baseline of their own. Writes
    into the new folder ``out``."""
    files = sorted(folder.glob("*.jpg"))
    run = RunFolder(out)
    run.root.mkdir()
    images = [load_image(f) for f in files]
    finish = lambda i: finish_maps(run, ImageFile(f"{i}.jpg", 1, 1), *maps[i % len(maps)], config.vocabulary,  # noqa: E731
                                   config.region_filter, "fp32")
    baseline = lambda i: baseline_finish(run.root, *maps[i % len(maps)], config)  # noqa: E731
    many = 10 * len(files)  # the steps of a few ms: enough calls per round that this VM's noise averages out
    decode = cpu_ms(lambda i: load_image(files[i % len(files)]), many, rounds=5)
    prepare = cpu_ms(lambda i: prepare_image(images[i % len(images)]), many, rounds=5)
    return {
        "decode (JPEG)": (decode, decode),
        "prepare (host part: to a tensor)": (prepare, prepare),
        "finish (PNG, regions, RLE, record)": (cpu_ms(baseline, len(files)), cpu_ms(finish, many, rounds=5)),
    }


def finishing_throughput(root: Path, maps: list, config, processes: int, count: int) -> float:
    """Images/s of ``count`` stored maps through ``processes`` finishing processes (started beforehand)."""
    run = RunFolder(root / f"finish-{processes}")
    with Finishers(run, config.vocabulary, config.region_filter, "fp32", processes) as finishers:
        for future in [finishers.submit(ImageFile(f"warm{i}.jpg", 1, 1), *maps[0]) for i in range(processes * 2)]:
            future.result()
        start = time.perf_counter()
        futures = [finishers.submit(ImageFile(f"{i}.jpg", 1, 1), *maps[i % len(maps)]) for i in range(count)]
        for future in futures:
            future.result()
    return count / (time.perf_counter() - start)


class ModelTimer:
    """CUDA events around every dense forward: the GPU time spent in the model."""

    def __init__(self, cc: ClearCLIP) -> None:
        self.pairs: list = []
        forward = cc.encode_dense

        def timed(pixels):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            result = forward(pixels)
            end.record()
            self.pairs.append((start, end))
            return result

        cc.encode_dense = timed

    def seconds(self) -> float:
        torch.cuda.synchronize()
        return sum(start.elapsed_time(end) for start, end in self.pairs) / 1e3


def model_and_end_to_end(cc, folder: Path, root: Path, job: LabelJob, batch_size: int) -> tuple[float, float, float]:
    """(model-only images/s, end-to-end images/s, share of the end-to-end time the GPU spent in the model)."""
    config = job.label_config()
    files = [folder / name for name in scan_images(folder).names]
    prepared = [prepare_image(load_image(f)) for f in files]
    pixel_thresholds = config.region_filter.pixel_thresholds(config.vocabulary.names)
    segment = lambda batch: cc.segment_categories(batch, config.vocabulary, config.settings,  # noqa: E731
                                                  pixel_thresholds).maps()
    segment(prepared[:batch_size])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(prepared), batch_size):
        segment(prepared[i : i + batch_size])
    model_only = len(files) / (time.perf_counter() - start)
    timer = ModelTimer(cc) if cc.device.type == "cuda" else None
    start = time.perf_counter()
    label_folder(cc, folder, root / f"run-{batch_size}", config, job.info(config), progress=False)
    seconds = time.perf_counter() - start
    share = timer.seconds() / seconds if timer else float("nan")
    return model_only, len(files) / seconds, share


def neighbour_case(root: Path, count: int) -> tuple[float, float, float]:
    """(idle seconds, seconds beside one busy core, seconds beside it with OpenMP threads spinning)."""
    folder = root / "small"
    folder.mkdir()
    for i, image in enumerate(synthetic_images(count, 48, 64, seed=5)):
        Image.fromarray(image).save(folder / f"{i:05d}.png")
    command = [sys.executable, "-m", "clearclip", "label", str(folder), "--class", "sky", "--class", "grass",
               "--class", "road", "--model", "ViT-S-16", "--pretrained", "none", "--short-side", "64", "--crop", "64",
               "--stride", "64", "--quiet"]

    def timed(out: str, env: dict) -> float:
        start = time.perf_counter()
        done = subprocess.run(command + ["--out", str(root / out)], capture_output=True, text=True, env={**os.environ, **env})
        if done.returncode:
            raise SystemExit(f"clearclip label failed ({done.returncode}): {done.stderr.strip()}")
        return time.perf_counter() - start

    idle = timed("idle", {})
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = timed("busy", {})
        spinning = timed("spinning", {"OMP_WAIT_POLICY": "ACTIVE"})
    finally:
        neighbour.kill()
    return idle, busy, spinning


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="fewer images; about 5 minutes on 2 cores")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cores = available_cores()
    precision = "fp32" if device.type == "cpu" else "bf16"
    classes = BENCHMARKS["voc21"].vocabulary().to_strings()
    job = LabelJob(classes, model="ViT-B-16", pretrained=None, device=args.device, precision=precision)
    config = job.label_config()
    cc, fragmenting = (random_model(seed, device, precision) for seed in (0, 1))  # the same maps in every run
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / "voc"
        folder.mkdir()
        count = 6 if args.quick else 16
        if device.type == "cuda":
            count = 512
        for i, image in enumerate(synthetic_images(count, 375, 500)):
            Image.fromarray(image).save(folder / f"{i:05d}.jpg", quality=90)

        photos = root / "photos"
        photos.mkdir()
        for path in sorted(WORKSPACE_SAMPLES.iterdir()):
            Image.fromarray(load_image(path)).resize((500, 375)).save(photos / f"{path.stem}.jpg", quality=90)
        host = {}
        for name, images, model in (("synthetic images", folder, cc),
                                    ("synthetic images, more fragmented", folder, fragmenting),
                                    ("workspace photos", photos, cc)):
            files = sorted(images.glob("*.jpg"))[:6]  # label maps of a real run, for the host measurements
            prepared = [prepare_image(load_image(f)) for f in files]
            maps = model.segment_categories(prepared, config.vocabulary, config.settings,
                                            config.region_filter.pixel_thresholds(config.vocabulary.names)).maps()
            maps = [(c.copy(), s.copy()) for c, s in maps]
            kept = np.mean([len(extract_regions(c, s, config.vocabulary, config.region_filter)) for c, s in maps])
            host[name] = (len(files), kept, maps, host_costs(images, maps, config, root / f"host-costs-{len(host)}"))
        del fragmenting
        maps = host["synthetic images"][2]
        finish_count = 200 if args.quick else 1000
        one = finishing_throughput(root, maps, config, 1, finish_count)
        every = finishing_throughput(root, maps, config, cores, finish_count) if cores > 1 else one

        print(f"host: {cores} cores available; CPU ms per image, stored maps of real runs, 500x375, 21 classes")
        for name, (stored, kept, _, costs) in host.items():
            print(f"  {name}: {stored} maps, {kept:.0f} regions kept per image   baseline     ours  speedup")
            for step, (baseline, ours) in costs.items():
                print(f"    {step:<36} {baseline:8.2f} {ours:8.2f} {baseline / ours:7.2f}x")
            baseline, ours = (sum(c[side] for c in costs.values()) for side in (0, 1))
            print(f"    {'total per image':<36} {baseline:8.2f} {ours:8.2f} {baseline / ours:7.2f}x")
        print(f"finishing (synthetic maps): 1 process {one:7.1f} images/s, {cores} processes {every:7.1f} images/s "
              f"({every / one:.2f}x)")

        batch_sizes = [8, 16, 32, 64] if device.type == "cuda" else [4]
        print(f"\nViT-B-16 random weights, {device} {precision}, 500x375 images, 21 classes, {config.workers()} decode "
              f"workers, {config.finisher_count(config.workers())} finishers")
        print(f"{'batch':>5} {'model only img/s':>17} {'end to end img/s':>17} {'ratio':>6} {'GPU time in model':>18}")
        for batch_size in batch_sizes:
            batch_job = LabelJob(**{**job.to_dict(), "batch_size": batch_size})
            model_only, end_to_end, share = model_and_end_to_end(cc, folder, root, batch_job, batch_size)
            share_text = f"{100 * share:17.1f}%" if share == share else f"{'-':>18}"
            print(f"{batch_size:>5} {model_only:>17.2f} {end_to_end:>17.2f} {end_to_end / model_only:>6.2f} {share_text}")

        if device.type == "cpu":
            idle, busy, spinning = neighbour_case(root, 60 if args.quick else 200)
            print(f"\nclearclip label beside a process that keeps one of {cores} cores busy (ViT-S-16, small images):")
            print(f"  idle {idle:.1f} s; beside it {busy:.1f} s ({busy / idle:.2f}x; losing 1 of {cores} cores alone "
                  f"would be {cores / max(1, cores - 1):.2f}x); with OpenMP threads spinning as torch's default "
                  f"{spinning:.1f} s ({spinning / idle:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
