"""clearclip: open-vocabulary dataset auto-labeling with ClearCLIP (ECCV'24) on open_clip ViTs.

The package reads as the pipeline (see docs/architecture.md): ``options`` and ``vocabulary`` (shared names),
``io``, ``inference`` (the only torch code), ``annotations``, ``run``, ``review`` (FiftyOne), ``evaluation``,
``cli``. Names here are imported on first use, so commands that never run a model start without torch.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

from .errors import ClearCLIPError

try:
    __version__ = version("clearclip")  # one version string: pyproject.toml's
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

_LAZY = {
    "ClearCLIP": ".inference.predictor",
    "Segmentation": ".inference.segmentation",
    "Decomposition": ".options",
    "VARIANTS": ".options",
    "SegmentSettings": ".options",
    "Vocabulary": ".vocabulary",
    "LabelJob": ".run.job",
}

__all__ = ["ClearCLIPError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'clearclip' has no attribute {name!r}")
