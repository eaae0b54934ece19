"""Run a module as ``python -m`` would, SIGKILLing the process once N images are committed, or (N =
``claim``) as soon as a Prefect worker has claimed a flow run, before the run starts: the test's own fault
injection, so the moment a labeler dies is deterministic and production code carries no hook.

    python tests/kill_after.py N|claim MODULE [ARGS...]
"""

import os
import runpy
import signal
import sys
import threading

from clearclip.run.finish import Finishers


def kill_after(limit: int) -> None:
    """SIGKILL this process when the ``limit``-th image's record has been written (a finisher's task is done)."""
    committed = 0
    lock = threading.Lock()
    submit = Finishers.submit

    def counted(self, *args, **kwargs):
        future = submit(self, *args, **kwargs)

        def done(finished) -> None:
            nonlocal committed
            if finished.exception() is None:
                with lock:
                    committed += 1
                    if committed >= limit:
                        os.kill(os.getpid(), signal.SIGKILL)

        future.add_done_callback(done)
        return future

    Finishers.submit = counted


def kill_at_claim() -> None:
    """SIGKILL this process once a worker has moved a flow run to PENDING and before it starts the run."""
    from prefect.workers.base import BaseWorker

    propose = BaseWorker._propose_submitting_state

    async def proposed_then_killed(self, flow_run):
        await propose(self, flow_run)
        os.kill(os.getpid(), signal.SIGKILL)

    BaseWorker._propose_submitting_state = proposed_then_killed


if __name__ == "__main__":
    limit, module, *arguments = sys.argv[1:]
    kill_at_claim() if limit == "claim" else kill_after(int(limit))
    sys.argv = [module, *arguments]
    sys.path.insert(0, os.getcwd())
    runpy.run_module(module, run_name="__main__", alter_sys=True)
