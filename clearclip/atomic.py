"""Atomic file writes: a file is either absent or complete, also when the process is killed mid-write.

Files get the mode a plain ``open`` would give them (0644 under umask 022), not the 0600 of a temp file.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_current_umask()  # read once at import, before any thread could race os.umask


@contextmanager
def _finished_temp(path: Path) -> Iterator[Path]:
    """A fresh temp file beside ``path``, removed at the end whatever happened."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
    finally:
        tmp_path.unlink(missing_ok=True)


def _seal(tmp: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, FILE_MODE)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed over ``path``."""
    path = Path(path)
    with _finished_temp(path) as tmp:
        yield tmp
        _seal(tmp)
        os.replace(tmp, path)


def create_text(path: str | Path, text: str) -> bool:
    """Create ``path`` with ``text`` atomically unless it exists; returns whether this call created it."""
    path = Path(path)
    with _finished_temp(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
        _seal(tmp)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    return True


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` atomically: into a new file beside ``path``, fsynced, then renamed over ``path``.

    One descriptor from creation to fsync; this is the per-image write of every labeled image.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, 0o666)  # the umask applies, as for a plain open
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, flags, 0o666)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
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
