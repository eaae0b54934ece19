"""The one exception type the CLI turns into a one-line message instead of a traceback."""


class ClearCLIPError(Exception):
    """A user-facing error: bad input, missing weights, unsupported model. The message says what to do."""
