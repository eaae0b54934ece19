"""Flow ``label-dataset``: ``plan_run`` (as ``clearclip label`` does), the images that need work cut into
shards, each labeled by a ``label-shard`` run, then ``finish_run`` (the merge).

Which images need work is decided per image (new, changed, failed or unfinished), so a rerun after the
dataset grew labels exactly the new images. Each shard's file list is written into the run folder by this
run (``manifests/<key>.json``, keyed by its content); its run receives the manifest's path and the resolved
job (classes and thresholds as values), which it checks against the run's ``config.json``.

Run as a deployment, each shard becomes a ``label-shard/gpu`` flow run that any worker of pool ``gpu``
picks up, two in flight per online shard worker; a shard run that ends FAILED or CRASHED (its worker died
and its heartbeats stopped) is submitted again, up to ``max_attempts`` times, and one that ends REFUSED
(a job the worker can never run) fails the labeling at once. This run also watches its shards itself: one that stays
PENDING or RUNNING without a finished image for ``stall_seconds`` (a worker killed between claiming and
starting it sends no heartbeat; a restarted server forgets them) is marked CRASHED and submitted again.
Called directly (tests, one machine), shards run here.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated
from uuid import UUID

import httpx

from prefect import flow, get_run_logger, runtime
from pydantic import Field
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.deployments import run_deployment
from prefect.states import Crashed

from clearclip.errors import one_line
from clearclip.io.storage import is_url
from clearclip.run.folder import RunFolder, manifest_key
from clearclip.run.job import LabelJob
from clearclip.run.plan import finish_run, invocation, plan_run, shard_slices
from flows.label_shard import REFUSED, label_shard
from flows.parameters import with_job_parameters
from flows.resume_parent import RUN_FOLDER_ARTIFACT

SHARD_DEPLOYMENT = "label-shard/gpu"
POLL_SECONDS = 3.0
MAX_SHARD_SIZE = 500
SHARDS_PER_WORKER = 4
SUBMIT_AHEAD_PER_WORKER = 2  # shard runs in flight per online worker: one running, one queued
API_PAGE = 200  # the most flow runs one read returns (PREFECT_SERVER_API_DEFAULT_LIMIT)
SHARD_LOST = {"labeled": 0, "skipped_as_done": 0, "failed": 0, "batch_size": 0}  # a shard without a record


def default_out(dataset: str) -> str:
    """``workspace/runs/<dataset-name>-<timestamp>``; beside an object-storage dataset,
    ``<dataset>-runs/<timestamp>`` (the workers share nothing else)."""
    stamp = f"{datetime.now():%Y%m%d-%H%M%S}"
    if is_url(dataset):
        return f"{dataset.rstrip('/')}-runs/{stamp}"
    return str(Path("workspace/runs") / f"{Path(dataset).resolve().name}-{stamp}")


@dataclass
class Shard:
    """A shard of the images that need work, and its runs so far."""

    key: str
    manifest: Path | str  # a location in the run folder (a URL on object storage)
    size: int
    run_id: UUID | None = None
    attempts: int = 0
    last_error: str = ""
    finished: bool = False
    seen: tuple = ()  # (run id, state name, images finished) as last changed, and since when (monotonic)
    seen_since: float = 0.0


class Progress:
    """The parent's progress artifact: images finished of the total, throughput and time left."""

    def __init__(self, folder: RunFolder, shards: list[Shard]) -> None:
        self.folder, self.shards, self.total = folder, shards, sum(s.size for s in shards)
        self.start = time.monotonic()
        self.artifact = create_progress_artifact(0.0 if self.total else 100.0, key="label-dataset-progress",
                                                 description=f"0 of {self.total} images")

    def finished_in(self, shard: Shard) -> int:
        """Images of ``shard`` finished so far, from its progress file (read only while it runs)."""
        if shard.finished:
            return shard.size
        progress = self.folder.read_json(self.folder.progress_path(shard.key)) or {}
        return min(shard.size, int(progress.get("finished", 0)))

    def update(self, running: dict[str, int]) -> None:
        """``running``: images finished so far in each shard run not yet complete, by shard key."""
        done = sum(s.size for s in self.shards if s.finished) + sum(running.values())
        seconds = time.monotonic() - self.start
        rate = done / seconds if seconds > 0 else 0.0
        eta = f", about {(self.total - done) / rate:.0f} s left" if rate > 0 and done < self.total else ""
        update_progress_artifact(self.artifact, 100.0 * done / max(1, self.total),
                                 description=f"{done} of {self.total} images, {rate:.2f} images/s{eta}")


