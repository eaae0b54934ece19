"""Labeling a folder: images in, per-image results written atomically, merged into COCO and run.json.

A run folder holds ``config.json`` (what the run computes), ``parts/<file>.json`` (one finished
image each; a file exists only once complete), ``labels/<file without extension>.png``, and after
the merge ``annotations.json`` and ``run.json``. A rerun skips images that have a part, so a killed
run resumes and the merged result equals an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .atomic import write_json
from .coco import assemble, region_annotation
from .errors import ClearCLIPError
from .images import ImageLoadError, list_images, load_image
from .predictor import ClearCLIP
from .regions import RegionFilter, category_map, extract_regions
from .segmentation import PreparedImage, Segmentation, SegmentSettings, prepare_image
from .visualize import save_label_png
from .vocabulary import Vocabulary


@dataclass(frozen=True)
class LabelConfig:
    """What a labeling run computes (vocabulary, segmentation settings, filters) and how it batches."""

    vocabulary: Vocabulary
    settings: SegmentSettings = SegmentSettings()
    region_filter: RegionFilter = RegionFilter()
    batch_size: int = 4  # images whose windows share forward passes
    num_workers: int = -1  # DataLoader decode workers; -1: one per spare core, up to 4

    def __post_init__(self) -> None:
        if self.settings.background_threshold > 0 and not self.vocabulary.has_background:
            raise ClearCLIPError("--background-threshold needs 'background' as the first class of the vocabulary")

    def workers(self) -> int:
        if self.num_workers >= 0:
            return self.num_workers
        return max(0, min(4, (os.cpu_count() or 1) - 1))


@dataclass
class LabelStats:
    """What one call of ``label_images`` did."""

    labeled: int = 0
    skipped: int = 0  # already done by an earlier run
    failures: dict[str, str] = field(default_factory=dict)  # file -> reason
    seconds: float = 0.0


def part_path(run_dir: Path, file_name: str) -> Path:
    """Where the finished record of one image lives (the image's own name plus ``.json``)."""
    return run_dir / "parts" / f"{file_name}.json"


def label_path(run_dir: Path, file_name: str) -> Path:
    """``labels/<relative path without extension>.png``."""
    return run_dir / "labels" / PurePosixPath(file_name).with_suffix(".png")


def read_part(run_dir: Path, file_name: str) -> dict | None:
    """The stored record of an image, or None when it has not finished."""
    try:
        return json.loads(part_path(run_dir, file_name).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_done(run_dir: Path, file_name: str) -> bool:
    """True when the image has a record that is not a failure (failures are retried)."""
    part = read_part(run_dir, file_name)
    return part is not None and "error" not in part


def set_aside_collisions(run_dir: Path, files: Sequence[str]) -> list[str]:
    """Files whose label map path is not taken by an earlier file; the others get a failure record.

    ``a.jpg`` and ``a.png`` in one folder would share ``labels/a.png``: the first in sorted order is
    labeled, the second is reported with the reason.
    """
    owner: dict[Path, str] = {}
    kept = []
    for file_name in files:
        target = label_path(run_dir, file_name)
        if target in owner:
            reason = f"its label map {target.name} would overwrite that of {owner[target]}; rename one of them"
            print(f"clearclip: skipped {file_name}: {reason}", file=sys.stderr)
            write_json(part_path(run_dir, file_name), {"file_name": file_name, "error": reason})
            continue
        owner[target] = file_name
        kept.append(file_name)
    return kept


def check_run_dir(run_dir: Path, info: dict) -> None:
    """Record what the run computes in ``config.json``; refuse to mix in results of other settings."""
    path = run_dir / "config.json"
    if path.exists():
        existing = json.loads(path.read_text(encoding="utf-8"))
        if existing != info:
            changed = sorted(k for k in set(existing) | set(info) if existing.get(k) != info.get(k))
            raise ClearCLIPError(
                f"{run_dir} holds results made with other settings ({', '.join(changed)} differ); "
                "use a new --out folder to label with these settings"
            )
        return
    write_json(path, info, indent=2)


class ImageFolder(Dataset):
    """Decoded and prepared images for a DataLoader; unreadable files come back with their error."""

    def __init__(self, root: Path, files: Sequence[str], settings: SegmentSettings, mean, std) -> None:
        self.root, self.files, self.settings, self.mean, self.std = root, list(files), settings, mean, std

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[str, PreparedImage | None, str | None]:
        file_name = self.files[index]
        try:
            image = load_image(self.root / file_name)
        except ImageLoadError as error:
            return file_name, None, error.reason
        return file_name, prepare_image(image, self.settings, self.mean, self.std), None


def finish_image(run_dir: Path, file_name: str, segmentation: Segmentation, config: LabelConfig) -> dict:
    """Write the category label map and the image's record (regions as COCO annotations)."""
    categories = category_map(segmentation, config.vocabulary, config.region_filter)
    save_label_png(categories, label_path(run_dir, file_name))
    regions = extract_regions(segmentation, config.vocabulary, config.region_filter, categories)
    height, width = segmentation.labels.shape
    record = {
        "file_name": file_name,
        "width": int(width),
        "height": int(height),
        "annotations": [region_annotation(region, config.vocabulary) for region in regions],
    }
    write_json(part_path(run_dir, file_name), record)
    return record


def _collate(batch):
    return batch


def label_images(
    cc: ClearCLIP, root: str | Path, files: Sequence[str], run_dir: str | Path, config: LabelConfig, progress: bool = True
) -> LabelStats:
    """Label the images ``files`` (relative to ``root``) that have no finished record in ``run_dir``.

    Decoding runs in DataLoader workers, windows of ``config.batch_size`` images share forward
    passes, and label maps and records are written by a thread pool while the model runs.
    """
    root, run_dir = Path(root), Path(run_dir)
    start = time.perf_counter()
    todo = [f for f in files if not is_done(run_dir, f)]
    stats = LabelStats(skipped=len(files) - len(todo))
    if not todo:
        return stats
    dataset = ImageFolder(root, todo, config.settings, cc.mean, cc.std)
    workers = config.workers()
    loader = DataLoader(
        dataset, batch_size=config.batch_size, num_workers=workers, collate_fn=_collate,
        pin_memory=cc.device.type == "cuda", prefetch_factor=2 if workers else None, persistent_workers=False,
    )
    bar = tqdm(total=len(todo), unit="img", desc="labeling", disable=not progress, dynamic_ncols=True)
    pending: list[Future] = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for batch in loader:
            ready = []
            for file_name, prepared, error in batch:
                if error is None:
                    ready.append((file_name, prepared))
                    continue
                stats.failures[file_name] = error
                print(f"clearclip: skipped {root / file_name}: {error}", file=sys.stderr)
                write_json(part_path(run_dir, file_name), {"file_name": file_name, "error": error})
                bar.update(1)
            if ready:
                segmentations = cc.segment_prepared([p for _, p in ready], config.vocabulary, config.settings)
                for (file_name, _), segmentation in zip(ready, segmentations):
                    pending.append(pool.submit(finish_image, run_dir, file_name, segmentation, config))
            while len(pending) > 2 * config.batch_size:
                pending.pop(0).result()
                stats.labeled += 1
                bar.update(1)
        for future in pending:
            future.result()
            stats.labeled += 1
            bar.update(1)
    bar.close()
    stats.seconds = time.perf_counter() - start
    return stats


def merge_run(run_dir: str | Path, files: Sequence[str], vocabulary: Vocabulary, info: dict, extra: dict | None = None) -> dict:
    """Merge the records of ``files`` (in this order) into ``annotations.json`` and write ``run.json``.

    Returns the run summary that ``run.json`` holds.
    """
    run_dir = Path(run_dir)
    records, failures, missing = [], {}, []
    for file_name in files:
        part = read_part(run_dir, file_name)
        if part is None:
            missing.append(file_name)
        elif "error" in part:
            failures[file_name] = part["error"]
        else:
            records.append(part)
    if not missing:  # every image is finished, so no writer is active: clear what killed writers left
        for leftover in run_dir.rglob(".*.tmp"):
            leftover.unlink(missing_ok=True)
    document = assemble(records, vocabulary, info)
    write_json(run_dir / "annotations.json", document)
    names = {c["id"]: c["name"] for c in document["categories"]}
    per_class = Counter(names[a["category_id"]] for a in document["annotations"])
    summary = {
        "info": info,
        "images_listed": len(files),
        "images_labeled": len(records),
        "annotations": len(document["annotations"]),
        "annotations_per_class": {name: per_class.get(name, 0) for name in names.values()},
        "failures": [{"file": f, "error": e} for f, e in failures.items()],
        "missing": missing,
        **(extra or {}),
    }
    write_json(run_dir / "run.json", summary, indent=2)
    return summary


def summary_table(summary: dict) -> str:
    """The end-of-run table: images, annotations per class, failures."""
    lines = [
        f"images labeled  {summary['images_labeled']} of {summary['images_listed']}",
        f"annotations     {summary['annotations']}",
        f"failures        {len(summary['failures'])}",
    ]
    if summary.get("images_per_second"):
        lines.append(f"images/s        {summary['images_per_second']:.2f}")
    lines.append("")
    lines.append(f"{'class':<30} {'annotations':>11}")
    for name, count in summary["annotations_per_class"].items():
        lines.append(f"{name:<30} {count:>11}")
    for failure in summary["failures"]:
        lines.append(f"failed: {failure['file']}: {failure['error']}")
    return "\n".join(lines)


def label_folder(
    cc: ClearCLIP, dataset_dir: str | Path, run_dir: str | Path, config: LabelConfig, info: dict, progress: bool = True
) -> dict:
    """Label every image under ``dataset_dir`` into ``run_dir`` (resuming), merge, and return the summary.

    ``info`` (see ``LabelJob.info``) is what the run computes; a run folder only takes one.
    """
    dataset_dir, run_dir = Path(dataset_dir), Path(run_dir)
    files = list_images(dataset_dir)
    check_run_dir(run_dir, info)
    stats = label_images(cc, dataset_dir, set_aside_collisions(run_dir, files), run_dir, config, progress=progress)
    extra = {
        "dataset": str(dataset_dir.resolve()),
        "images_per_second": stats.labeled / stats.seconds if stats.seconds and stats.labeled else 0.0,
        "last_invocation": {
            "labeled": stats.labeled,
            "skipped_as_done": stats.skipped,
            "failed": len(stats.failures),
            "seconds": round(stats.seconds, 3),
            "device": str(cc.device),
            "torch": torch.__version__,
        },
    }
    return merge_run(run_dir, files, config.vocabulary, info, extra)
