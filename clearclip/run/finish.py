"""Finishing a labeled image: its label map PNG, its regions with their RLE, and the record that commits it.

Finishing costs a few milliseconds of CPU per image and never touches the model, so it runs in worker
processes (torch-free, one thread each; ``io.helpers``) while the main process keeps the device busy.
"""

from __future__ import annotations

import os
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from ..annotations.regions import extract_regions
from ..annotations.thresholds import RegionFilter
from ..io.helpers import helper_context, start_helper
from ..io.images import ImageFile
from ..io.label_png import encode_label_png
from ..vocabulary import Vocabulary
from .folder import RunFolder


def finish_maps(folder: RunFolder, image: ImageFile, categories: np.ndarray, scores: np.ndarray,
                vocabulary: Vocabulary, region_filter: RegionFilter, precision: str) -> int:
    """Write an image's label map, then its record (which commits it); returns the bytes written.

    ``categories`` is the (H, W) map of category ids, ``scores`` the per-pixel probability.
    """
    written = folder.write_label(image.name, encode_label_png(categories))
    height, width = categories.shape
    annotations = extract_regions(categories, scores, vocabulary, region_filter)
    return written + folder.write_record(image, width, height, [a.line() for a in annotations],
                                         [a.category_id for a in annotations], precision)


_job: tuple | None = None  # (folder, vocabulary, region_filter, precision) of a worker process


def _start_worker(parent: int, folder: RunFolder, vocabulary: Vocabulary, region_filter: RegionFilter, precision: str) -> None:
    global _job
    start_helper(parent)
    _job = (folder, vocabulary, region_filter, precision)


def _finish_in_worker(image: ImageFile, block: str, shape: tuple[int, int], category_type: str) -> int:
    """Finish an image whose maps the main process left in shared memory (categories, then scores)."""
    folder, vocabulary, region_filter, precision = _job
    memory = SharedMemory(block)  # the main process unlinks it once this task is done
    try:
        categories = np.ndarray(shape, category_type, buffer=memory.buf)
        scores = np.ndarray(shape, np.float32, buffer=memory.buf, offset=_aligned(categories.nbytes))
        return finish_maps(folder, image, categories, scores, vocabulary, region_filter, precision)
    finally:
        del categories, scores
        memory.close()


def _aligned(size: int) -> int:
    return -(-size // 8) * 8


class Finishers:
    """``processes`` finishing processes (spawned: nothing of the main process's CUDA or threads is
    inherited), or, with 0, one thread of this process. ``with Finishers(...) as f: f.submit(...)``."""

    def __init__(self, folder: RunFolder, vocabulary: Vocabulary, region_filter: RegionFilter, precision: str,
                 processes: int) -> None:
        self.job = (folder, vocabulary, region_filter, precision)
        self.processes = processes
        self._pool: Executor | None = None

    def __enter__(self) -> "Finishers":
        folder, vocabulary, region_filter, precision = self.job
        if self.processes:
            self._pool = ProcessPoolExecutor(self.processes, mp_context=helper_context(), initializer=_start_worker,
                                             initargs=(os.getpid(), folder, vocabulary, region_filter, precision))
        else:
            self._pool = ThreadPoolExecutor(1)
        return self

    def submit(self, image: ImageFile, categories: np.ndarray, scores: np.ndarray) -> Future:
        """Finish one image; the future gives the bytes written. Maps travel to a process through shared
        memory: one copy here, none through a pipe."""
        if not self.processes:
            return self._pool.submit(finish_maps, *self.job[:1], image, categories, scores, *self.job[1:])
        offset = _aligned(categories.nbytes)
        memory = SharedMemory(create=True, size=offset + scores.nbytes)
        np.ndarray(categories.shape, categories.dtype, buffer=memory.buf)[:] = categories
        np.ndarray(scores.shape, np.float32, buffer=memory.buf, offset=offset)[:] = scores
        future = self._pool.submit(_finish_in_worker, image, memory.name, categories.shape, categories.dtype.str)
        future.add_done_callback(lambda _: (memory.close(), memory.unlink()))
        return future

    def __exit__(self, *exc_info) -> None:
        self._pool.shutdown(wait=exc_info[0] is None, cancel_futures=exc_info[0] is not None)
