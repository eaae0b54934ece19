"""Refilter: apply stricter region thresholds (min_score, min_area, min_area_fraction, per class) to a finished
run without the model. Annotations carry their scores and areas, so the result equals a fresh
``clearclip label`` run with those thresholds. Label maps depend only on the pixel threshold, which refilter
cannot change (the per-pixel scores are not stored), so they are linked (copied where links fail).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import ijson
import numpy as np

from ..annotations.coco import CocoWriter, iter_coco_images, read_coco_header
from ..annotations.record import Annotation
from ..annotations.thresholds import RegionFilter, load_class_thresholds
from ..errors import ClearCLIPError
from ..io.atomic import write_json, write_text
from ..vocabulary import Vocabulary
from .folder import RunFolder


def _check_stricter(source: RegionFilter, target: RegionFilter, vocabulary: Vocabulary) -> None:
    for name in vocabulary.names:
        old, new = source.for_class(name), target.for_class(name)
        if new.pixel_threshold != old.pixel_threshold:
            raise ClearCLIPError(f"'{name}': pixel_threshold {new.pixel_threshold} differs from the run's "
                                 f"{old.pixel_threshold}; it needs the per-pixel scores, so label again to change it")
        for key in ("min_score", "min_area", "min_area_fraction"):
            if getattr(new, key) < getattr(old, key):
                raise ClearCLIPError(f"'{name}': {key} {getattr(new, key)} is below the run's {getattr(old, key)}; "
                                     "refilter can only drop regions the run kept, so label again to loosen it")


def _link_labels(source: Path, target: Path) -> None:
    for path in source.rglob("*.png"):
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, destination)
        except OSError:
            shutil.copy2(path, destination)


def _refiltered(source: RunFolder, out: RunFolder, new: RegionFilter, info: dict,
                categories: list[dict]) -> tuple[dict, int, int]:
    """Stream the source run's annotations through ``new`` into ``out``'s annotations.json; returns the kept
    count per class, the images and the annotations written. Raises ClearCLIPError naming the source file when it is not a run clearclip wrote."""
    names = [c["name"] for c in categories]
    class_of = {c["id"]: index for index, c in enumerate(categories)}
    kept_per_class = dict.fromkeys(names, 0)
    path = source.annotations_path
    try:
        with CocoWriter(out.annotations_path, info, categories) as coco:
            for image, annotations in iter_coco_images(path):
                records = [Annotation.from_dict(a) for a in annotations]
                unknown = sorted({r.category_id for r in records} - set(class_of))
                if unknown:
                    raise ClearCLIPError(f"{path}: {image.get('file_name')!r} has annotations of unknown category "
                                         f"ids {unknown}; rerun clearclip label into {source.root} to rewrite it")
                classes = np.array([class_of[r.category_id] for r in records], np.int64)
                scores = np.array([1.0 if r.score is None else r.score for r in records], np.float64)
                kept = new.keeps(names, classes, np.array([r.area for r in records], np.int64), scores,
                                 image["width"] * image["height"]) if records else []
                for index in classes[np.asarray(kept, bool)].tolist():
                    kept_per_class[names[index]] += 1
                coco.add_image(image["file_name"], image["width"], image["height"],
                               [r.line() for r, keep in zip(records, kept) if keep])
    except (ijson.JSONError, ValueError, KeyError, TypeError) as error:
        raise ClearCLIPError(f"{path} is not valid clearclip COCO ({type(error).__name__}: {error}); rerun "
                             f"clearclip label into {source.root} to rewrite it") from error
    return kept_per_class, coco.images, coco.annotations


def refilter_run(source_dir: str | Path, out_dir: str | Path, class_thresholds: str | Path | None = None,
                 min_score: float | None = None, min_area: int | None = None,
                 min_area_fraction: float | None = None) -> dict:
    """Write ``out_dir`` as the run ``source_dir`` with stricter thresholds; returns its summary (run.json).

    Unset defaults keep the source run's; ``class_thresholds`` (JSON/YAML, as ``--class-thresholds``) is
    applied on top of the new defaults.
    """
    source, out = RunFolder(source_dir), RunFolder(out_dir)
    summary = source.read_summary()
    try:
        info, categories = read_coco_header(source.annotations_path)
    except (OSError, ValueError, ijson.JSONError) as error:
        raise ClearCLIPError(f"{source.root} is not a finished clearclip run ({error})") from error
    if out.root.resolve() == source.root.resolve():
        raise ClearCLIPError("--out must be a new folder, not the source run")
    if out.root.exists() and any(out.root.iterdir()):
        raise ClearCLIPError(f"{out.root} is not empty; choose a new --out folder")
    vocabulary = Vocabulary.from_strings(info["vocabulary"])
    old = RegionFilter.from_dict(info.get("thresholds") or {})
    changes = {k: v for k, v in (("min_score", min_score), ("min_area", min_area),
                                  ("min_area_fraction", min_area_fraction)) if v is not None}
    default = replace(old.default, **changes)
    per_class = {name: replace(t, **changes) for name, t in old.per_class.items()}
    if class_thresholds:
        per_class.update(load_class_thresholds(class_thresholds, default, vocabulary))
    new = RegionFilter(default, per_class, old.instances)
    _check_stricter(old, new, vocabulary)

    new_info = {**info, "thresholds": new.to_dict(),
                "refiltered_from": {"run": str(source.root.resolve()), "thresholds": info.get("thresholds")}}
    created = not out.root.exists()
    out.mark()
    try:
        write_json(out.config_path, new_info, indent=2)
        kept_per_class, images, annotations = _refiltered(source, out, new, new_info, categories)
    except BaseException:  # nothing half-written is left: the retry finds --out as it was
        if created:
            shutil.rmtree(out.root)
        else:
            for path in out.root.iterdir():
                path.unlink()
        raise
    _link_labels(source.labels_dir, out.labels_dir)
    if source.decisions_path.is_file():  # the review carries over: `review` applies what still applies
        write_text(out.decisions_path, source.decisions_path.read_text(encoding="utf-8"))
    result = {**{k: summary[k] for k in ("dataset", "images_listed", "failures", "missing") if k in summary},
              "info": new_info, "images_labeled": images, "annotations": annotations,
              "annotations_per_class": kept_per_class, "refiltered_from": str(source.root.resolve())}
    write_json(out.summary_path, result, indent=2)
    return result
