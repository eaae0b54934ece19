"""Labeling images into a run folder: decode, segment, and finish each image (label map and record).

Which images need work is decided per image (see ``RunFolder.state``): a call labels new, changed,
failed and unfinished images and nothing else, and loads the model only when there is something to do.
The stages overlap: DataLoader workers decode (waiting on a shared pixel budget, ``io.budget``), the model
queues one batch while the previous batch's maps come back from the device, and finishing processes write
label maps and records.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import EnvironmentFailure, one_line
from ..io.budget import DEFAULT_DECODE_BUDGET, PixelBudget
from ..io.helpers import helper_context
from ..io.images import ImageFile, ImageLoadError, load_image
from ..io.storage import is_url, open_storage
from .finish import Finishers
from .folder import RunFolder, is_disk_full
from .job import LabelConfig

if TYPE_CHECKING:
    import numpy as np

    from ..inference.segmentation import PreparedImage

FETCH_AHEAD = 16  # objects each decoding process fetches ahead of its decoder (object storage)
FAILURES_LOGGED = 20  # failures reported one by one per call; the rest are counted (run.json lists them all)


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

    def record(self) -> dict:
        """The counts a run's summary and a shard's record keep."""
        return {"labeled": self.labeled, "skipped_as_done": self.skipped, "failed": len(self.failures),
                "batch_size": self.batch_size}


def stat_images(root: str | Path, names: Sequence[str], options: dict | None = None) -> list[ImageFile]:
    """ImageFiles for names relative to ``root`` (a folder, or an fsspec URL: ``options`` its storage's,
    FETCH_AHEAD objects asked at once); a missing file gets size -1, so it is never done."""
    if is_url(root):
        storage = open_storage(root, options)

        def stat(name: str) -> ImageFile:
            info = storage.info(name)
            return ImageFile(name, info.size, info.mtime_ns, info.etag) if info else ImageFile(name, -1, -1)

        with ThreadPoolExecutor(FETCH_AHEAD) as pool:
            return list(pool.map(stat, names))
    images = []
    for name in names:
        try:
            info = os.stat(Path(root) / name)
            images.append(ImageFile(name, info.st_size, info.st_mtime_ns))
        except OSError:
            images.append(ImageFile(name, -1, -1))
    return images


def _start_decode_worker(_: int) -> None:
    """DataLoader workers decode with one thread and leave Ctrl-C to the main process, which reports it."""
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


class ImageFolder:
    """Decoded images for a DataLoader: ``(ImageFile as decoded, PreparedImage or None, error or None,
    pixels reserved in the budget)``; decoders wait on ``budget`` before decoding. ``root`` is a folder or
    an fsspec URL (``RemoteImages`` fetches those ahead, ``fetchers`` at a time per decoding process)."""

    def __init__(self, root: Path | str, images: Sequence[ImageFile], max_pixels: int, budget: PixelBudget,
                 options: dict | None = None, fetchers: int = FETCH_AHEAD) -> None:
        self.root, self.images, self.max_pixels, self.budget = root, list(images), max_pixels, budget
        self.remote = RemoteImages(root, self.images, options, fetchers) if is_url(root) else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[ImageFile, "PreparedImage | None", str | None, int]:
        reserved = 0
        with self.budget.turn(index) as reserve_turn:

            def reserve(pixels: int) -> None:
                nonlocal reserved
                reserve_turn(pixels)
                reserved = pixels

            load = self._load_fetched if self.remote is not None else self._load_file
            image, array, error = load(index, reserve)
        if error is not None:
            return image, None, error, reserved
        from ..inference.segmentation import prepare_image

        return image, prepare_image(array), None, reserved

    def _load_file(self, index: int, reserve: Callable[[int], None]) -> tuple[ImageFile, "np.ndarray | None", str | None]:
        """(the image as stat'ed before decoding, its pixels or None, the error or None)."""
        name = self.images[index].name
        path = self.root / name
        try:
            info = os.stat(path)
            image = ImageFile(name, info.st_size, info.st_mtime_ns)
            return image, load_image(path, self.max_pixels, reserve), None
        except FileNotFoundError:
            return self.images[index], None, "file not found (deleted while the run was going)"
        except ImageLoadError as error:
            return image, None, error.reason

    def _load_fetched(self, index: int, reserve: Callable[[int], None]) -> tuple[ImageFile, "np.ndarray | None", str | None]:
        """``_load_file`` of an object, its bytes fetched ahead: the listed version is the one recorded (the
        merge relabels an image whose object changed since it was listed)."""
        image = self.images[index]
        try:
            content = self.remote.fetch(index)
            if len(content) != image.size:  # replaced since it was listed: record it as no known version
                image = ImageFile(image.name, len(content), image.mtime_ns)
            return image, load_image(f"{self.root}/{image.name}", self.max_pixels, reserve, content=content), None
        except FileNotFoundError:
            return image, None, "object not found (deleted while the run was going)"
        except ImageLoadError as error:
            return image, None, error.reason
        except OSError as error:
            return image, None, f"cannot be fetched ({one_line(error)})"


class RemoteImages:
    """The bytes of a dataset's objects, ``fetchers`` at a time ahead of the decoder that asks for them. In a
    DataLoader worker, the items it will be asked for next are the ones its own turn comes to (workers take
    items in turn), so each worker fetches ahead along its own share."""

    def __init__(self, root: str, images: list[ImageFile], options: dict | None, fetchers: int) -> None:
        self.root, self.images, self.options, self.fetchers = root, images, options, fetchers
        self._storage = None
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: dict[int, Future] = {}

    def __getstate__(self) -> dict:
        return {"root": self.root, "images": self.images, "options": self.options, "fetchers": self.fetchers}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["root"], state["images"], state["options"], state["fetchers"])

    def fetch(self, index: int) -> bytes:
        if self._pool is None:
            self._storage = open_storage(self.root, self.options)
            self._pool = ThreadPoolExecutor(self.fetchers, thread_name_prefix="fetch")
        from torch.utils.data import get_worker_info

        worker = get_worker_info()
        step = worker.num_workers if worker is not None else 1
        for ahead in range(index, min(len(self.images), index + step * self.fetchers), step):
            if ahead not in self._ahead:
                self._ahead[ahead] = self._pool.submit(self._storage.read_bytes, self.images[ahead].name)
        for stale in [i for i in self._ahead if i < index]:  # skipped by the loader: never asked for again
            self._ahead.pop(stale).cancel()
        return self._ahead.pop(index).result()


