"""The review dataset's names (fields, tags, saved views) and the one conversion between a run's annotation
record and a FiftyOne ``Detection``, both ways. Every module that touches a review dataset uses these.
"""

from __future__ import annotations

from itertools import islice

import numpy as np

from ..annotations.record import Annotation, stored_score
from ..annotations.rle import encode_rle_in_box
from ..errors import ClearCLIPError

PRED_FIELD = "pseudo_labels"  # what reviewers edit and export writes
RUN_FIELD = "pseudo_labels_run"  # the run's labels as the run wrote them, read-only
SEGMENTATION_FIELD = "pseudo_segmentation"  # the run's label map
RUN_HASH_FIELD = "pseudo_labels_run_hash"  # content of the run's labels for this image
WRITTEN_HASH_FIELD = "pseudo_labels_written_hash"  # what the tool last wrote into PRED_FIELD
IMAGE_ID_FIELD = "coco_image_id"
FILE_NAME_FIELD = "file_name"
GROUND_TRUTH_FIELD = "ground_truth"
LEAST_CONFIDENT_VIEW = "least-confident-first"
TO_REVIEW_VIEW = "to-review"  # least confident first, without samples tagged reviewed or rejected
REVIEWED_VIEW = "reviewed"
RUN_CHANGED_TAG = "run-changed"
RUN_CHANGE_FIELD = "run_change"  # on a run-changed sample: what the run changed under the reviewer's edits
NOT_IN_RUN_TAG = "not-in-run"
REJECTED_TAG = "rejected"
REVIEWED_TAG = "reviewed"
EXCLUDED_TAGS = (REJECTED_TAG, NOT_IN_RUN_TAG)  # what an export leaves out by default
BATCH = 200  # samples per database write


def batched(iterable, size: int = BATCH):
    """Lists of ``size`` items (the last one shorter)."""
    iterator = iter(iterable)
    while batch := list(islice(iterator, size)):
        yield batch


def check_detections_field(dataset, field: str, needed_by: str) -> None:
    """Raise ClearCLIPError unless ``field`` of ``dataset`` holds FiftyOne Detections."""
    import fiftyone as fo

    kind = dataset.get_field(field) if dataset.has_sample_field(field) else None
    if kind is None:
        raise ClearCLIPError(f"dataset '{dataset.name}' has no field '{field}'; {needed_by}")
    if getattr(kind, "document_type", None) is not fo.Detections:
        raise ClearCLIPError(f"field '{field}' of dataset '{dataset.name}' holds {type(kind).__name__}"
                             f"{f' of {kind.document_type.__name__}' if getattr(kind, 'document_type', None) else ''}"
                             f", not Detections; {needed_by}")


def to_detection(annotation: Annotation, label: str, run_index: int | None = None):
    """The FiftyOne ``Detection`` of an annotation: relative box, mask cropped to the box, score as
    ``confidence``, and ``run_index`` (its position among the run's annotations of the image) when given."""
    import fiftyone as fo

    height, width = annotation.image_size
    x, y, w, h = annotation.bbox
    detection = fo.Detection(label=label, bounding_box=[x / width, y / height, w / width, h / height],
                             mask=annotation.mask_in_box(), confidence=annotation.score, iscrowd=0)
    if run_index is not None:
        detection["run_index"] = run_index
    return detection


def detection_mask(detection, width: int, height: int) -> tuple[np.ndarray, int, int]:
    """A detection's mask inside its box, clipped to the image, and the box's top-left corner.

    The instance mask is scaled to its box as FiftyOne's ``Detection.to_segmentation`` scales it, so a box
    resized in the App carries its mask along; box corners are rounded to the nearest pixel (FiftyOne
    truncates, which moves some unedited masks by a pixel). A detection without a mask fills its box.
    """
    import eta.core.image as etai

    bx, by, bw, bh = detection.bounding_box
    x, y = int(round(bx * width)), int(round(by * height))
    w = max(1, int(round((bx + bw) * width)) - x)
    h = max(1, int(round((by + bh) * height)) - y)
    mask = detection.get_mask() if detection.has_mask else None
    if mask is None:
        mask = np.ones((h, w), bool)
    else:
        mask = np.asarray(mask)
        if mask.ndim == 3:
            mask = mask[:, :, 0]
        if mask.shape != (h, w):
            mask = etai.resize(mask.astype(np.uint8), width=w, height=h)
        mask = mask.astype(bool)
    top, left = max(0, -y), max(0, -x)
    mask = mask[top : max(top, height - y), left : max(left, width - x)]
    return mask, x + left, y + top


def from_detection(detection, category_id: int, width: int, height: int) -> Annotation | None:
    """The annotation record of a (possibly edited) detection on a ``width`` x ``height`` image: its mask as
    ``detection_mask`` places it, the box around the mask's pixels; None when no pixel is left."""
    mask, x, y = detection_mask(detection, width, height)
    area = int(np.count_nonzero(mask))
    if area == 0:
        return None
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    top, left = int(np.argmax(rows)), int(np.argmax(cols))
    bottom, right = len(rows) - int(np.argmax(rows[::-1])), len(cols) - int(np.argmax(cols[::-1]))
    score = None if detection.confidence is None else stored_score(detection.confidence)
    return Annotation(category_id, (x + left, y + top, right - left, bottom - top), area, score,
                      encode_rle_in_box(mask, x, y, height, width))
