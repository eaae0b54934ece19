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
from ..io.images import IMAGE_EXTENSIONS, ImageFile, ImageListing, list_objects, scan_images
from ..io.storage import is_url, local_path, open_storage
from ..vocabulary import Vocabulary
from .folder import RUN_MARKER, RunFolder
from .merge import merge_run


@dataclass(frozen=True)
class RunPlan:
    """What a run works on: the listed images (label-map collisions removed), the problems of the listing,
    and the names that need work (new, changed, failed or unfinished), sorted."""

    folder: RunFolder
    dataset: Path | str  # a local folder, or an fsspec URL
    info: dict
    vocabulary: Vocabulary
    images: list[ImageFile]
    problems: list[dict]
    todo: list[str]


def list_dataset(dataset: str | Path, folder: RunFolder, options: dict | None = None) -> ImageListing:
    """The images of a local folder or an object-storage URL, run folders (``folder`` among them) skipped.
    Raises ClearCLIPError for a missing dataset, or one that is ``folder`` itself."""
    if is_url(dataset):
        dataset = str(dataset).rstrip("/")
        if dataset == str(folder.root):
            raise ClearCLIPError(f"out {folder.root} is the dataset itself; give the run a prefix of its own, e.g. "
                                 f"{dataset}-run")
        out = str(folder.root)
        inside = (out[len(dataset) + 1:],) if out.startswith(dataset + "/") else ()
        return list_objects(open_storage(dataset, options), exclude=inside, marker=RUN_MARKER)
    dataset = local_path(dataset)
    if not folder.remote and dataset.is_dir() and folder.root.exists() and folder.root.resolve() == dataset.resolve():
        raise ClearCLIPError(f"--out {folder.root} is the dataset folder itself; give a folder of its own, e.g. "
                             f"{dataset.resolve().parent / (dataset.resolve().name + '-run')}")
    return scan_images(dataset, exclude=() if folder.remote else (folder.root,), marker=RUN_MARKER)


def plan_run(dataset: str | Path, folder: RunFolder, info: dict, vocabulary: Vocabulary,
             options: dict | None = None) -> RunPlan:
    """List ``dataset`` (a folder or an fsspec URL; ``options`` its storage's), prepare ``folder`` for ``info``
    (refusing other settings) and decide image by image what needs work. Raises ClearCLIPError for a missing
    or empty dataset."""
    listing = list_dataset(dataset, folder, options)
    if not listing.images:
        raise ClearCLIPError(f"no images under {dataset} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}, any case)")
    folder.prepare(info)
    images, collisions = folder.split_collisions(listing.images)
    todo = [image.name for image in folder.pending(images)]
    dataset = str(dataset).rstrip("/") if is_url(dataset) else local_path(dataset)
    return RunPlan(folder, dataset, info, vocabulary, images, listing.problems + collisions, todo)


def finish_run(plan: RunPlan, invocation: dict, exclusive: bool) -> dict:
    """Merge ``plan``'s images into ``annotations.json`` and write ``run.json``; returns the summary.

    ``invocation`` is what this call did (``images_to_label``, ``labeled``, ``skipped_as_done``, ``failed``,
    ``seconds``, ``shards``, ``batch_size``); ``exclusive``: the caller holds the folder exclusively.
    """
    seconds, labeled = invocation["seconds"], invocation["labeled"]
    extra = {
        "run_dir": str(plan.folder.root),
        "dataset": plan.dataset if isinstance(plan.dataset, str) else str(plan.dataset.resolve()),
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
    from .pipeline import label_images

    folder = RunFolder(run_dir, config.storage_options)
    model = model if hasattr(model, "segment_prepared") else functools.cache(model)  # loaded once, if at all
    records, seconds, first = [], 0.0, None
    with folder.lock(exclusive=True):
        for _ in range(2):  # a record the merge refuses is forgotten: one more pass labels its image again
            plan = plan_run(dataset_dir, folder, info, config.vocabulary, config.storage_options)
            first = first or plan
            todo = _to_label(plan)
            stats = label_images(model, plan.dataset, todo, folder, config,
                                 progress=progress)
            records += [stats.record()] if plan.todo else []
            seconds += stats.seconds
            summary = finish_run(plan, invocation(first, records, seconds), exclusive=True)  # both passes counted
            if not summary["missing"]:
                break
        return summary


def _to_label(plan: RunPlan) -> list[ImageFile]:
    """The images of ``plan.todo``: as listed on object storage (the listing has their versions), stat'ed
    again locally (what is decoded is recorded)."""
    from .pipeline import stat_images

    if is_url(plan.dataset):
        wanted = set(plan.todo)
        return [image for image in plan.images if image.name in wanted]
    return stat_images(plan.dataset, plan.todo)


def shard_slices(names: Sequence[str], size: int) -> list[list[str]]:
    """``names`` sorted and cut into consecutive slices of at most ``size`` (a whole number, 1 or more)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ClearCLIPError(f"shard_size must be a whole number, 1 or more (got {size!r})")
    names = sorted(names)
    return [names[start : start + size] for start in range(0, len(names), size)]
