"""Where clearclip keeps what it can compute again (text embeddings, review's viewable media)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$CLEARCLIP_CACHE_DIR`` or ``~/.cache/clearclip``."""
    return Path(os.environ.get("CLEARCLIP_CACHE_DIR", Path.home() / ".cache" / "clearclip"))
