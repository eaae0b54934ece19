"""Flow ``resume-label-dataset``: submit a crashed ``label-dataset`` run again, so that a dead orchestrator
does not leave its run unmerged.

The automation of ``flows.crash_detection`` starts it when a ``label-dataset`` run enters CRASHED (its
process was killed, its machine went away). The new parent plans the same run folder again: images the
shards finished are done, the rest are labeled, and it merges. A run folder whose parents crashed more
than ``max_resumes`` times is left alone, with the command that resumes it by hand.
"""

from __future__ import annotations

import json
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
from pydantic import Field

PARENT_DEPLOYMENT = "label-dataset/default"
RUN_FOLDER_ARTIFACT = "label-dataset-run-folder"  # the parent's run folder, written before it plans


def _run_folder(client, flow_run) -> str | None:
    """The run folder a parent labeled into: its ``out`` parameter, or the folder it recorded."""
    if flow_run.parameters.get("out"):
        return flow_run.parameters["out"]
    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[RUN_FOLDER_ARTIFACT]),
                                       flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])), limit=1)
    return artifacts[0].data if artifacts else None


@flow(name="resume-label-dataset")
def resume_label_dataset(crashed_run: str, max_resumes: Annotated[int, Field(ge=0)] = 2) -> str:
    """Submit the crashed label-dataset run ``crashed_run`` again with its parameters (and its run folder);
    returns the new run's id.

    Args:
        crashed_run: id of the label-dataset flow run that crashed (or its event resource id,
            ``prefect.flow-run.<id>``, as the automation passes it)
        max_resumes: crashed parents of one run folder beyond which it is left for a person to resume
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
    resumed = run_deployment(PARENT_DEPLOYMENT, parameters=parameters, timeout=0,
                             idempotency_key=f"resume-{crashed_run}", flow_run_name=f"resume-of-{crashed.name}")
    logger.info("label-dataset run %s (%s) crashed; submitted %s into %s (crash %d of at most %d resumed)",
                crashed.name, crashed_run, resumed.name, out, crashes, max_resumes)
    return str(resumed.id)


def _same_folder(a: str | None, b: str) -> bool:
    return a is not None and a.rstrip("/") == b.rstrip("/")