def image_loader(root: Path | str, images: Sequence[ImageFile], config: LabelConfig, workers: int,
                 pin_memory: bool = False, fetchers: int = FETCH_AHEAD):
    """The DataLoader of ``label_images``: one decoded image an item, ``workers`` decoding processes sharing one
    pixel budget. Workers of a remote dataset are spawned, not forked: the object-store client (a Rust runtime
    with its own threads) does not survive a fork."""
    from torch.utils.data import DataLoader

    context = helper_context() if is_url(root) and workers else None
    budget = PixelBudget(max(config.max_pixels, DEFAULT_DECODE_BUDGET), context)
    return DataLoader(
        ImageFolder(root, images, config.max_pixels, budget, config.storage_options, fetchers), batch_size=1,
        num_workers=workers, collate_fn=list, pin_memory=pin_memory, multiprocessing_context=context,
        prefetch_factor=2 * config.batch_size if workers else None,
        worker_init_fn=_start_decode_worker if workers else None,
    )


def _batches(loader, budget: PixelBudget, batch_size: int) -> Iterator[list]:
    """Images from a one-image-per-item DataLoader in batches of ``batch_size``, or fewer once their pixels
    reach the budget; each image's pixels go back to the budget as it is taken."""
    batch, pixels = [], 0
    for (image, prepared, error, reserved), in loader:
        budget.release(reserved)
        batch.append((image, prepared, error))
        pixels += reserved
        if len(batch) == batch_size or pixels >= budget.pixels:
            yield batch
            batch, pixels = [], 0
    if batch:
        yield batch


