"""Confidence filters: per-pixel and per-region thresholds, per-class overrides read from JSON or YAML, and the
one rule that decides which regions a run keeps (a fresh run and ``refilter`` both apply it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from ..errors import ClearCLIPError
from ..io.text import read_user_text
from ..options import INSTANCE_MODES
from ..vocabulary import Vocabulary


@dataclass(frozen=True)
class Thresholds:
    """Confidence filters: pixels below ``pixel_threshold`` are unlabeled; a region needs a mean score of
    ``min_score`` and an area of ``min_area`` pixels and of ``min_area_fraction`` of the image."""

    pixel_threshold: float = 0.0
    min_score: float = 0.0
    min_area: int = 0
    min_area_fraction: float = 0.001

    def __post_init__(self) -> None:
        for name in ("pixel_threshold", "min_score", "min_area_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ClearCLIPError(f"{name} must be a number from 0 to 1, got {value!r}")
        if isinstance(self.min_area, bool) or not isinstance(self.min_area, int) or self.min_area < 0:
            raise ClearCLIPError(f"min_area must be a whole number of pixels, 0 or more, got {self.min_area!r}")

    def min_pixels(self, image_pixels: int) -> int:
        """The smallest area a region of an image of ``image_pixels`` pixels may have."""
        return max(self.min_area, math.ceil(self.min_area_fraction * image_pixels))


@dataclass(frozen=True)
class RegionFilter:
    """Default thresholds, per-class overrides (by class name) and how regions are formed."""

    default: Thresholds = Thresholds()
    per_class: dict[str, Thresholds] = field(default_factory=dict)
    instances: str = "components"

    def __post_init__(self) -> None:
        if self.instances not in INSTANCE_MODES:
            raise ClearCLIPError(f"unknown instances '{self.instances}'; choose components or semantic")

    def for_class(self, name: str) -> Thresholds:
        return self.per_class.get(name, self.default)

    def pixel_thresholds(self, names: Sequence[str]) -> list[float]:
        """The pixel threshold of each class, in the order of ``names``."""
        return [self.for_class(name).pixel_threshold for name in names]

    def keeps(self, names: Sequence[str], classes: np.ndarray, areas: np.ndarray, scores: np.ndarray,
              image_pixels: int) -> np.ndarray:
        """Which regions pass: region i, of class ``names[classes[i]]``, needs ``areas[i]`` of at least the
        class's ``min_pixels(image_pixels)`` and ``scores[i]`` (the score as stored, ``stored_score``) of at
        least its ``min_score``. The one keep rule of a run, for fresh runs and ``refilter`` alike."""
        thresholds = [self.for_class(name) for name in names]
        min_pixels = np.array([t.min_pixels(image_pixels) for t in thresholds], np.int64)
        min_score = np.array([t.min_score for t in thresholds], np.float64)
        classes = np.asarray(classes, np.int64)
        return (np.asarray(areas) >= min_pixels[classes]) & (np.asarray(scores, np.float64) >= min_score[classes])

    def to_dict(self) -> dict:
        """What a run's ``info`` records as ``thresholds``; ``from_dict`` reads it back."""
        return {"instances": self.instances, **vars(self.default),
                "per_class": {name: vars(t) for name, t in sorted(self.per_class.items())}}

    @classmethod
    def from_dict(cls, stored: dict) -> "RegionFilter":
        """The filter a run's ``info["thresholds"]`` records (missing keys take the defaults)."""
        names = {f.name for f in fields(Thresholds)}
        default = Thresholds(**{k: v for k, v in stored.items() if k in names})
        per_class = {name: Thresholds(**values) for name, values in (stored.get("per_class") or {}).items()}
        return cls(default, per_class, stored.get("instances", "components"))


def load_class_thresholds(source: str | Path | dict, default: Thresholds, vocabulary: Vocabulary,
                          storage_options: dict | None = None) -> dict[str, Thresholds]:
    """Per-class thresholds ``{"class name": {"min_score": .., "min_area": .., ...}}`` from a JSON or YAML file
    (a path or an fsspec URL), or from such a mapping itself, every value checked (unset keys take ``default``'s).

    Raises ClearCLIPError naming the file (or "class_thresholds"), the class and the problem.
    """
    if isinstance(source, dict):
        return _checked_class_thresholds(source, "class_thresholds", default, vocabulary)
    import yaml

    path = source
    text = read_user_text(path, "class thresholds file", storage_options)
    try:
        data = yaml.load(text, Loader=_yaml_loader()) if str(path).lower().endswith((".yaml", ".yml")) else \
            json.loads(text, object_pairs_hook=_unique_keys)
    except (ValueError, yaml.YAMLError) as error:
        raise ClearCLIPError(f"cannot read class thresholds {path}: {str(error).splitlines()[0]}") from error
    return _checked_class_thresholds(data, str(path), default, vocabulary)


def _unique_keys(pairs: list[tuple]) -> dict:
    """A JSON object, refusing a key given twice (the last one would silently win)."""
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"{key!r} is given twice")
        result[key] = value
    return result


def _yaml_loader():
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        """yaml's safe loader, refusing a mapping key given twice."""

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"{key!r} is given twice",
                                                            key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def _checked_class_thresholds(data, where: str, default: Thresholds, vocabulary: Vocabulary) -> dict[str, Thresholds]:
    if not isinstance(data, dict):
        raise ClearCLIPError(f"{where}: expected a mapping from class name to thresholds")
    known = [f.name for f in fields(Thresholds)]
    labelable = [name for i, name in enumerate(vocabulary.names) if vocabulary.category_ids()[i] is not None]
    result = {}
    for name, values in data.items():
        if name not in labelable:
            hint = " (the background class is never labeled)" if name in vocabulary.names else ""
            raise ClearCLIPError(f"{where}: '{name}' is not a class to label{hint}; classes: {', '.join(labelable)}")
        if not isinstance(values, dict) or set(values) - set(known):
            raise ClearCLIPError(f"{where}: thresholds of '{name}' must be a mapping with keys from {', '.join(known)}")
        try:
            result[name] = replace(default, **values)
        except ClearCLIPError as error:
            raise ClearCLIPError(f"{where}: '{name}': {error}") from error
    return result
