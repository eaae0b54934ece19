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

PR_SET_PDEATHSIG = 1
HELPER_NAME = "clearclip-helper"


class _HelperProcess(SpawnProcess):
    """A spawned process named so that ``_preparation_data`` recognises it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.name = f"{HELPER_NAME}-{self.name}"


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
