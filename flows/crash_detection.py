"""Crash detection for shard runs: a Prefect automation that marks a ``label-shard`` run CRASHED once it
has missed about three heartbeats (Prefect's "detect zombie flows" recipe), so that the parent run submits
its shard again.

Shard runs send a heartbeat every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (30 at least). Create or
update the automation on any server with:

    PREFECT_API_URL=http://server:4200/api python -m flows.crash_detection --heartbeat-seconds 30
"""

from __future__ import annotations

import argparse
from datetime import timedelta

from prefect.automations import Automation
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

AUTOMATION_NAME = "clearclip: crash label-shard runs that stop sending heartbeats"
MISSED_HEARTBEATS = 3


def crash_detection(heartbeat_seconds: int, missed: int = MISSED_HEARTBEATS) -> Automation:
    """The automation (not yet saved) that crashes label-shard runs silent for ``missed`` heartbeats."""
    return Automation(
        name=AUTOMATION_NAME,
        description=f"A label-shard run that sent no heartbeat and did not finish within {missed} heartbeats "
                    f"({missed * heartbeat_seconds} s) lost its worker; marking it CRASHED lets label-dataset "
                    "submit its shard again.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            match_related=ResourceSpecification({"prefect.resource.role": "flow",
                                                 "prefect.resource.name": "label-shard"}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=missed * heartbeat_seconds),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {missed * heartbeat_seconds} s: its worker is gone")],
    )


def ensure_crash_detection(heartbeat_seconds: int, missed: int = MISSED_HEARTBEATS) -> Automation:
    """Create the automation on the server ``PREFECT_API_URL`` points at, or update it; safe to repeat."""
    wanted = crash_detection(heartbeat_seconds, missed)
    try:
        existing = Automation.read(name=AUTOMATION_NAME)
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
    automation = ensure_crash_detection(args.heartbeat_seconds, args.missed)
    print(f"automation '{automation.name}' ({automation.id}): label-shard runs silent for "
          f"{args.missed * args.heartbeat_seconds} s are marked CRASHED")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
