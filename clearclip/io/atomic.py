"""Atomic file writes: a file is either absent or complete, also when the process is killed mid-write.

Files get the mode a plain ``open`` would give them (0644 under umask 022), not the 0600 of a temp file.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"


def _create_temp(path: Path) -> tuple[Path, int]:
    """A new empty file beside ``path`` (its folder created if need be), open for writing, with the mode a
    plain ``open`` gives it (the umask applies; a ``tempfile`` would stay 0600)."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        return tmp, os.open(tmp, flags, 0o666)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tmp, os.open(tmp, flags, 0o666)


def _written_temp(path: Path, data: bytes) -> Path:
    """A temp file beside ``path`` holding ``data``, fsynced: one descriptor from creation to fsync."""
    tmp, fd = _create_temp(path)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed over ``path``."""
    path = Path(path)
    tmp, fd = _create_temp(path)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def create_text(path: str | Path, text: str) -> bool:
    """Create ``path`` with ``text`` atomically unless it exists; returns whether this call created it."""
    path = Path(path)
    tmp = _written_temp(path, text.encode("utf-8"))
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` atomically: into a new file beside ``path``, fsynced, then renamed over ``path``.
    This is the per-image write of every labeled image."""
    path = Path(path)
    tmp = _written_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any, indent: int | None = None) -> None:
    """Write ``data`` as JSON atomically."""
    write_text(path, json.dumps(data, indent=indent, ensure_ascii=False))
