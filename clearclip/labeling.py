"""Labeling images into a run folder: decode, segment, and write each image's label map and record.

Which images need work is decided per image (see ``RunFolder.state``): a rerun labels new, changed,
failed and unfinished images and nothing else, and loads the model only when there is something to do.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .coco import region_annotation
from .errors import ClearCLIPError, EnvironmentFailure
from .images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageFile, ImageLoadError, load_image, scan_images
from .job import default_workers
from .merge import merge_run
from .regions import RegionFilter, category_map, extract_regions
from .run_folder import DONE, RunFolder, is_disk_full
from .segmentation import PreparedImage, Segmentation, SegmentSettings, prepare_image
from .visualize import save_label_png
from .vocabulary import Vocabulary

KILL_AFTER_VARIABLE = "CLEARCLIP_KILL_AFTER_IMAGES"  # tests: SIGKILL this process after N images are committed
FAILURES_LOGGED = 20  # failures reported one by one per call; the rest are counted (run.json lists them all)
_committed_in_process = 0


@dataclass(frozen=True)
class LabelConfig:
    """What a labeling run computes (vocabulary, segmentation settings, filters) and how it batches."""

    vocabulary: Vocabulary
    settings: SegmentSettings = SegmentSettings()
    region_filter: RegionFilter = RegionFilter()
    batch_size: int = 4  # images whose windows share forward passes
    num_workers: int = -1  # DataLoader decode workers; -1: one per spare core, up to 4
    max_pixels: int = DEFAULT_MAX_PIXELS

    def workers(self) -> int:
        return self.num_workers if self.num_workers >= 0 else default_workers()


@dataclass
class LabelStats:
    """What one call of ``label_images`` did."""

    labeled: int = 0
    skipped: int = 0  # already done by an earlier run
    failures: dict[str, str] = field(default_factory=dict)  # file -> reason
    seconds: float = 0.0
    batch_size: int = 0  # images per forward pass at the end (smaller after CUDA out-of-memory)
    bytes_written: int = 0
    model_seconds: float = 0.0  # loading the model, when this call loaded it


def stat_images(root: str | Path, names: Sequence[str]) -> list[ImageFile]:
    """ImageFiles for names relative to ``root``; a missing file gets size -1, so it is never done."""
    images = []
    for name in names:
        try:
            info = os.stat(Path(root) / name)
            images.append(ImageFile(name, info.st_size, info.st_mtime_ns))
        except OSError:
            images.append(ImageFile(name, -1, -1))
    return images


def _ignore_interrupts(_: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which reports it in one line."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class ImageFolder:
    """Decoded and prepared images for a DataLoader: ``(ImageFile as decoded, prepared or None, error or None)``."""

    def __init__(self, root: Path, images: Sequence[ImageFile], config: LabelConfig, mean, std) -> None:
        self.root, self.images, self.config, self.mean, self.std = root, list(images), config, mean, std

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[ImageFile, PreparedImage | None, str | None]:
        name = self.images[index].name
        path = self.root / name
        try:
            info = os.stat(path)
            image = ImageFile(name, info.st_size, info.st_mtime_ns)
            array = load_image(path, self.config.max_pixels)
        except FileNotFoundError:
            return self.images[index], None, "file not found (deleted while the run was going)"
        except ImageLoadError as error:
            return image, None, error.reason
        return image, prepare_image(array, self.config.settings, self.mean, self.std), None


def finish_image(folder: RunFolder, image: ImageFile, segmentation: Segmentation, config: LabelConfig,
                 precision: str) -> int:
    """Write an image's label map, then its record (which commits it); returns the bytes written."""
    categories = category_map(segmentation, config.vocabulary, config.region_filter)
    label_path = folder.label_path(image.name)
    save_label_png(categories, label_path)
    height, width = categories.shape
    regions = extract_regions(categories, segmentation.scores, config.vocabulary, config.region_filter)
    annotations = [region_annotation(region, config.vocabulary) for region in regions]
    folder.write_record(image, width, height, annotations, precision)
    return label_path.stat().st_size + folder.record_path(image.name).stat().st_size


def _committed() -> None:
    global _committed_in_process
    _committed_in_process += 1
    limit = os.environ.get(KILL_AFTER_VARIABLE)
    if limit and _committed_in_process >= int(limit):
        os.kill(os.getpid(), signal.SIGKILL)


class _Segmenter:
    """``segment_prepared`` with the CUDA out-of-memory fallback: halve the images per pass, then the windows."""

    def __init__(self, cc, config: LabelConfig, log: Callable[[str], None]) -> None:
        self.cc, self.config, self.log = cc, config, log
        self.chunk = config.batch_size

    def __call__(self, prepared: list[PreparedImage]) -> list[Segmentation]:
        import torch

        results: list[Segmentation] = []
        start = 0
        while start < len(prepared):
            chunk = prepared[start : start + self.chunk]
            try:
                results += self.cc.segment_prepared(chunk, self.config.vocabulary, self.config.settings)
                start += len(chunk)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                if self.chunk > 1:
                    self.chunk //= 2
                    self.log(f"CUDA out of memory; retrying with {self.chunk} image(s) per pass")
                elif self.cc.window_batch_size > 1:
                    self.cc.window_batch_size //= 2
                    self.log(f"CUDA out of memory; retrying with {self.cc.window_batch_size} window(s) per pass")
                else:
                    raise EnvironmentFailure("CUDA out of memory with one window per pass; use a smaller --crop, "
                                             "a GPU with more memory, or --device cpu") from None
        return results


