"""The exceptions the CLI turns into one-line messages instead of tracebacks."""


class ClearCLIPError(Exception):
    """A user-facing error: bad input, missing weights, unsupported model. The message says what to do.

    ``exit_code`` is what the CLI exits with: 2 for bad input (this class), 1 for environment failures.
    """

    exit_code = 2


class EnvironmentFailure(ClearCLIPError):
    """The machine, not the input, stopped the work (full disk, a locked run folder); rerunning later resumes."""

    exit_code = 1
