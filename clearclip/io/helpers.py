"""Helper processes (finishers, review's document builders): spawned, never re-importing the parent's script,
ended with their parent, deaf to Ctrl-C.

Spawned processes import the parent's ``__main__`` again, so a script without a ``__main__`` guard would run
itself once per helper, and one whose imports (torch among them) cost seconds and hundreds of MB would pay
that per helper. ``helper_context`` wraps ``multiprocessing.spawn.get_preparation_data`` once so that a process
named ``clearclip-helper-*`` skips it; other spawned processes are untouched.
"""

from __future__ import annotations

import ctypes
import os
import signal
from multiprocessing import spawn
from multiprocessing.context import SpawnContext, SpawnProcess
from typing import NoReturn

PR_SET_PDEATHSIG = 1
HELPER_NAME = "clearclip-helper"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
HEAP_THRESHOLD = 32 << 20  # glibc's own ceiling for the threshold it raises by itself


class _HelperProcess(SpawnProcess):
    """A spawned process named so that ``_preparation_data`` recognises it, its heap kept and its exit made as
    a forked one's."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.name = f"{HELPER_NAME}-{self.name}"

    def run(self) -> None:
        _keep_freed_memory()
        super().run()

    def _bootstrap(self, parent_sentinel=None) -> NoReturn:
        """Exit straight after multiprocessing's own clean-up (threads joined, finalizers run, output flushed),
        as a forked process does: the interpreter's teardown of torch would take another 0.3 s, and a
        DataLoader's shutdown waits for it before the last batch of a remote dataset reaches the model."""
        os._exit(super()._bootstrap(parent_sentinel))


def _keep_freed_memory() -> None:
    """Let glibc's malloc reuse freed MB-sized buffers instead of mapping and faulting in fresh pages for each.

    A fresh process maps every allocation over 128 KiB (an image's pixels) anew and returns it when freed:
    about 1,100 extra page faults and 3-4 ms of system time per 640x480 image in a spawned decoder. A long-lived
    process (the parent, so any forked one) has had glibc raise that threshold already; this sets it to the
    ceiling glibc would reach. Not glibc: nothing to do."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, HEAP_THRESHOLD)
    mallopt(M_TRIM_THRESHOLD, 2 * HEAP_THRESHOLD)


class _HelperContext(SpawnContext):
    Process = _HelperProcess


def _skip_main_in_helpers() -> None:
    """Make spawned helpers skip the parent's ``__main__`` (see the module docstring); idempotent."""
    original = spawn.get_preparation_data
    if getattr(original, "skips_main_in_helpers", False):
        return

    def preparation_data(name: str) -> dict:
        data = original(name)
        if name.startswith(HELPER_NAME):
            data.pop("init_main_from_name", None)
            data.pop("init_main_from_path", None)
        return data

    preparation_data.skips_main_in_helpers = True
    spawn.get_preparation_data = preparation_data


def helper_context() -> SpawnContext:
    """The multiprocessing context of helper processes (pass as ``mp_context``, with ``start_helper`` first in
    the initializer)."""
    _skip_main_in_helpers()
    return _HelperContext()


def start_helper(parent: int) -> None:
    """In a helper: end when ``parent`` ends, however it ends (a SIGKILLed parent leaves no helper behind), and
    leave Ctrl-C to the parent to report."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the pool's own shutdown ends the helpers
        return
    if os.getppid() != parent:  # it ended before prctl took effect
        os._exit(1)
