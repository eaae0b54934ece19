"""Names and defaults every layer shares, torch-free: last-block variants, segmentation settings, refine modes,
instance modes and precisions. Parsing a job and checking a run folder import this, never the model code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from .errors import ClearCLIPError

REFINEMENTS = ("none", "pamr")
INSTANCE_MODES = ("components", "semantic")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
ATTENTIONS = ("qk", "qq", "kk", "vv", "identity", "qq+kk")
DEFAULT_TEMPLATES_NAME = "openai_imagenet_80"  # open_clip's 80 OpenAI ImageNet templates (inference.text)
DEFAULT_PAMR_ITERATIONS = 10
DEFAULT_PAMR_DILATIONS = (8, 16)

Template = str | Callable[[str], str]


@dataclass(frozen=True)
class Decomposition:
    """How the last block is computed: which attention, and whether the residual and FFN are kept."""

    attention: str = "qq"
    residual: bool = False
    ffn: bool = False

    def __post_init__(self) -> None:
        if self.attention not in ATTENTIONS:
            raise ClearCLIPError(f"unknown attention '{self.attention}'; choose one of {', '.join(ATTENTIONS)}")


VARIANTS: dict[str, Decomposition] = {
    "clearclip": Decomposition("qq", residual=False, ffn=False),
    "vanilla": Decomposition("qk", residual=True, ffn=True),
    "maskclip": Decomposition("identity", residual=False, ffn=False),
    "sclip": Decomposition("qq+kk", residual=True, ffn=False),
}
VARIANT_NAMES = tuple(VARIANTS)
UNMODIFIED = VARIANTS["vanilla"]


def get_decomposition(variant: str | Decomposition) -> Decomposition:
    """Look a named preset up (``clearclip``, ``vanilla``, ``maskclip``, ``sclip``) or pass one through."""
    if isinstance(variant, Decomposition):
        return variant
    if variant not in VARIANTS:
        raise ClearCLIPError(f"unknown variant '{variant}'; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[variant]


@dataclass(frozen=True)
class SegmentSettings:
    """The official evaluation settings; every field can be overridden per call.

    ``templates=None`` means open_clip's 80 OpenAI ImageNet templates (resolved by ``inference.text``).
    """

    short_side: int = 448
    max_long_side: int = 2048
    crop: int = 448
    stride: int = 224
    logit_scale: float = 50.0
    background_threshold: float = 0.0
    templates: tuple[Template, ...] | None = None
    refine: str = "none"  # "pamr": PAMR on the full-size logits, guided by the image (NACLIP's placement)
    pamr_iterations: int = DEFAULT_PAMR_ITERATIONS
    pamr_dilations: tuple[int, ...] = DEFAULT_PAMR_DILATIONS

    def __post_init__(self) -> None:
        if self.refine not in REFINEMENTS:
            raise ClearCLIPError(f"unknown refine '{self.refine}'; choose one of {', '.join(REFINEMENTS)}")
        if self.pamr_iterations < 1 or not self.pamr_dilations or min(self.pamr_dilations) < 1:
            raise ClearCLIPError("pamr_iterations and every pamr_dilation must be at least 1")
        if self.crop < 1 or self.stride < 1:
            raise ClearCLIPError("crop and stride must be at least 1 pixel")
        if self.stride > self.crop:
            raise ClearCLIPError(f"stride {self.stride} is larger than crop {self.crop}: sliding windows would leave "
                                 "pixels uncovered; use a stride of at most the crop")

    def with_overrides(self, **overrides) -> "SegmentSettings":
        """A copy with some fields replaced; unknown names raise TypeError naming them."""
        unknown = set(overrides) - set(self.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown segment settings: {', '.join(sorted(unknown))}")
        for name in ("templates", "pamr_dilations"):
            if overrides.get(name) is not None:
                overrides[name] = tuple(overrides[name])
        overrides = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, **overrides)

    def to_dict(self) -> dict:
        """JSON-able fields, the default templates by name (what a run's ``info`` records)."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        values["templates"] = DEFAULT_TEMPLATES_NAME if self.templates is None else list(self.templates)
        values["pamr_dilations"] = list(self.pamr_dilations)
        return values


def filled_templates(templates: Sequence[Template]) -> list[str]:
    """Templates as strings (a callable is shown filled with ``{}``), for cache keys and records."""
    return [t if isinstance(t, str) else t("{}") for t in templates]
