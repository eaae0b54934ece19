"""clearclip: open-vocabulary dataset auto-labeling with ClearCLIP (ECCV'24) on open_clip ViTs.

Pipeline: model -> inference -> labels -> annotations -> review/export.
"""

from .decomposition import VARIANTS, Decomposition
from .errors import ClearCLIPError
from .predictor import ClearCLIP
from .segmentation import Segmentation, SegmentSettings
from .vocabulary import Vocabulary

__version__ = "0.1.0"

__all__ = ["ClearCLIP", "ClearCLIPError", "Decomposition", "Segmentation", "SegmentSettings", "VARIANTS", "Vocabulary", "__version__"]
