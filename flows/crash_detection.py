"""Crash detection: a Prefect automation that marks a ``label-shard`` or ``label-dataset`` run CRASHED once it
has missed about three heartbeats (Prefect's "detect zombie flows" recipe), so that the parent submits its
shard again, or a lost machine's parent counts as crashed; and one that starts ``resume-label-dataset`` when
a ``label-dataset`` run crashes, so that a dead parent's run is finished.

Deployment runs send a heartbeat every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (30 at least). Create
or update the automations on any server with:

    PREFECT_API_URL=http://server:4200/api python -m flows.crash_detection --heartbeat-seconds 30
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from uuid import UUID

from prefect.automations import Automation
from prefect.client.schemas.objects import StateType
from prefect.client.orchestration import get_client
from prefect.events.actions import ChangeFlowRunState, RunDeployment
from prefect.exceptions import ObjectNotFound
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

AUTOMATION_NAME = "clearclip: crash runs that stop sending heartbeats"
SHARDS_ONLY_NAME = "clearclip: crash label-shard runs that stop sending heartbeats"  # its name before parents
RESUME_AUTOMATION_NAME = "clearclip: submit crashed label-dataset runs again"
RESUME_DEPLOYMENT = "resume-label-dataset/default"
MISSED_HEARTBEATS = 3


def crash_detection(heartbeat_seconds: int, missed: int = MISSED_HEARTBEATS) -> Automation:
    """The automation (not yet saved) that crashes label-shard and label-dataset runs silent for ``missed``
    heartbeats."""
    return Automation(
        name=AUTOMATION_NAME,
        description=f"A label-shard or label-dataset run that sent no heartbeat and did not finish within {missed} "
                    f"heartbeats ({missed * heartbeat_seconds} s) lost its worker or machine; marking it CRASHED lets "
                    "label-dataset submit a shard again, and resume-label-dataset a parent.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            match_related=ResourceSpecification({"prefect.resource.role": "flow",
                                                 "prefect.resource.name": ["label-shard", "label-dataset"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=missed * heartbeat_seconds),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {missed * heartbeat_seconds} s: its worker is gone")],
    )


def parent_resubmission(resume_deployment_id: UUID) -> Automation:
    """The automation (not yet saved) that starts ``resume-label-dataset`` for each crashed label-dataset run."""
    return Automation(
        name=RESUME_AUTOMATION_NAME,
        description="A label-dataset run that crashed (its process or machine died) would leave its run unmerged; "
                    "resume-label-dataset submits it again with the same parameters and run folder.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            match_related=ResourceSpecification({"prefect.resource.role": "flow",
                                                 "prefect.resource.name": "label-dataset"}),
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[RunDeployment(source="selected", deployment_id=resume_deployment_id,
                               parameters={"crashed_run": "{{ event.resource.id }}"})],  # a UUID does not render
    )


def ensure_automation(wanted: Automation) -> Automation:
    """Create ``wanted`` on the server ``PREFECT_API_URL`` points at, or update the one of its name; safe to
    repeat."""
    try:
        existing = Automation.read(name=wanted.name)
    except ValueError:
        return wanted.create()
    existing.description, existing.trigger, existing.actions, existing.enabled = (
        wanted.description, wanted.trigger, wanted.actions, True)
    existing.update()
    return existing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.crash_detection", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heartbeat-seconds", type=int, default=30,
                        help="the shard workers' PREFECT_FLOWS_HEARTBEAT_FREQUENCY (default: 30)")
    parser.add_argument("--missed", type=int, default=MISSED_HEARTBEATS,
                        help=f"heartbeats a run may miss before it counts as crashed (default: {MISSED_HEARTBEATS})")
    args = parser.parse_args(argv)
    automation = ensure_automation(crash_detection(args.heartbeat_seconds, args.missed))
    try:
        Automation.read(name=SHARDS_ONLY_NAME).delete()  # replaced by the one above on servers set up before
    except ValueError:
        pass
    print(f"automation '{automation.name}' ({automation.id}): label-shard and label-dataset runs silent for "
          f"{args.missed * args.heartbeat_seconds} s are marked CRASHED")
    with get_client(sync_client=True) as client:
        try:
            resume = client.read_deployment_by_name(RESUME_DEPLOYMENT)
        except ObjectNotFound:
            print(f"no deployment {RESUME_DEPLOYMENT}: crashed label-dataset runs will not be resubmitted "
                  "(deploy prefect.yaml first)")
            return 0
    automation = ensure_automation(parent_resubmission(resume.id))
    print(f"automation '{automation.name}' ({automation.id}): crashed label-dataset runs are submitted again")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
