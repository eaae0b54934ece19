"""The path gate: every name read from a file (a shard manifest, a record, ``annotations.json``, a review
dataset) becomes a path only through here. A name is a relative POSIX path that stays inside its root; a
path the tool writes or deletes must not lead out of its root through a symlink.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from ..errors import ClearCLIPError


def checked_name(name: object, source: str | Path) -> str:
    """``name`` if it is a relative POSIX path without ``.``/``..`` parts, empty parts or NUL; otherwise a
    ClearCLIPError naming ``source`` (the file the name came from) and the name."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ClearCLIPError(f"{source}: {name!r} is not a file name")
    parts = name.split("/")
    if name.startswith("/") or PurePosixPath(name).is_absolute() or any(p in ("", ".", "..") for p in parts):
        raise ClearCLIPError(f"{source}: {name!r} is not a relative path inside the folder (absolute paths, '.' and "
                             "'..' are refused); the file was not written by clearclip, or was altered")
    return name


def contained(root: str | Path, path: str | Path) -> Path:
    """``path``, if its folder resolves inside ``root`` (no symlink along the way leads out of it); otherwise a
    ClearCLIPError naming the path. Call before writing or deleting ``path``."""
    real_root = os.path.realpath(root)
    real_parent = os.path.realpath(Path(path).parent)
    if os.path.commonpath([real_root, real_parent]) != real_root:
        raise ClearCLIPError(f"{path} leads outside {root} (through a symlink to {real_parent}); clearclip never "
                             "writes or deletes outside its folder: remove the link")
    return Path(path)
