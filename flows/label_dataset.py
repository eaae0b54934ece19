"""Flow ``label-dataset``: list a folder, cut it into shards, label every unfinished shard, merge.

Run as a deployment, each shard becomes a ``label-shard/gpu`` flow run that any worker of pool
``gpu`` picks up; called directly (tests, one machine), shards run in this process.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

from clearclip.images import list_images
from clearclip.jobs import LabelJob, make_shards, read_shard_marker
from clearclip.labeling import check_run_dir, merge_run, set_aside_collisions
from flows.label_shard import label_shard

SHARD_DEPLOYMENT = "label-shard/gpu"


def default_out(dataset: str) -> str:
    """``workspace/runs/<dataset-name>-<timestamp>``."""
    return str(Path("workspace/runs") / f"{Path(dataset).resolve().name}-{datetime.now():%Y%m%d-%H%M%S}")


def summary_markdown(summary: dict) -> str:
    """The run summary as a Markdown table for the Prefect UI."""
    lines = [
        f"# clearclip run `{summary['run_dir']}`",
        "",
        "| | |",
        "|---|---|",
        f"| images labeled | {summary['images_labeled']} of {summary['images_listed']} |",
        f"| annotations | {summary['annotations']} |",
        f"| failures | {len(summary['failures'])} |",
        f"| shards | {summary['shards']} |",
        f"| images/s | {summary['images_per_second']:.2f} |",
        "",
        "| class | annotations |",
        "|---|---|",
        *(f"| {name} | {count} |" for name, count in summary["annotations_per_class"].items()),
    ]
    if summary["failures"]:
        lines += ["", "| failed file | reason |", "|---|---|"]
        lines += [f"| {f['file']} | {f['error']} |" for f in summary["failures"]]
    return "\n".join(lines)


def _wait_for_shards(run_dir: str, flow_run_ids: dict[int, object], on_finished, poll_seconds: float = 3.0) -> list[int]:
    """Wait until every shard is final or marked done; call ``on_finished`` for each; return failed shards.

    A shard marked done counts as finished even while its own run is stuck (its worker died and a
    later run of the deployment labeled it), so an orphaned parent still ends.
    """
    failed, waiting = [], dict(flow_run_ids)
    with get_client(sync_client=True) as client:
        while waiting:
            for index, run_id in list(waiting.items()):
                state = client.read_flow_run(run_id).state
                marked = read_shard_marker(run_dir, index) is not None
                if marked or (state is not None and state.is_final()):
                    del waiting[index]
                    if not marked:
                        failed.append(index)
                    on_finished()
            if waiting:
                time.sleep(poll_seconds)
    return failed


@flow(name="label-dataset", log_prints=True)
def label_dataset(
    dataset: str,
    classes: str | list[str],
    out: str | None = None,
    model: str = "ViT-B-16",
    pretrained: str | None = "openai",
    variant: str = "clearclip",
    device: str = "auto",
    precision: str = "auto",
    shard_size: int = 500,
    background_threshold: float = 0.0,
    pixel_threshold: float = 0.0,
    min_score: float = 0.0,
    min_area: int = 0,
    class_thresholds: str | None = None,
    instances: str = "components",
    batch_size: int = 4,
    segment: dict | None = None,
    review: bool = False,
    fan_out: bool | None = None,
) -> dict:
    """Label every image under ``dataset`` into ``out`` (annotations.json, labels/, run.json).

    ``classes`` is a class-file path or a list of class strings. Shards that finished in an
    earlier run into the same ``out`` are skipped. ``fan_out`` (default: when running as a
    deployment) sends each shard to deployment label-shard/gpu; otherwise shards run here.
    ``review`` loads the result into FiftyOne at the end.
    """
    logger = get_run_logger()
    job = LabelJob(
        classes, model=model, pretrained=pretrained, variant=variant, device=device, precision=precision,
        background_threshold=background_threshold, pixel_threshold=pixel_threshold, min_score=min_score,
        min_area=min_area, class_thresholds=class_thresholds, instances=instances, batch_size=batch_size,
        segment=dict(segment or {}),
    )
    config = job.label_config()
    info = job.info(config)
    files = list_images(dataset)
    run_dir = out or default_out(dataset)
    check_run_dir(Path(run_dir), info)
    shards = make_shards(set_aside_collisions(Path(run_dir), files), shard_size)
    pending = [index for index in range(len(shards)) if read_shard_marker(run_dir, index) is None]
    logger.info("%d images in %d shards; %d shards to label into %s", len(files), len(shards), len(pending), run_dir)

    finished = len(shards) - len(pending)
    progress_id = create_progress_artifact(100.0 * finished / max(1, len(shards)), key="label-dataset-progress",
                                           description=f"shards finished of {len(shards)}")

    def shard_finished() -> None:
        nonlocal finished
        finished += 1
        update_progress_artifact(progress_id, 100.0 * finished / len(shards))

    start = time.perf_counter()
    fan_out = runtime.deployment.id is not None if fan_out is None else fan_out
    if fan_out:
        runs = {}
        for index in pending:
            flow_run = run_deployment(
                SHARD_DEPLOYMENT,
                parameters={"job": job.to_dict(), "dataset": str(dataset), "files": shards[index], "out": str(run_dir),
                            "shard_index": index},
                timeout=0,
                idempotency_key=f"{runtime.flow_run.id}-shard-{index}",
                flow_run_name=f"shard-{index:04d}",
            )
            runs[index] = flow_run.id
        failed = _wait_for_shards(str(run_dir), runs, shard_finished)
        if failed:
            raise RuntimeError(f"shards {failed} did not complete; rerun the deployment with the same out to resume")
    else:
        for index in pending:
            label_shard(job.to_dict(), str(dataset), shards[index], str(run_dir), index)
            shard_finished()
    seconds = time.perf_counter() - start

    markers = [read_shard_marker(run_dir, index) for index in range(len(shards))]
    labeled_now = sum(m["labeled"] for m in markers if m and m["shard"] in pending)
    extra = {
        "run_dir": str(run_dir),
        "dataset": str(Path(dataset).resolve()),
        "shards": len(shards),
        "shard_size": shard_size,
        "images_per_second": labeled_now / seconds if seconds and labeled_now else 0.0,
        "last_invocation": {"shards_labeled": len(pending), "images_labeled": labeled_now, "seconds": round(seconds, 3)},
    }
    summary = merge_run(run_dir, files, config.vocabulary, info, extra)
    create_markdown_artifact(summary_markdown(summary), key="label-dataset-summary", description="clearclip labeling run")
    if review:
        from clearclip.review import load_run

        load_run(run_dir)
    return {k: v for k, v in summary.items() if k != "info"}