def auto_shard_size(images: int, workers: int) -> int:
    """Images per shard when none is given: SHARDS_PER_WORKER shards for each worker (so none idles while
    another has several left), at most MAX_SHARD_SIZE (a lost shard costs little to redo)."""
    return max(1, min(MAX_SHARD_SIZE, -(-images // (SHARDS_PER_WORKER * max(1, workers)))))


def _online_shard_workers(client) -> int:
    """Workers ONLINE in the pool of deployment label-shard/gpu (the orchestrator's worker among them, if it
    shares the pool: a shard more in flight costs nothing)."""
    pool = client.read_deployment_by_name(SHARD_DEPLOYMENT).work_pool_name
    return sum(worker.status == "ONLINE" for worker in client.read_workers_for_work_pool(pool))


def _pool_size() -> int:
    with get_client(sync_client=True) as client:
        return _online_shard_workers(client)


def cut_shards(folder: RunFolder, names: list[str], shard_size: int) -> list[Shard]:
    """Consecutive slices of the sorted names, each written as a manifest keyed by its content."""
    shards = []
    for chunk in shard_slices(names, shard_size):
        shards.append(Shard(manifest_key(chunk), folder.write_manifest(chunk), len(chunk)))
    return shards


def _submit(shard: Shard, job: LabelJob, dataset: str, out: str) -> None:
    """A new run of ``shard``; submitting the same attempt again (the server did not answer) returns the
    run the first call created, if it did."""
    attempt = shard.attempts + 1
    flow_run = run_deployment(
        SHARD_DEPLOYMENT,
        parameters={"job": job.to_dict(), "dataset": str(dataset), "manifest": str(shard.manifest), "out": str(out)},
        timeout=0,
        idempotency_key=f"{runtime.flow_run.id}-{shard.key}-{attempt}",
        flow_run_name=f"shard-{shard.key[:8]}-{attempt}",
    )
    shard.run_id, shard.attempts = flow_run.id, attempt


def _read_states(client, ids: list[UUID]) -> dict[UUID, object]:
    """The states of these flow runs: one filtered query per page of API_PAGE runs."""
    states = {}
    for start in range(0, len(ids), API_PAGE):
        page = ids[start : start + API_PAGE]
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=page)), limit=len(page))
        states.update({run.id: run.state for run in runs})
    return states


def _stalled(shard: Shard, state, finished: int, stall_seconds: float) -> bool:
    """True when ``shard``'s run has been claimed (PENDING) or RUNNING with no image finished for
    ``stall_seconds``: its worker died before heartbeats could tell, or the server lost them. A SCHEDULED
    run is waiting for a free worker and never stalls."""
    now = time.monotonic()
    seen = (shard.run_id, state.name, finished)
    if seen != shard.seen:
        shard.seen, shard.seen_since = seen, now
        return False
    return (state.is_pending() or state.is_running()) and now - shard.seen_since > stall_seconds


def _crash_unless_final(client, run_id: UUID, message: str):
    """Force the run CRASHED, unless it ended since its state was read (a finished shard is never crashed);
    returns its state."""
    state = client.read_flow_run(run_id).state
    if state is not None and state.is_final():
        return state
    client.set_flow_run_state(run_id, Crashed(message=message), force=True)
    return Crashed(message=message)


def _run_shards_on_workers(shards: list[Shard], job: LabelJob, dataset: str, out: str, max_attempts: int,
                           stall_seconds: float, progress: Progress) -> list[Shard]:
    """Label the shards on the pool's workers; returns the shards lost after their last attempt (or refused).

    Shards are submitted in order, SUBMIT_AHEAD_PER_WORKER for each online shard worker at a time, so the
    first results come while the rest wait unsubmitted and each worker finds its next shard queued when it
    finishes one. Each round reads the states of the runs in flight in one query per API_PAGE, and only their
    progress files. A run that stalls (``_stalled``) is marked CRASHED here and counts as lost; a run that
    ends FAILED or CRASHED is submitted again up to ``max_attempts`` runs; a REFUSED one never is. A round
    the server does not answer (it restarts) is tried again at the next poll.
    """
    logger = get_run_logger()
    waiting, in_flight, lost = deque(shards), [], []
    with get_client(sync_client=True) as client:
        while waiting or in_flight:
            try:
                _poll_round(client, waiting, in_flight, lost, job, dataset, out, max_attempts, stall_seconds, progress)
            except httpx.HTTPError as error:
                logger.warning("the Prefect server did not answer (%s); trying again in %.0f s", one_line(error),
                               POLL_SECONDS)
            if waiting or in_flight:
                time.sleep(POLL_SECONDS)
    return lost


