"""clearclip: open-vocabulary dataset auto-labeling with ClearCLIP (ECCV'24) on open_clip ViTs.

Pipeline: model -> inference -> labels -> annotations -> review/export. Names are imported on first
use, so commands that never run a model (review, export) start without importing torch.
"""

from importlib import import_module

from .errors import ClearCLIPError

__version__ = "0.1.0"

_LAZY = {
    "ClearCLIP": ".predictor",
    "Decomposition": ".decomposition",
    "VARIANTS": ".decomposition",
    "Segmentation": ".segmentation",
    "SegmentSettings": ".segmentation",
    "Vocabulary": ".vocabulary",
    "LabelJob": ".job",
}

__all__ = ["ClearCLIPError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'clearclip' has no attribute {name!r}")