class _Segmenter:
    """``segment_categories`` with the CUDA out-of-memory fallback: halve the images per pass, then the windows.
    The smaller sizes hold for this call only: a model shared by later calls keeps its own."""

    def __init__(self, cc, config: LabelConfig, log: Callable[[str], None]) -> None:
        self.cc, self.config, self.log = cc, config, log
        self.chunk = config.batch_size
        self.windows = cc.window_batch_size
        self.pixel_thresholds = config.region_filter.pixel_thresholds(config.vocabulary.names)

    def __call__(self, prepared: list) -> list:
        """BatchResults covering ``prepared`` in order (one per pass), their copies to the host started."""
        import torch

        results = []
        start = 0
        while start < len(prepared):
            chunk = prepared[start : start + self.chunk]
            try:
                results.append(self.cc.segment_categories(chunk, self.config.vocabulary, self.config.settings,
                                                          self.pixel_thresholds, self.windows))
                start += len(chunk)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                if self.chunk > 1:
                    self.chunk //= 2
                    self.log(f"CUDA out of memory; retrying with {self.chunk} image(s) per pass")
                elif self.windows > 1:
                    self.windows //= 2
                    self.log(f"CUDA out of memory; retrying with {self.windows} window(s) per pass")
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
    log: Callable[[str], None] = lambda message: print(f"clearclip: {one_line(message)}", file=sys.stderr),
) -> LabelStats:
    """Label the ``images`` (relative to ``root``) that are not done in ``folder``; failed ones are retried.

    ``model`` is a ClearCLIP or a function that loads one (called only if there is work).
    ``on_progress(n)`` is called with the number of images finished (labeled or failed) so far.
    """
    root = root if is_url(root) else Path(root)
    start = time.perf_counter()
    todo = folder.pending(images)
    stats = LabelStats(skipped=len(images) - len(todo), batch_size=config.batch_size)
    if not todo:
        return stats
    import torch
    from tqdm import tqdm

    if not hasattr(model, "segment_prepared"):
        loading = time.perf_counter()
        model = model()
        stats.model_seconds = time.perf_counter() - loading
    cc = model
    threads = None
    if cc.device.type == "cpu":
        threads = config.model_threads()
        torch.set_num_threads(threads)
    folder.claim_precision(cc.precision, threads)
    segment = _Segmenter(cc, config, log)
    workers = config.workers()
    loader = image_loader(root, todo, config, workers, pin_memory=cc.device.type == "cuda")
    budget = loader.dataset.budget
    bar = tqdm(total=len(todo), unit="img", desc="labeling", disable=not progress, dynamic_ncols=True)
    pending: list[Future] = []

    def finished() -> None:
        bar.update(1)
        if on_progress:
            on_progress(stats.labeled + len(stats.failures))

    def collect(future: Future) -> None:
        stats.bytes_written += future.result()
        stats.labeled += 1
        finished()

    def hand_over(batch: tuple[list[ImageFile], list], finishers: Finishers) -> None:
        """Wait for a batch's maps to reach the host and give each image to a finisher."""
        batch_images, results = batch
        maps = [pair for result in results for pair in result.maps()]
        for image, (categories, scores) in zip(batch_images, maps):
            pending.append(finishers.submit(image, categories, scores))

    try:
        with Finishers(folder, config.vocabulary, config.region_filter, cc.precision,
                       config.finisher_count(workers)) as finishers:
            previous = None
            for batch in _batches(loader, budget, config.batch_size):
                ready = []
                for image, prepared, error in batch:
                    if error is None:
                        ready.append((image, prepared))
                        continue
                    attempts = folder.write_failure(image, error)
                    stats.failures[image.name] = error
                    if len(stats.failures) <= FAILURES_LOGGED:
                        where = f"{root}/{image.name}" if is_url(root) else root / image.name
                        log(f"skipped {where}: {error}" + (f" (attempt {attempts})" if attempts > 1 else ""))
                    finished()
                current = ([image for image, _ in ready], segment([p for _, p in ready])) if ready else None
                if previous is not None:
                    hand_over(previous, finishers)  # while the device works on the current batch
                previous = current
                while len(pending) > 4 * config.batch_size:
                    collect(pending.pop(0))
            if previous is not None:
                hand_over(previous, finishers)
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

