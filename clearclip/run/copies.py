"""Local copies of a run on object storage, for the commands that read local files: FiftyOne's open-source App
serves media from disk, and refilter links label maps.

``local_copy`` fetches a finished run's public files (``annotations.json``, ``run.json``, ``config.json``,
``review.json``, ``labels/``) and, for review, the dataset's images it names, into the media cache
``$CLEARCLIP_CACHE_DIR/runs/<hash of the URL>/`` in concurrent batches. A file is fetched again only when its
object changed (its ETag, kept in ``fetched.json`` once a batch is complete, so a killed fetch redoes only
that batch). The copy's ``run.json`` points at the copied images. ``published`` and ``upload_tree`` send
what a command wrote locally (an export, a refiltered run, review.json) to object storage.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..annotations.coco import iter_coco_images
from ..errors import ClearCLIPError
from ..io.atomic import write_json
from ..io.cache import default_cache_dir
from ..io.storage import ObjectInfo, ObjectStorage, open_storage
from .folder import RunFolder
from .paths import checked_name

RUN_FILES = ("annotations.json", "run.json", "config.json", "review.json")
BATCH = 256  # objects per concurrent fetch; the index is saved after each


@dataclass
class CopyReport:
    """Where a local copy is and what filling it took."""

    path: Path
    fetched: int = 0
    reused: int = 0
    bytes: int = 0

    def line(self) -> str:
        return (f"media cache {self.path}: {self.fetched + self.reused} files, {self.bytes / 1e6:.1f} MB "
                f"({self.fetched} fetched, {self.reused} reused)")


def copy_dir(url: str) -> Path:
    """The media-cache folder of the run at ``url``."""
    return default_cache_dir() / "runs" / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


def _index(target: Path) -> dict:
    """What ``fetched.json`` says was fetched into ``target`` (relative path: ETag); empty when unreadable."""
    try:
        return json.loads((target / "fetched.json").read_text())
    except (OSError, ValueError):
        return {}


def _fetch(storage: ObjectStorage, wanted: dict[str, ObjectInfo], target: Path, index: dict, report: CopyReport,
           progress: Callable[[int], None]) -> None:
    """Fetch the objects ``wanted`` (key: listing) into ``target/<key>``, unless ``index`` has the file at that
    ETag. Index keys are paths relative to the copy; a key that would lead out of ``target`` is refused."""
    for key in wanted:
        checked_name(key, storage.url)

    def indexed(key: str) -> str:
        return (target / key).relative_to(report.path).as_posix()

    stale = [key for key, info in wanted.items() if index.get(indexed(key)) != info.etag or not (target / key).is_file()]
    report.reused += len(wanted) - len(stale)
    report.bytes += sum(info.size for info in wanted.values())
    for start in range(0, len(stale), BATCH):
        batch = stale[start : start + BATCH]
        for key in batch:
            (target / key).parent.mkdir(parents=True, exist_ok=True)
        try:
            storage.download(batch, [target / key for key in batch])
        except FileNotFoundError as error:
            raise ClearCLIPError(f"an object of {storage.url} went away while it was fetched ({error}); run the "
                                 "command again") from error
        index.update({indexed(key): wanted[key].etag for key in batch})
        write_json(report.path / "fetched.json", index)
        report.fetched += len(batch)
        progress(len(batch))


def local_copy(url: str, options: dict | None = None, images: bool = True) -> CopyReport:
    """A local copy of the finished run at ``url`` (see the module docstring); ``images``: the dataset's images
    too (review needs them; refilter does not). Raises ClearCLIPError when ``url`` holds no finished run."""
    from tqdm import tqdm

    folder = RunFolder(url, options)
    summary = folder.read_summary()
    target = copy_dir(url)
    run = target / "run"
    run.mkdir(parents=True, exist_ok=True)
    index = _index(target)
    report = CopyReport(target)
    listed = folder.store.list("labels")
    listed.update({key: info for key in RUN_FILES if (info := folder.store.info(key)) is not None})
    with tqdm(total=None, unit="file", desc="fetching the run", dynamic_ncols=True, leave=False) as bar:
        _fetch(folder.store, listed, run, index, report, bar.update)
        if "review.json" not in listed:  # none saved with the run (any here is of an older copy)
            (run / "review.json").unlink(missing_ok=True)
        for stale in {p.relative_to(run).as_posix() for p in (run / "labels").rglob("*.png")} - set(listed):
            (run / stale).unlink()
        if images:
            dataset = str(summary["dataset"])
            names = {checked_name(image["file_name"], folder.annotations_path)
                     for image, _ in iter_coco_images(run / "annotations.json")}
            source = open_storage(dataset, options)
            if not isinstance(source, ObjectStorage):
                raise ClearCLIPError(f"{url}'s dataset {dataset} is not on object storage; review it where that "
                                     "folder is")
            found = {k: v for k, v in source.list("").items() if k in names}
            missing = sorted(names - set(found))
            if missing:
                raise ClearCLIPError(f"{len(missing)} images of {url} are gone from {dataset} (first: {missing[0]}); "
                                     "label again to drop them")
            _fetch(source, found, target / "images", index, report, bar.update)
            write_json(run / "run.json", {**summary, "dataset": str(target / "images"), "copied_from": url}, indent=2)
    return report


def fetched(url: str, options: dict | None = None) -> Path:
    """A local copy of the object or the prefix (every object below it) at ``url``, in the media cache, fetched
    again only where ETags changed: for inputs read as local files (``review --gt``)."""
    target = copy_dir(url)
    report = CopyReport(target)
    index = _index(target)
    parent_url, _, name = url.rstrip("/").rpartition("/")
    parent = open_storage(parent_url, options)
    if (single := parent.info(name)) is not None:
        _fetch(parent, {name: single}, target, index, report, lambda _: None)
        return target / name
    storage = open_storage(url, options)
    if not (listed := storage.list("")):
        raise ClearCLIPError(f"nothing at {url}")
    _fetch(storage, listed, target / name, index, report, lambda _: None)
    return target / name


@contextmanager
def published(url: str, options: dict | None = None) -> Iterator[Path]:
    """A local path named like ``url``'s last part, in a new temp folder (nothing there yet); what the block
    writes there, a file or a folder, is uploaded to ``url`` when it ends without an error."""
    with tempfile.TemporaryDirectory(prefix="clearclip-publish-") as folder:
        path = Path(folder) / url.rstrip("/").rsplit("/", 1)[-1]
        yield path
        upload_tree(path, url, options)


def occupied(url: str, options: dict | None = None) -> bool:
    """Whether an object is at ``url`` or below it."""
    storage = open_storage(url, options)
    return storage.info("") is not None or bool(storage.list("", hidden=True))


def upload_tree(local: Path, url: str, options: dict | None = None) -> int:
    """Upload the file ``local`` as the object ``url``, or every file under the folder ``local`` below ``url``
    (each object whole); returns how many. Links are followed (an export links images)."""
    if local.is_file():
        parent, _, name = url.rstrip("/").rpartition("/")
        storage = open_storage(parent, options)
        storage.upload([local], [name])
        return 1
    storage = open_storage(url, options)
    files = sorted(p for p in local.rglob("*") if p.is_file())
    storage.upload(files, [p.relative_to(local).as_posix() for p in files])
    return len(files)