def _poll_round(client, waiting: deque[Shard], in_flight: list[Shard], lost: list[Shard], job: LabelJob,
                dataset: str, out: str, max_attempts: int, stall_seconds: float, progress: Progress) -> None:
    """One round of ``_run_shards_on_workers``: top up the runs in flight, then read and act on their states."""
    logger = get_run_logger()
    ahead = SUBMIT_AHEAD_PER_WORKER * max(1, _online_shard_workers(client))
    while waiting and len(in_flight) < ahead:
        _submit(waiting[0], job, dataset, out)
        in_flight.append(waiting.popleft())
    states = _read_states(client, [s.run_id for s in in_flight])
    running = {}
    for shard in list(in_flight):
        state, finished = states.get(shard.run_id), progress.finished_in(shard)
        if state is not None and not state.is_final() and _stalled(shard, state, finished, stall_seconds):
            state = _crash_unless_final(client, shard.run_id, f"{state.type.value} for {stall_seconds:.0f} s without "
                                        "a finished image: marked crashed by label-dataset (its worker is gone, or "
                                        "the server lost its heartbeats)")
        if state is None or not state.is_final():
            running[shard.key] = finished
            continue
        if state.is_completed():
            shard.finished = True
            in_flight.remove(shard)
            continue
        shard.last_error = f"{state.name}: {state.message or 'no message'}"
        if state.name != REFUSED and shard.attempts < max_attempts:
            logger.warning("shard %s (%s) ended %s; submitting it again (attempt %d of %d)", shard.key,
                           shard.manifest, shard.last_error, shard.attempts + 1, max_attempts)
            _submit(shard, job, dataset, out)
            continue
        in_flight.remove(shard)
        lost.append(shard)
        if state.name == REFUSED:  # the same job would be refused again: submit no more shards
            logger.error("shard %s refused the job (%s); no further shard is submitted", shard.key, state.message)
            waiting.clear()
    progress.update(running)


def _labeled_in_this_run(record: dict) -> dict:
    """A shard record with the images an earlier, crashed run of the same shard labeled counted as labeled:
    every image of a shard needed work when this run planned, so one found done was labeled in this run."""
    return {**record, "labeled": record["labeled"] + record["skipped_as_done"], "skipped_as_done": 0}


def _resume_command(parameters: dict) -> str:
    return f"prefect deployment run label-dataset/default --params '{json.dumps(parameters)}'"


def _cell(text: str) -> str:
    """Text for a Markdown table cell: a ``|`` or a line break would end the cell or the row."""
    return one_line(text).replace("\\", "\\\\").replace("|", "\\|")


def summary_markdown(summary: dict, results: dict) -> str:
    """The run summary, and where its ``results`` are, as a Markdown table for the Prefect UI."""
    dataset = results["fiftyone_dataset"]
    lines = [
        f"# clearclip run `{summary['run_dir']}`",
        "",
        "| | |",
        "|---|---|",
        f"| annotations file | `{_cell(results['annotations_file'])}` |",
        f"| FiftyOne dataset | {f'`{_cell(dataset)}` (`clearclip review` opens it)' if dataset else 'none (review=false)'} |",
        f"| elapsed | {results['elapsed_seconds']:.0f} s |",
        f"| images labeled | {summary['images_labeled']} of {summary['images_listed']} |",
        f"| annotations | {summary['annotations']} |",
        f"| failures | {len(summary['failures'])} |",
        f"| shards labeled now | {summary['last_invocation']['shards']} |",
        f"| images/s | {summary['images_per_second']:.2f} |",
        "",
        "| class | annotations |",
        "|---|---|",
        *(f"| {_cell(name)} | {count} |" for name, count in summary["annotations_per_class"].items()),
    ]
    if summary["failures"]:
        lines += ["", "| failed file | reason |", "|---|---|"]
        lines += [f"| {_cell(f['file'])} | {_cell(f['error'])} |" for f in summary["failures"]]
    return "\n".join(lines)


