"""A review's decisions, saved with the run (``RUN_DIR/review.json``), so a review outlives its FiftyOne
dataset: a refiltered run (``refilter`` carries the file along), a moved run folder or a deleted dataset is
reviewed again with every decision that still applies.

Per image (keyed by its file name in the dataset folder), the file holds the reviewer's tags, the run's
regions relabeled (with the new label) and deleted, and the detections a reviewer drew or reshaped. A run region is named by its content (label, box,
mask), not its position, so a refiltered run, which keeps the same regions minus the dropped ones, is
matched region by region; a decision about a region the run no longer has does not apply, and is counted.
Decisions are applied to samples new to a dataset only: a sample already in it keeps what it holds.

``save_decisions`` reads only the samples modified since the tool last wrote the dataset (FiftyOne's
``last_modified_at``), so saving costs what was reviewed, not the dataset's size.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path

import numpy as np

from ..errors import ClearCLIPError
from ..io.atomic import write_json
from ..run.folder import RunFolder
from .fields import FILE_NAME_FIELD, NOT_IN_RUN_TAG, PRED_FIELD, RUN_CHANGED_TAG, RUN_FIELD

FORMAT = "clearclip review decisions 1"
TOOL_TAGS = (NOT_IN_RUN_TAG, RUN_CHANGED_TAG)  # the tool's own tags, not a reviewer's decision
WRITTEN_AT = "written_at"  # in dataset.info["clearclip"]: the last sample modification the tool made


def region_key(detection) -> str:
    """A run region by its content: label, box and mask."""
    digest = hashlib.sha1(json.dumps([detection.label, [round(v, 6) for v in detection.bounding_box]]).encode())
    if detection.mask is not None:
        digest.update(np.ascontiguousarray(detection.mask).tobytes())
    return digest.hexdigest()


def _same_region(a, b) -> bool:
    """Same box and mask (labels aside)."""
    if [round(v, 6) for v in a.bounding_box] != [round(v, 6) for v in b.bounding_box]:
        return False
    if a.mask is None or b.mask is None:
        return a.mask is None and b.mask is None
    return np.array_equal(a.mask, b.mask)


def image_decision(sample) -> dict | None:
    """What a reviewer decided about one sample (tags; relabeled, deleted and added regions), or None when
    its labels and tags are the run's."""
    tags = [tag for tag in sample.tags if tag not in TOOL_TAGS]
    originals = {d["run_index"]: d for d in (sample[RUN_FIELD].detections if sample[RUN_FIELD] else [])}
    relabeled, added = {}, []
    for detection in sample[PRED_FIELD].detections if sample[PRED_FIELD] else []:
        original = originals.get(detection["run_index"]) if detection.has_field("run_index") else None
        if original is not None and _same_region(original, detection):
            del originals[detection["run_index"]]
            if detection.label != original.label:
                relabeled[region_key(original)] = detection.label
        else:  # drawn, or a run region reshaped (its original then counts as deleted)
            added.append(json.loads(detection.to_json()))
    deleted = [region_key(original) for original in originals.values()]
    if not (tags or relabeled or deleted or added):
        return None
    return {"tags": tags, "relabeled": relabeled, "deleted": deleted, "added": added}


def read_decisions(run_dir: Path) -> dict[str, dict]:
    """The saved decisions of a run folder by file name (none when it has no review.json)."""
    path = RunFolder(run_dir).decisions_path
    if not path.is_file():
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("format") != FORMAT or not isinstance(document.get("images"), dict):
            raise ValueError(f"not a '{FORMAT}' document")
        return document["images"]
    except (OSError, ValueError, AttributeError) as error:
        raise ClearCLIPError(f"{path} cannot be read ({error}); move it away to review without it") from None


def save_decisions(dataset, run_dir: Path) -> int:
    """Update ``run_dir/review.json`` with the samples modified since the tool last wrote ``dataset``;
    returns the number of images with decisions."""
    from fiftyone import ViewField as F

    decisions = read_decisions(run_dir)
    since = dataset.info.get("clearclip", {}).get(WRITTEN_AT)
    touched = dataset if since is None else dataset.match(F("last_modified_at") > datetime.fromisoformat(since))
    for sample in touched.select_fields([PRED_FIELD, RUN_FIELD, FILE_NAME_FIELD]).iter_samples():
        decision = image_decision(sample)
        if decision is None:
            decisions.pop(sample[FILE_NAME_FIELD], None)
        else:
            decisions[sample[FILE_NAME_FIELD]] = decision
    write_json(RunFolder(run_dir).decisions_path, {"format": FORMAT, "images": decisions}, indent=1)
    return len(decisions)


def mark_written(dataset) -> None:
    """Record the tool's last write: later modifications are a reviewer's."""
    latest = dataset.max("last_modified_at") if len(dataset) else None
    dataset.info.setdefault("clearclip", {})[WRITTEN_AT] = latest.isoformat() if latest else None
    dataset.save()


def apply_decisions(dataset, sample_ids: list[str], decisions: dict[str, dict]) -> tuple[int, int]:
    """Apply saved decisions to the samples ``sample_ids`` (new to ``dataset``: their editable labels are
    the run's); returns (images they were applied to, decisions about regions the run no longer has)."""
    import fiftyone as fo
    from fiftyone import ViewField as F

    if not decisions:
        return 0, 0
    applied = missed = 0
    view = dataset.select(sample_ids).match(F(FILE_NAME_FIELD).is_in(list(decisions)))
    for sample in view.select_fields([PRED_FIELD, FILE_NAME_FIELD]).iter_samples(autosave=True):
        decision = decisions[sample[FILE_NAME_FIELD]]
        sample.tags = list(dict.fromkeys([*sample.tags, *decision["tags"]]))
        applied += 1
        relabeled, deleted = decision["relabeled"], set(decision["deleted"])
        if not (relabeled or deleted or decision["added"]):
            continue
        detections, found = [], set()
        for detection in sample[PRED_FIELD].detections if sample[PRED_FIELD] else []:
            key = region_key(detection)
            found.add(key)
            if key not in deleted:
                detection.label = relabeled.get(key, detection.label)
                detections.append(detection)
        for drawn in decision["added"]:  # a reshaped region's run_index was its place in the old run
            detections.append(fo.Detection.from_json(json.dumps({k: v for k, v in drawn.items() if k != "run_index"})))
        sample[PRED_FIELD] = fo.Detections(detections=detections)
        missed += len((set(relabeled) | deleted) - found)
    return applied, missed
