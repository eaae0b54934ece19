"""Class vocabularies: one class per entry, comma-separated synonyms, optional background class 0."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ClearCLIPError


@dataclass(frozen=True)
class Vocabulary:
    """Classes as tuples of synonyms; ``has_background`` when class 0 is a background line."""

    classes: tuple[tuple[str, ...], ...]
    has_background: bool = False

    @classmethod
    def from_strings(cls, classes: Sequence[str]) -> "Vocabulary":
        """Parse ``["background", "person, man", ...]``: commas separate synonyms of one class."""
        parsed = []
        for i, line in enumerate(classes):
            names = tuple(name.strip() for name in str(line).split(",") if name.strip())
            if not names:
                raise ClearCLIPError(f"class {i} ({line!r}) has no name")
            parsed.append(names)
        if not parsed:
            raise ClearCLIPError("the class list is empty; give at least one class")
        has_background = parsed[0][0].lower() == "background"
        if has_background and len(parsed) == 1:
            raise ClearCLIPError("the class list has only 'background'; add the classes to label")
        first_seen: dict[str, int] = {}
        for i, names in enumerate(parsed):
            for name in names:
                key = name.casefold()
                if key in first_seen:
                    where = "twice in one class" if first_seen[key] == i else f"in classes {first_seen[key]} and {i}"
                    raise ClearCLIPError(f"class name '{name}' appears {where}; every name (synonyms included) "
                                         "must be unique, or one class can never win")
                first_seen[key] = i
        return cls(tuple(parsed), has_background)

    @classmethod
    def from_text(cls, text: str, source: str | Path) -> "Vocabulary":
        """Parse a class file's text: one class a line, blank lines and ``#`` comments skipped."""
        lines = [line.strip() for line in text.splitlines()]
        lines = [line for line in lines if line and not line.startswith("#")]
        if not lines:
            raise ClearCLIPError(f"class file {source} lists no classes")
        return cls.from_strings(lines)

    @property
    def names(self) -> list[str]:
        """Display name of each class: its first synonym."""
        return [synonyms[0] for synonyms in self.classes]

    @property
    def queries(self) -> list[str]:
        """Every synonym of every class, in order: the text queries."""
        return [name for synonyms in self.classes for name in synonyms]

    @property
    def query_to_class(self) -> list[int]:
        """Class index of each query."""
        return [i for i, synonyms in enumerate(self.classes) for _ in synonyms]

    def category_ids(self) -> list[int | None]:
        """COCO category id (1..K in order) of each class; None for the background class."""
        ids: list[int | None] = []
        next_id = 1
        for i in range(len(self.classes)):
            if i == 0 and self.has_background:
                ids.append(None)
            else:
                ids.append(next_id)
                next_id += 1
        return ids

    def to_strings(self) -> list[str]:
        """The vocabulary in class-file form, one string per class."""
        return [", ".join(synonyms) for synonyms in self.classes]

    def __len__(self) -> int:
        return len(self.classes)
