"""The exceptions the CLI turns into one-line messages instead of tracebacks, and how a message is shown."""

import re
import unicodedata


class ClearCLIPError(Exception):
    """A user-facing error: bad input, missing weights, unsupported model. The message says what to do.

    ``exit_code`` is what the CLI exits with: 2 for bad input (this class), 1 for environment failures.
    """

    exit_code = 2


class EnvironmentFailure(ClearCLIPError):
    """The machine, not the input, stopped the work (full disk, a locked run folder); rerunning later resumes."""

    exit_code = 1


def one_line(message: object) -> str:
    """``message`` as one line a terminal shows as written: control characters (a newline or an ANSI escape in
    a file name) become their escapes (``\\n``, ``\\x1b``), so no name can forge a line or recolour the
    terminal; runs of spaces become one."""
    text = "".join(c if unicodedata.category(c) != "Cc" else repr(c)[1:-1] for c in str(message).strip())
    return re.sub(" {2,}", " ", text)