@flow(name="label-dataset", log_prints=True)
@with_job_parameters
def label_dataset(
    dataset: str,
    out: str | None = None,
    shard_size: Annotated[int, Field(ge=1)] | None = None,
    max_attempts: Annotated[int, Field(ge=1)] = 3,
    stall_seconds: Annotated[float, Field(gt=0)] = 600.0,
    review: bool = False,
    fan_out: bool | None = None,
    **job_values,
) -> dict:
    """Label every image under ``dataset`` into ``out`` (annotations.json, labels/, run.json).

    Every ``clearclip label`` option is a parameter (``classes`` is a class-file path or a list of class
    strings). A shard run that fails or crashes is submitted again, up to ``max_attempts`` times.
    ``fan_out`` (default: when running as a deployment) sends each shard to deployment label-shard/gpu;
    otherwise shards run here. ``review`` loads the result into FiftyOne at the end.

    Args:
        dataset: the folder of images as the workers see it, or an object-storage URL (s3://bucket/prefix,
            gs://..., az://...) that workers sharing nothing read
        out: the run folder or an object-storage URL (default: workspace/runs/<dataset>-<time>, or
            <dataset>-runs/<time> beside a URL dataset); a rerun into it labels only new, changed and failed images
        shard_size: images per label-shard run (default: about 4 shards per online shard worker, at most 500)
        max_attempts: runs of a shard before the labeling fails (a crashed or failed shard is submitted again)
        stall_seconds: a shard run claimed by a worker (PENDING) or RUNNING without finishing an image for this
            long is marked crashed and submitted again
        review: load the result into a FiftyOne dataset at the end
        fan_out: send shards to deployment label-shard/gpu (default: when this runs as a deployment)
    """
    began = time.monotonic()
    logger = get_run_logger()
    job = LabelJob(**job_values)
    config = job.label_config()
    info = job.info(config)
    resolved = job.resolved(config)  # shards get the classes and thresholds as values, never a path to re-read
    folder = RunFolder(out or default_out(dataset), job.storage_options)
    create_markdown_artifact(str(folder.root), key=RUN_FOLDER_ARTIFACT, description="the run folder of this run")
    with folder.orchestrated(f"label-dataset flow run '{runtime.flow_run.name}' ({runtime.flow_run.id})"):
        with folder.lock(exclusive=False):
            plan = plan_run(dataset, folder, info, config.vocabulary, job.storage_options)
        fan_out = runtime.deployment.id is not None if fan_out is None else fan_out
        shard_size = shard_size or auto_shard_size(len(plan.todo), _pool_size() if fan_out else 1)
        shards = cut_shards(folder, plan.todo, shard_size)
        logger.info("%d images, %d to label in %d shards of up to %d, into %s", len(plan.images), len(plan.todo),
                    len(shards), shard_size, folder.root)

        progress = Progress(folder, shards)
        start = time.perf_counter()
        if fan_out:
            lost = _run_shards_on_workers(shards, resolved, dataset, str(folder.root), max_attempts, stall_seconds,
                                          progress)
            if lost:
                parameters = {**runtime.flow_run.parameters, "out": str(folder.root)}
                details = "; ".join(f"shard {s.key} (files: {s.manifest}) "
                                    f"{'was refused' if s.last_error.startswith(REFUSED) else f'failed {s.attempts} times'}"
                                    f", last: {s.last_error}" for s in lost)
                raise RuntimeError(f"{details}. Images of other shards are kept; once the cause is fixed, resume with: "
                                   f"{_resume_command(parameters)}")
        else:
            for shard in shards:
                label_shard(resolved.to_dict(), str(dataset), str(shard.manifest), str(folder.root))
                shard.finished = True
                progress.update({})
        seconds = time.perf_counter() - start

        records = [_labeled_in_this_run(folder.read_json(folder.shard_marker_path(s.key)) or SHARD_LOST)
                   for s in shards]
        with folder.exclusive_if_free() as exclusive:
            summary = finish_run(plan, invocation(plan, records, seconds), exclusive)
        logger.info("merged %d images (%d annotations) into %s", summary["images_labeled"], summary["annotations"],
                    folder.annotations_path)
    review_name = None
    if review:
        from clearclip.review.sync import load_any_run

        review_name = load_any_run(folder.root, job.storage_options)[0].name
    results = {"elapsed_seconds": round(time.monotonic() - began, 1), "annotations_file": str(folder.annotations_path),
               "fiftyone_dataset": review_name}
    create_markdown_artifact(summary_markdown(summary, results), key="label-dataset-summary",
                             description="clearclip labeling run")
    return {**{k: v for k, v in summary.items() if k != "info"}, **results}
