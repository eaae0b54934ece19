"""Flow ``resume-label-dataset``: submit a crashed ``label-dataset`` run again, so that a dead orchestrator
does not leave its run unmerged.

The automation of ``flows.crash_detection`` starts it when a ``label-dataset`` run enters CRASHED (its
process was killed, its machine went away). The dead parent's shards are dealt with first, so that no
image is labeled twice: those still SCHEDULED are cancelled, those a worker runs are waited for (up to
``orphan_wait_seconds``). The new parent then plans the same run folder again: images the shards finished
are done, the rest are labeled, and it merges. A run folder whose parents crashed more than
``max_resumes`` times is left alone, with the command that resumes it by hand.
"""

from __future__ import annotations

import json
import time
from typing import Annotated
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from prefect.states import Cancelled
from pydantic import Field

PARENT_DEPLOYMENT = "label-dataset/default"
RUN_FOLDER_ARTIFACT = "label-dataset-run-folder"  # the parent's run folder, written before it plans
ORPHAN_POLL_SECONDS = 3.0


def _run_folder(client, flow_run) -> str | None:
    """The run folder a parent labeled into: its ``out`` parameter, or the folder it recorded."""
    if flow_run.parameters.get("out"):
        return flow_run.parameters["out"]
    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[RUN_FOLDER_ARTIFACT]),
                                       flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])), limit=1)
    return artifacts[0].data if artifacts else None


def _settle_orphans(client, out: str, wait_seconds: float) -> tuple[int, int]:
    """Cancel the SCHEDULED label-shard runs into ``out`` and wait for the claimed or running ones to end (at
    most ``wait_seconds``); returns (cancelled, waited for)."""
    def unfinished():
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["label-shard"])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]))))
        return [run for run in runs if _same_folder(run.parameters.get("out"), out)]

    orphans = unfinished()
    scheduled = [run for run in orphans if run.state.is_scheduled()]
    for run in scheduled:
        client.set_flow_run_state(run.id, Cancelled(message="its label-dataset run crashed; the resumed run labels "
                                                            "its images"), force=True)
    deadline = time.monotonic() + wait_seconds
    running = len(orphans) - len(scheduled)
    while unfinished() and time.monotonic() < deadline:
        time.sleep(ORPHAN_POLL_SECONDS)
    return len(scheduled), running


@flow(name="resume-label-dataset")
def resume_label_dataset(crashed_run: str, max_resumes: Annotated[int, Field(ge=0)] = 2,
                         orphan_wait_seconds: Annotated[float, Field(ge=0)] = 900.0) -> str:
    """Submit the crashed label-dataset run ``crashed_run`` again with its parameters (and its run folder),
    once its shards have been cancelled or have ended; returns the new run's id.

    Args:
        crashed_run: id of the label-dataset flow run that crashed (or its event resource id,
            ``prefect.flow-run.<id>``, as the automation passes it)
        max_resumes: crashed parents of one run folder beyond which it is left for a person to resume
        orphan_wait_seconds: how long to wait for the crashed parent's running shards to end
    """
    logger = get_run_logger()
    crashed_run = crashed_run.removeprefix("prefect.flow-run.")
    with get_client(sync_client=True) as client:
        crashed = client.read_flow_run(UUID(crashed_run))
        out = _run_folder(client, crashed)
        if out is None:
            raise RuntimeError(f"flow run {crashed_run} crashed before it chose a run folder; nothing to resume")
        earlier = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["label-dataset"])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CRASHED]))),
        )
    crashes = sum(_same_folder(run.parameters.get("out"), out) or run.id == crashed.id for run in earlier)
    parameters = {**crashed.parameters, "out": out}
    if crashes > max_resumes:
        raise RuntimeError(f"the parents of {out} crashed {crashes} times; not submitted again. Once the cause is "
                           f"fixed, resume with: prefect deployment run {PARENT_DEPLOYMENT} --params "
                           f"'{json.dumps(parameters)}'")
    with get_client(sync_client=True) as client:
        cancelled, waited = _settle_orphans(client, out, orphan_wait_seconds)
    logger.info("shards of the crashed run: %d not started, cancelled; %d running, waited for", cancelled, waited)
    resumed = run_deployment(PARENT_DEPLOYMENT, parameters=parameters, timeout=0,
                             idempotency_key=f"resume-{crashed_run}", flow_run_name=f"resume-of-{crashed.name}")
    logger.info("label-dataset run %s (%s) crashed; submitted %s into %s (crash %d of at most %d resumed)",
                crashed.name, crashed_run, resumed.name, out, crashes, max_resumes)
    return str(resumed.id)


def _same_folder(a: str | None, b: str) -> bool:
    return a is not None and a.rstrip("/") == b.rstrip("/")
