"""Flow ``label-shard``: label one shard of a dataset into a run folder, on whichever worker picks it up."""

from __future__ import annotations

import functools
import time
from dataclasses import replace

import torch
from prefect import flow, get_run_logger

from clearclip.jobs import LabelJob, read_shard_marker, write_shard_marker
from clearclip.labeling import label_images
from clearclip.predictor import ClearCLIP


@functools.lru_cache(maxsize=2)
def load_labeler(model: str, pretrained: str | None, variant: str, device: str, precision: str) -> ClearCLIP:
    """The model, loaded once per process and reused by every shard that process labels."""
    return ClearCLIP.from_pretrained(model, pretrained, device=device, precision=precision, variant=variant)


@flow(name="label-shard", retries=2, retry_delay_seconds=10, log_prints=True)
def label_shard(job: dict, dataset: str, files: list[str], out: str, shard_index: int) -> dict:
    """Label ``files`` (relative to ``dataset``) into ``out``; then mark shard ``shard_index`` done.

    Images already finished in ``out`` are skipped, so a retried or re-run shard resumes. On CUDA
    out-of-memory the shard is retried with half the batch.
    """
    logger = get_run_logger()
    done = read_shard_marker(out, shard_index)
    if done is not None:
        logger.info("shard %d already finished", shard_index)
        return done
    spec = LabelJob(**job)
    config = spec.label_config()
    cc = load_labeler(spec.model, spec.pretrained, spec.variant, spec.device, spec.precision)
    start = time.perf_counter()
    batch_size = config.batch_size
    while True:
        try:
            stats = label_images(cc, dataset, files, out, replace(config, batch_size=batch_size), progress=False)
            break
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size = max(1, batch_size // 2)
            torch.cuda.empty_cache()
            logger.warning("CUDA out of memory on shard %d; retrying with batch size %d", shard_index, batch_size)
    record = {
        "shard": shard_index,
        "images": len(files),
        "labeled": stats.labeled,
        "skipped_as_done": stats.skipped,
        "failures": stats.failures,
        "seconds": round(time.perf_counter() - start, 3),
        "batch_size": batch_size,
        "device": str(cc.device),
    }
    write_shard_marker(out, shard_index, record)
    logger.info("shard %d: %d labeled, %d already done, %d failed", shard_index, stats.labeled, stats.skipped, len(stats.failures))
    return record
