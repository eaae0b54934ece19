"""A shard worker that keeps its model loaded between shards.

It is Prefect's process worker, except that ``label-shard`` runs execute inside this long-lived process
(one at a time, on a thread) instead of a new process each, so the model loaded for the first shard
serves every later one (see ``flows.label_shard.cached_model``). The flow engine runs as usual: states,
logs, and the heartbeats that crash detection watches, so a worker that dies takes its heartbeats with it
and its shard is submitted again. Other flows sent to its queue run in a subprocess, as with
``prefect worker start``. Start one per GPU, from the repository root:

    CUDA_VISIBLE_DEVICES=0 python -m flows.shard_worker --pool gpu --queue shards --name gpu-0
"""

from __future__ import annotations

from clearclip.io.threads import sleep_when_waiting

sleep_when_waiting()  # before torch loads (flows.label_shard imports it): waiting OpenMP threads sleep

import argparse  # noqa: E402
import asyncio  # noqa: E402
import os  # noqa: E402
import warnings  # noqa: E402
from functools import partial  # noqa: E402

import anyio  # noqa: E402
from prefect.flow_engine import run_flow_sync  # noqa: E402
from prefect.workers.process import ProcessWorker, ProcessWorkerResult  # noqa: E402

from flows.label_shard import label_shard  # noqa: E402


warnings.filterwarnings("ignore", message="Type 'ShardWorker' .* will be overridden")  # it serves type process


class ShardWorker(ProcessWorker):
    """Serves a pool of type ``process``; runs ``label-shard`` flow runs in-process."""

    async def run(self, flow_run, configuration, task_status=None) -> ProcessWorkerResult:
        flow = await self.client.read_flow(flow_run.flow_id)
        if flow.name != label_shard.name:
            return await super().run(flow_run, configuration, task_status)
        if task_status is not None:
            task_status.started(os.getpid())
        # the engine reports the run's final state itself; a failed shard is not a crashed worker
        await anyio.to_thread.run_sync(partial(run_flow_sync, label_shard, flow_run=flow_run,
                                               parameters=flow_run.parameters, return_type="state"))
        return ProcessWorkerResult(status_code=0, identifier=str(os.getpid()))


async def serve(pool: str, queue: str, name: str | None, limit: int) -> None:
    worker = ShardWorker(work_pool_name=pool, work_queues=[queue], name=name, limit=limit)
    await worker.start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.shard_worker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", default="gpu", help="work pool (type process; default: gpu)")
    parser.add_argument("--queue", default="shards", help="work queue (default: shards)")
    parser.add_argument("--name", help="worker name (default: Prefect's)")
    parser.add_argument("--limit", type=int, default=1, help="shards at a time (default: 1, one per GPU)")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.pool, args.queue, args.name, args.limit))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
