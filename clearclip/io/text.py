"""Reading the small text files a user names (class lists, per-class thresholds): regular files only, a size
limit, UTF-8 with or without a byte-order mark; every failure is one ClearCLIPError naming the file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import ClearCLIPError, one_line
from .storage import is_url, local_path, read_location

TEXT_LIMIT = 16 << 20  # a class list or thresholds file of more than 16 MB is not one


def read_user_text(path: str | Path, what: str, options: dict | None = None) -> str:
    """The text of the file ``path`` or the object at an fsspec URL (``options``: its storage's), ``what``
    naming it in errors ("class file", ...), a leading BOM dropped.

    Refuses what is not a regular file (a FIFO would block, ``/dev/zero`` never ends), files above
    ``TEXT_LIMIT`` and text that is not UTF-8.
    """
    if is_url(path):
        try:
            data = read_location(path, options, limit=TEXT_LIMIT)
        except (OSError, ClearCLIPError) as error:
            raise ClearCLIPError(f"cannot read {what} {path}: {one_line(error)}") from error
        return _decoded(data, path, what)
    path = local_path(path)
    try:
        with open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NONBLOCK)) as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ClearCLIPError(f"{what} {path} is not a regular file; give a text file")
            data = f.read(TEXT_LIMIT + 1)
    except OSError as error:
        raise ClearCLIPError(f"cannot read {what} {path}: {error.strerror or error}") from error
    return _decoded(data, path, what)


def _decoded(data: bytes, path: str | Path, what: str) -> str:
    if len(data) > TEXT_LIMIT:
        raise ClearCLIPError(f"{what} {path} is larger than {TEXT_LIMIT >> 20} MB; it is not a {what}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ClearCLIPError(f"{what} {path} is not UTF-8 text (byte {error.start}); save it as UTF-8") from error
