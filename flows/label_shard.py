"""Flow ``label-shard``: label the files of one shard manifest into a run folder.

Runs on whichever worker of pool ``gpu`` picks it up. Images already done in the run folder are
skipped, so a shard that is submitted again after its worker died redoes only what was lost. The model
is kept per process: a long-lived shard worker (``flows/shard_worker.py``) loads it once for all shards.
"""

from __future__ import annotations

import functools
import time

from prefect import flow, get_run_logger
from prefect.states import Failed, State

from clearclip.errors import ClearCLIPError, EnvironmentFailure
from clearclip.run.folder import RunFolder, manifest_key
from clearclip.run.job import LabelJob
from clearclip.run.pipeline import label_images, stat_images

PROGRESS_EVERY_SECONDS = 2.0
REFUSED = "Refused"  # the name of a FAILED state that another run of the same shard would end in too


@functools.lru_cache(maxsize=1)
def _load_model(model: str, pretrained: str | None, variant: str, device: str, precision: str, compile: bool):
    job = LabelJob(["unused"], model=model, pretrained=pretrained, variant=variant, device=device,
                   precision=precision, compile=compile)
    return job.load_model()


def cached_model(job: LabelJob):
    """The job's model, loaded once per process and kept for the next shard that uses the same one."""
    return _load_model(job.model, job.pretrained, job.variant, job.device, job.precision, job.compile)


class ProgressFile:
    """``progress/<key>.json`` of a running shard: images finished so far, written every few seconds."""

    def __init__(self, folder: RunFolder, key: str, total: int) -> None:
        self.folder, self.path, self.total, self.last = folder, folder.progress_path(key), total, 0.0

    def __call__(self, finished: int) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_SECONDS or finished == self.total:
            self.folder.write_json(self.path, {"finished": finished, "total": self.total})
            self.last = now


@flow(name="label-shard", log_prints=True)
def label_shard(job: dict, dataset: str, manifest: str, out: str) -> dict | State:
    """Label the files listed in ``manifest`` (a manifest of ``out``, names relative to ``dataset``) into the
    run folder ``out``. ``job`` is the parent's resolved job (``LabelJob.resolved``); a job that does not compute
    what ``out/config.json`` records is refused before anything is written.

    Returns and writes ``shards/<key>.json``: images labeled, skipped as done, failed, seconds (of which
    loading the model), batch size. A ClearCLIPError other than an EnvironmentFailure (a job this worker
    cannot run: a device it lacks, missing weights, another run's folder) ends the run in a FAILED state named
    REFUSED, which the parent does not submit again. Errors of single images are failures of those images.
    """
    try:
        return _label_shard(LabelJob(**job), dataset, manifest, out)
    except EnvironmentFailure:  # the machine, not the job (a full disk, a held folder): another run may succeed
        raise
    except ClearCLIPError as error:
        get_run_logger().error("refused: %s", error)
        return Failed(name=REFUSED, message=str(error))


def _label_shard(spec: LabelJob, dataset: str, manifest: str, out: str) -> dict:
    logger = get_run_logger()
    config = spec.label_config()
    folder = RunFolder(out, spec.storage_options)
    folder.check_config(spec.info(config))
    names = folder.read_manifest(manifest)
    key = manifest_key(names)
    start = time.perf_counter()
    with folder.lock(exclusive=False):
        images = stat_images(dataset, names, spec.storage_options)
        stats = label_images(lambda: cached_model(spec), dataset, images, folder, config,
                             progress=False, on_progress=ProgressFile(folder, key, len(names)), log=logger.warning)
    record = {
        "shard": key,
        "images": len(names),
        **stats.record(),
        "seconds": round(time.perf_counter() - start, 3),
        "model_seconds": round(stats.model_seconds, 3),  # 0 when this process had the model loaded already
    }
    folder.write_json(folder.shard_marker_path(key), record)
    logger.info("shard %s: %d labeled, %d already done, %d failed", key, stats.labeled, stats.skipped,
                len(stats.failures))
    return record
