"""A labeling job as plain values (CLI options, Prefect parameters), and its deterministic shards."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import __version__
from .atomic import write_json
from .decomposition import get_decomposition
from .labeling import LabelConfig
from .model import resolve_weights
from .regions import RegionFilter, Thresholds, load_class_thresholds
from .segmentation import SegmentSettings
from .text import DEFAULT_TEMPLATES, template_key
from .vocabulary import Vocabulary


@dataclass(frozen=True)
class LabelJob:
    """Everything that decides what a labeling run computes, as JSON-able values."""

    classes: str | list[str]  # a class-file path, or class strings ("person, man")
    model: str = "ViT-B-16"
    pretrained: str | None = "openai"
    variant: str = "clearclip"
    device: str = "auto"
    precision: str = "auto"
    background_threshold: float = 0.0
    pixel_threshold: float = 0.0
    min_score: float = 0.0
    min_area: int = 0
    class_thresholds: str | None = None  # JSON/YAML file of per-class overrides
    instances: str = "components"
    batch_size: int = 4
    num_workers: int = -1
    segment: dict = field(default_factory=dict)  # overrides of SegmentSettings: short_side, crop, stride, ...

    def label_config(self) -> LabelConfig:
        """The LabelConfig this job describes; raises ClearCLIPError for bad values."""
        vocabulary = Vocabulary.load(self.classes)
        default = Thresholds(self.pixel_threshold, self.min_score, self.min_area)
        per_class = load_class_thresholds(self.class_thresholds, default, vocabulary) if self.class_thresholds else {}
        settings = SegmentSettings(background_threshold=self.background_threshold).with_overrides(**self.segment)
        return LabelConfig(vocabulary, settings, RegionFilter(default, per_class, self.instances), self.batch_size, self.num_workers)

    def info(self, config: LabelConfig | None = None) -> dict:
        """The ``info`` block of annotations.json: what was computed, not how fast (no timings, no paths)."""
        config = config or self.label_config()
        weights_id, description = resolve_weights(self.model, self.pretrained)
        settings = asdict(config.settings)
        templates = config.settings.templates
        settings["templates"] = "openai_imagenet_80" if tuple(templates) == DEFAULT_TEMPLATES else template_key(templates)
        return {
            "description": "clearclip pseudo-annotations",
            "version": __version__,
            "model": description["model"],
            "pretrained": description["pretrained"],
            "weights_sha256": description.get("weights_sha256"),
            "weights_id": weights_id,
            "variant": self.variant,
            "decomposition": asdict(get_decomposition(self.variant)),
            "vocabulary": config.vocabulary.to_strings(),
            "background_class": config.vocabulary.has_background,
            "settings": settings,
            "thresholds": config.region_filter.to_dict(),
        }

    def to_dict(self) -> dict:
        return asdict(self)


def make_shards(files: list[str], shard_size: int) -> list[list[str]]:
    """Consecutive slices of the sorted file list: the same files always give the same shards."""
    if shard_size < 1:
        raise ValueError("shard_size must be at least 1")
    files = sorted(files)
    return [files[start : start + shard_size] for start in range(0, len(files), shard_size)]


def shard_marker_path(run_dir: str | Path, index: int) -> Path:
    """The file whose presence means shard ``index`` finished (written after all its images)."""
    return Path(run_dir) / "shards" / f"{index:06d}.json"


def read_shard_marker(run_dir: str | Path, index: int) -> dict | None:
    """The finished shard's record, or None while it is not done."""
    try:
        return json.loads(shard_marker_path(run_dir, index).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_shard_marker(run_dir: str | Path, index: int, record: dict) -> None:
    write_json(shard_marker_path(run_dir, index), record, indent=2)