def _disk_full(folder: RunFolder, stats: LabelStats, left: int, error: OSError) -> EnvironmentFailure:
    per_image = stats.bytes_written / stats.labeled if stats.labeled else 0
    need = f"about {per_image * left / 1e6:.0f} MB more for the {left} images left" if per_image else "more space"
    return EnvironmentFailure(f"no space left on the device of {folder.root} (writing {error.filename or 'a result'}): "
                              f"{need}; free space and rerun the same command to resume")


def label_images(
    model,
    root: str | Path,
    images: Sequence[ImageFile],
    folder: RunFolder,
    config: LabelConfig,
    progress: bool = True,
    on_progress: Callable[[int], None] | None = None,
    log: Callable[[str], None] = lambda message: print(f"clearclip: {message}", file=sys.stderr),
) -> LabelStats:
    """Label the ``images`` (relative to ``root``) that are not done in ``folder``; failed ones are retried.

    ``model`` is a ClearCLIP or a function that loads one (called only if there is work). Decoding runs
    in DataLoader workers, windows of ``config.batch_size`` images share forward passes, and label maps
    and records are written by a thread pool while the model runs. ``on_progress(n)`` is called with
    the number of images finished (labeled or failed) so far.
    """
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    root = Path(root)
    start = time.perf_counter()
    todo = [image for image in images if folder.state(image) != DONE]
    stats = LabelStats(skipped=len(images) - len(todo), batch_size=config.batch_size)
    if not todo:
        return stats
    if not hasattr(model, "segment_prepared"):
        loading = time.perf_counter()
        model = model()
        stats.model_seconds = time.perf_counter() - loading
    cc = model
    folder.claim_precision(cc.precision)
    segment = _Segmenter(cc, config, log)
    workers = config.workers()
    loader = DataLoader(
        ImageFolder(root, todo, config, cc.mean, cc.std), batch_size=config.batch_size, num_workers=workers,
        collate_fn=list, prefetch_factor=2 if workers else None, worker_init_fn=_ignore_interrupts if workers else None,
    )
    bar = tqdm(total=len(todo), unit="img", desc="labeling", disable=not progress, dynamic_ncols=True)
    pending: list[Future] = []

    def finished() -> None:
        bar.update(1)
        if on_progress:
            on_progress(stats.labeled + len(stats.failures))

    def collect(future: Future) -> None:
        stats.bytes_written += future.result()
        stats.labeled += 1
        _committed()
        finished()

    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            for batch in loader:
                ready = []
                for image, prepared, error in batch:
                    if error is None:
                        ready.append((image, prepared))
                        continue
                    attempts = folder.write_failure(image, error)
                    stats.failures[image.name] = error
                    if len(stats.failures) <= FAILURES_LOGGED:
                        log(f"skipped {root / image.name}: {error}" + (f" (attempt {attempts})" if attempts > 1 else ""))
                    finished()
                if ready:
                    for (image, _), segmentation in zip(ready, segment([p for _, p in ready])):
                        pending.append(pool.submit(finish_image, folder, image, segmentation, config, cc.precision))
                while len(pending) > 2 * config.batch_size:
                    collect(pending.pop(0))
            while pending:
                collect(pending.pop(0))
    except OSError as error:
        if is_disk_full(error):
            raise _disk_full(folder, stats, len(todo) - stats.labeled - len(stats.failures), error) from error
        raise
    finally:
        bar.close()
    if len(stats.failures) > FAILURES_LOGGED:
        log(f"{len(stats.failures) - FAILURES_LOGGED} more files could not be labeled; run.json lists every failure")
    stats.batch_size = segment.chunk
    stats.seconds = time.perf_counter() - start
    return stats


def label_folder(
    model,
    dataset_dir: str | Path,
    run_dir: str | Path,
    config: LabelConfig,
    info: dict,
    progress: bool = True,
) -> dict:
    """Label every image under ``dataset_dir`` into ``run_dir`` (resuming), merge, and return the summary.

    ``model`` is a ClearCLIP or a function that loads one. ``info`` (see ``LabelJob.info``) is what the
    run computes; a run folder only takes one. The folder is locked for the whole call.
    """
    dataset_dir, folder = Path(dataset_dir), RunFolder(run_dir)
    listing = scan_images(dataset_dir, exclude=(folder.root,))
    if not listing.images:
        raise ClearCLIPError(f"no images under {dataset_dir} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}, any case)")
    with folder.lock(exclusive=True):
        folder.prepare(info)
        images, problems = folder.split_collisions(listing.images)
        stats = label_images(model, dataset_dir, images, folder, config, progress=progress)
        extra = {
            "dataset": str(dataset_dir.resolve()),
            "images_per_second": stats.labeled / stats.seconds if stats.seconds and stats.labeled else 0.0,
            "last_invocation": {"labeled": stats.labeled, "skipped_as_done": stats.skipped,
                                "failed": len(stats.failures), "seconds": round(stats.seconds, 3),
                                "batch_size": stats.batch_size},
        }
        return merge_run(folder, images, config.vocabulary, info, extra, listing.problems + problems, exclusive=True)

