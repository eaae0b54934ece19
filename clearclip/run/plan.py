"""One orchestration of a run, for the CLI and the flow alike: ``plan_run`` (list, prepare, collisions, what
needs work, shards) before the labeling, ``finish_run`` (merge, summary) after it. ``label_folder`` is the
whole run on one machine.

Torch-free: planning, the resume check and the merge load no model; ``label_folder`` loads one only when
there is work.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ClearCLIPError
from ..io.images import IMAGE_EXTENSIONS, ImageFile, scan_images
from ..vocabulary import Vocabulary
from .folder import DONE, RUN_MARKER, RunFolder
from .merge import merge_run


@dataclass(frozen=True)
class RunPlan:
    """What a run works on: the listed images (label-map collisions removed), the problems of the listing,
    and the names that need work (new, changed, failed or unfinished), sorted."""

    folder: RunFolder
    dataset: Path
    info: dict
    vocabulary: Vocabulary
    images: list[ImageFile]
    problems: list[dict]
    todo: list[str]


def plan_run(dataset: str | Path, folder: RunFolder, info: dict, vocabulary: Vocabulary) -> RunPlan:
    """List ``dataset``, prepare ``folder`` for ``info`` (refusing other settings) and decide image by image
    what needs work. Raises ClearCLIPError for a missing or empty dataset."""
    dataset = Path(dataset)
    if dataset.is_dir() and folder.root.exists() and folder.root.resolve() == dataset.resolve():
        raise ClearCLIPError(f"--out {folder.root} is the dataset folder itself; give a folder of its own, e.g. "
                             f"{dataset.resolve().parent / (dataset.resolve().name + '-run')}")
    listing = scan_images(dataset, exclude=(folder.root,), marker=RUN_MARKER)
    if not listing.images:
        raise ClearCLIPError(f"no images under {dataset} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}, any case)")
    folder.prepare(info)
    images, collisions = folder.split_collisions(listing.images)
    todo = [image.name for image in images if folder.state(image) != DONE]
    return RunPlan(folder, dataset, info, vocabulary, images, listing.problems + collisions, todo)


def finish_run(plan: RunPlan, invocation: dict, exclusive: bool) -> dict:
    """Merge ``plan``'s images into ``annotations.json`` and write ``run.json``; returns the summary.

    ``invocation`` is what this call did (``images_to_label``, ``labeled``, ``skipped_as_done``, ``failed``,
    ``seconds``, ``shards``, ``batch_size``); ``exclusive``: the caller holds the folder exclusively.
    """
    seconds, labeled = invocation["seconds"], invocation["labeled"]
    extra = {
        "run_dir": str(plan.folder.root),
        "dataset": str(plan.dataset.resolve()),
        "images_per_second": labeled / seconds if seconds and labeled else 0.0,
        "last_invocation": invocation,
    }
    return merge_run(plan.folder, plan.images, plan.vocabulary, plan.info, extra, plan.problems, exclusive)


def invocation(plan: RunPlan, records: Iterable[dict], seconds: float) -> dict:
    """The ``last_invocation`` of a call that labeled ``plan.todo`` in parts, one ``LabelStats.record()`` (or
    shard record) each: images found done count as ``skipped_as_done``, at planning or by a part."""
    records = list(records)
    return {"images_to_label": len(plan.todo), "labeled": sum(r["labeled"] for r in records),
            "skipped_as_done": len(plan.images) - len(plan.todo) + sum(r["skipped_as_done"] for r in records),
            "failed": sum(r["failed"] for r in records), "seconds": round(seconds, 3), "shards": len(records),
            "batch_size": min((r["batch_size"] for r in records), default=0)}


def label_folder(model, dataset_dir: str | Path, run_dir: str | Path, config, info: dict,
                 progress: bool = True) -> dict:
    """Label every image under ``dataset_dir`` into ``run_dir`` (resuming), merge, and return the summary.

    ``model`` is a ClearCLIP or a function that loads one (called only when there is work). ``config`` is the
    job's ``LabelConfig`` and ``info`` (``LabelJob.info``) what the run computes; a run folder takes one. The
    folder is held exclusively for the whole call.
    """
    from .pipeline import label_images, stat_images

    folder = RunFolder(run_dir)
    model = model if hasattr(model, "segment_prepared") else functools.cache(model)  # loaded once, if at all
    records, seconds, first = [], 0.0, None
    with folder.lock(exclusive=True):
        for _ in range(2):  # a record the merge refuses is forgotten: one more pass labels its image again
            plan = plan_run(dataset_dir, folder, info, config.vocabulary)
            first = first or plan
            stats = label_images(model, plan.dataset, stat_images(plan.dataset, plan.todo), folder, config,
                                 progress=progress)
            records += [stats.record()] if plan.todo else []
            seconds += stats.seconds
            summary = finish_run(plan, invocation(first, records, seconds), exclusive=True)  # both passes counted
            if not summary["missing"]:
                break
        return summary


def shard_slices(names: Sequence[str], size: int) -> list[list[str]]:
    """``names`` sorted and cut into consecutive slices of at most ``size`` (a whole number, 1 or more)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ClearCLIPError(f"shard_size must be a whole number, 1 or more (got {size!r})")
    names = sorted(names)
    return [names[start : start + size] for start in range(0, len(names), size)]
