"""The run folder: the one module that knows its layout.

    RUN_DIR/
      annotations.json        COCO, written by the merge (public)
      run.json                counts, failures, timings (public)
      labels/<name>.png       label map per image, <name> = relative path without extension (public)
      config.json             what the run computes; a run folder takes one
      records/<file>.json     one image: a header line, then one COCO annotation a line (no ids)
      manifests/<key>.json    the files of one shard; <key> is a hash of its sorted names
      shards/<key>.json       a finished shard's counts
      progress/<key>.json     how far a running shard is
      precision.json          the precision the first labeler computed in (``auto`` differs per machine)
      .clearclip-run, .lock   marker (listings skip run folders), lock file

An image is done when its record's header says so, matches the image's size and modification time,
and its label map exists: checking costs a stat and one short read, never a parse of its masks.
A record is written after the label map, so a killed writer leaves the image undone, never half done.

On object storage (``RUN_DIR`` an fsspec URL) the layout is the same; the folder is held by lease objects
(``run.lease``) instead of ``fcntl``, and whether images are done is read off two listings (``records/``,
``labels/``): an image is done when both exist and the record is no older than the image. A failure record
deletes the image's label map first, so a failed image is never taken for done; the merge, which reads every
record, still checks the header against the image (size, ETag) and relabels what does not match.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path, PurePosixPath

from ..annotations.record import Annotation
from ..errors import ClearCLIPError, EnvironmentFailure, one_line
from ..io.atomic import TEMP_SUFFIX
from ..io.images import ImageFile
from ..io.label_png import png_size
from ..io.storage import Storage, open_storage
from . import lease
from .paths import checked_name, contained

DONE, FAILED, TODO = "done", "failed", "todo"
RUN_MARKER = ".clearclip-run"  # a file in every run folder, so a listing never labels a run's own outputs
HEADER_LIMIT = 1 << 16  # a header line is a few hundred bytes; anything longer is not one


def label_map_name(name: str) -> str:
    """The label map of image ``name`` relative to ``labels/``: the relative path without extension, ``.png``."""
    return PurePosixPath(name).with_suffix(".png").as_posix()


def manifest_key(names: Iterable[str]) -> str:
    """The identity of a shard: a hash of its sorted file names."""
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(name.encode("utf-8") + b"\n")
    return digest.hexdigest()[:20]


class RunFolder:
    """Paths and records of one labeling run: a local folder, or a prefix of object storage (an fsspec URL;
    ``options`` are the filesystem's non-secret options). Locations are Paths locally, URLs otherwise."""

    def __init__(self, root: str | Path, options: dict | None = None) -> None:
        self.store: Storage = open_storage(root, options)
        self.root: Path | str = self.store.root
        self.remote = self.store.remote

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RunFolder) and str(self.root) == str(other.root)

    def __hash__(self) -> int:
        return hash(str(self.root))

    def __reduce__(self):  # helper processes and Prefect get the location and options, never a live client
        return RunFolder, (self.root, getattr(self.store, "options", None))

    # ------------------------------------------------------------------------------------------ paths
    def location(self, key: str) -> Path | str:
        return self.store.location(key)

    def _key(self, location: Path | str) -> str:
        """The key of a location of this folder (the inverse of ``location``)."""
        text, root = str(location), str(self.root)
        if not text.startswith(root + "/"):
            raise ClearCLIPError(f"{location} is not in the run folder {root}")
        return text[len(root) + 1:]

    @property
    def annotations_path(self) -> Path | str:
        return self.location("annotations.json")

    @property
    def summary_path(self) -> Path | str:
        return self.location("run.json")

    @property
    def config_path(self) -> Path | str:
        return self.location("config.json")

    @property
    def decisions_path(self) -> Path | str:
        """A review's decisions (``clearclip.review.decisions``), kept with the run and carried by refilter."""
        return self.location("review.json")

    def inside(self, path: Path | str) -> Path | str:
        """``path`` if writing or deleting it stays inside the run folder (see ``paths.contained``); object
        storage has no links, and its keys come from names the path gate checked."""
        return path if self.remote else contained(self.root, path)

    def write(self, location: Path | str, data: bytes) -> None:
        """Write a file of the folder whole (atomically), through the path gate."""
        self.store.write_bytes(self._key(self.inside(location)), data)

    def write_json(self, location: Path | str, data, indent: int | None = None) -> None:
        self.write(location, json.dumps(data, indent=indent, ensure_ascii=False).encode("utf-8"))

    def delete(self, location: Path | str) -> None:
        self.store.delete(self._key(self.inside(location)))

    @contextmanager
    def written_through(self, location: Path | str) -> Iterator[Path]:
        """A local path whose file becomes ``location`` when the block ends without an error: locally the
        location itself (the writer writes it atomically), on object storage a temp file uploaded whole."""
        if not self.remote:
            yield Path(self.inside(location))
            return
        with self.store.writing(self._key(location)) as path:
            yield path

    def exists(self, location: Path | str) -> bool:
        return self.store.info(self._key(location)) is not None

    def read_summary(self) -> dict:
        """``run.json`` of a finished run; ClearCLIPError saying what to do when it is missing or not a summary."""
        try:
            summary = json.loads(self.store.read_bytes("run.json").decode("utf-8"))
        except FileNotFoundError as error:
            raise ClearCLIPError(f"{self.root} is not a finished run (no run.json); run clearclip label first") from error
        except (OSError, ValueError) as error:
            raise ClearCLIPError(f"{self.summary_path} is not a clearclip run summary ({error}); rerun clearclip label "
                                 "into this folder to rewrite it") from error
        if not isinstance(summary, dict) or not isinstance(summary.get("dataset"), str):
            raise ClearCLIPError(f"{self.summary_path} is not a clearclip run summary; rerun clearclip label into "
                                 "this folder to rewrite it")
        if not self.exists(self.annotations_path):
            raise ClearCLIPError(f"{self.root} is not a finished run (no annotations.json); run clearclip label first")
        return summary

    def mark(self) -> None:
        """Create the folder with its marker (listings skip marked folders)."""
        if self.remote:
            if self.store.info(RUN_MARKER) is None:
                self.store.write_bytes(RUN_MARKER, b"")
            return
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / RUN_MARKER).touch()

    @property
    def labels_dir(self) -> Path | str:
        return self.location("labels")

    @property
    def manifests_dir(self) -> Path | str:
        return self.location("manifests")

    def record_path(self, name: str) -> Path | str:
        return self.location(f"records/{name}.json")

    def label_path(self, name: str) -> Path | str:
        """``labels/<relative path without extension>.png``."""
        return self.location(f"labels/{label_map_name(name)}")

    def manifest_path(self, key: str) -> Path | str:
        return self.location(f"manifests/{key}.json")

    def shard_marker_path(self, key: str) -> Path | str:
        return self.location(f"shards/{key}.json")

    def progress_path(self, key: str) -> Path | str:
        return self.location(f"progress/{key}.json")

    # ------------------------------------------------------------------------------------------ set-up
    def read_config(self) -> dict | None:
        """The stored ``config.json``, None when absent; ClearCLIPError when it is not a run config."""
        try:
            data = json.loads(self.store.read_bytes("config.json").decode("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise ClearCLIPError(f"{self.config_path} is not a clearclip run config ({error}); delete it to start "
                                 "this run over, or choose another --out") from error
        if not isinstance(data, dict) or "vocabulary" not in data:
            raise ClearCLIPError(f"{self.config_path} is not a clearclip run config; delete it to start this run "
                                 "over, or choose another --out")
        return data

    def has_records(self) -> bool:
        if self.remote:
            return bool(self.store.list("records"))
        records = self.root / "records"
        return records.is_dir() and any(records.iterdir())

    def prepare(self, info: dict) -> None:
        """Create the folder and record what it computes; refuse results of other settings.

        Call only with validated settings: a folder without records takes new settings.
        """
        existing = self.read_config()
        if existing is not None and existing != info and self.has_records():
            changed = sorted(k for k in set(existing) | set(info) if existing.get(k) != info.get(k))
            raise ClearCLIPError(
                f"{self.root} holds results made with other settings ({', '.join(changed)} differ); use a new --out "
                f"folder for these settings, or delete {self.root} to start over"
            )
        self.mark()
        if existing != info:
            self.write_json(self.config_path, info, indent=2)

    @contextmanager
    def lock(self, exclusive: bool) -> Iterator[None]:
        """Hold the run folder: exclusive for a whole ``clearclip label`` run, shared for each shard run.

        Raises EnvironmentFailure at once when another process holds it the other way.
        """
        if self.remote:
            with lease.held(self.store, exclusive, _holder("clearclip label" if exclusive else "a shard run")):
                yield
            return
        self._make_root()
        with open(self.root / ".lock", "a+b") as handle:
            try:
                fcntl.flock(handle, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except BlockingIOError as error:
                raise EnvironmentFailure(
                    f"{self.root} is in use by another clearclip run; wait for it to finish, or label into another --out"
                ) from error
            yield

    def _make_root(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise ClearCLIPError(f"the run folder {self.root} is a file; give --out a folder (new or a run's)")
        self.root.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def orchestrated(self, owner: str) -> Iterator[None]:
        """Hold the folder for one orchestrating run (a ``label-dataset`` parent) from plan to merge; its shards
        take the shared lock meanwhile. A second parent is refused at once, naming ``owner`` of the first.
        The hold ends with the holder's process, so the parent of a rerun after a crash is not refused (on
        object storage: its lease expires, ``run.lease``)."""
        if self.remote:
            with lease.orchestrating(self.store, owner):
                yield
            return
        self._make_root()
        path = self.inside(self.root / ".orchestrator.lock")
        with open(path, "a+b") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as error:
                handle.seek(0)
                holder = handle.read().decode("utf-8", "replace").strip() or "another run"
                raise EnvironmentFailure(f"{self.root} is being labeled by {one_line(holder)}; wait for it to finish, "
                                         "or label into another out") from error
            handle.truncate(0)
            handle.write(owner.encode())
            handle.flush()
            yield

    @contextmanager
    def exclusive_if_free(self) -> Iterator[bool]:
        """Hold the folder exclusively if no labeler holds it; yields whether it does. Only taking the lock
        is guarded: an EnvironmentFailure raised by the body propagates."""
        with ExitStack() as stack:
            try:
                stack.enter_context(self.lock(exclusive=True))
                free = True
            except EnvironmentFailure:
                free = False
            yield free

    def remove_temp_files(self) -> int:
        """Delete what killed writers left (``.*.tmp``); only while holding the folder exclusively. Object
        storage has none: an upload that never completed leaves no object."""
        if self.remote:
            return 0
        removed = 0
        for path in self.root.rglob(f".*{TEMP_SUFFIX}"):
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def claim_precision(self, precision: str, threads: int | None = None) -> None:
        """Record how the first labeler computes: its precision and, on the CPU, its intra-op threads (they change
        the order of sums, so the last bits of scores and, at region edges, areas). Refuse a labeler that would
        compute otherwise, so one folder never mixes results. An unreadable record counts as none."""
        wanted = {"precision": precision, **({"threads": threads} if threads else {})}
        key = self._key(self.inside(self.location("precision.json")))
        if not self.store.create(key, json.dumps(wanted).encode()) and self._claim() is None:
            self.write_json(self.location(key), wanted)
        claimed = self._claim() or wanted
        if claimed["precision"] != precision:
            raise ClearCLIPError(
                f"{self.root} holds results computed in {claimed['precision']}, and this labeler computes in "
                f"{precision}; pass --precision {claimed['precision']} (or run on a machine that does), or label "
                "into a new --out"
            )
        if threads and claimed.get("threads", threads) != threads:
            raise ClearCLIPError(
                f"{self.root} holds results computed with {claimed['threads']} CPU threads, and this labeler uses "
                f"{threads} (the results would differ in their last digits); pass --threads {claimed['threads']}, "
                "or label into a new --out"
            )

    def claimed_precision(self) -> str | None:
        """The precision the run's results were computed in, None when none is recorded."""
        claim = self._claim()
        return claim["precision"] if claim else None

    def _claim(self) -> dict | None:
        claim = self.read_json(self.location("precision.json"))
        if not isinstance(claim, dict) or not isinstance(claim.get("precision"), str):
            return None
        if not isinstance(claim.get("threads", 1), int) or isinstance(claim.get("threads"), bool):
            return None
        return claim

    # ------------------------------------------------------------------------------------------ records
    def read_header(self, name: str) -> dict | None:
        """The header line of an image's record, or None when there is no readable, well-formed one."""
        try:
            header = json.loads(self.store.read_line(f"records/{name}.json", HEADER_LIMIT))
        except (OSError, ValueError):
            return None
        return header if _well_formed(header, name) else None

    def parse_record(self, name: str, data: bytes) -> tuple[dict | None, list[str]]:
        """A record's header (None when it is not well formed) and its annotation lines."""
        head, _, rest = data.partition(b"\n")
        try:
            header = json.loads(head[:HEADER_LIMIT])
        except ValueError:
            return None, []
        lines = [line for line in rest.decode("utf-8", "replace").split("\n") if line.strip()]
        return (header if _well_formed(header, name) else None), lines

    def state(self, image: ImageFile, header: dict | None = None, labels: dict | None = None) -> str:
        """DONE, FAILED (retried by every run) or TODO (no record, a stale or malformed one, or no label map of
        the image's size). Costs a stat and two short reads; ``labels`` (a listing of ``labels/``, object
        storage) replaces the label map's read."""
        header = header if header is not None else self.read_header(image.name)
        if header is None or header.get("size") != image.size or not _same_version(header, image):
            return TODO
        if header["status"] == FAILED:
            return FAILED
        if labels is not None:
            return DONE if f"labels/{label_map_name(image.name)}" in labels else TODO
        return DONE if png_size(self.label_path(image.name)) == (header["width"], header["height"]) else TODO

    def pending(self, images: Sequence[ImageFile]) -> list[ImageFile]:
        """The ``images`` that are not done (in order). Locally ``state`` per image; on object storage two
        listings: done when the record is newer than the image and the label map exists. Listings give times
        to the second, so records of their image's own second are read (``read_many``: their headers name the
        version)."""
        if not self.remote:
            return [image for image in images if self.state(image) != DONE]
        records, labels = self.store.list("records"), self.store.list("labels")
        todo, same_second = set(), []
        for image in images:
            record = records.get(f"records/{image.name}.json")
            if record is None or f"labels/{label_map_name(image.name)}" not in labels \
                    or record.mtime_ns // 10**9 < image.mtime_ns // 10**9:
                todo.add(image.name)
            elif record.mtime_ns // 10**9 == image.mtime_ns // 10**9:
                same_second.append(image)
        found = self.store.read_many(f"records/{image.name}.json" for image in same_second)
        for image in same_second:
            data = found[f"records/{image.name}.json"]
            header = self.parse_record(image.name, data)[0] if data is not None else None
            if header is None or self.state(image, header, labels) != DONE:
                todo.add(image.name)
        return [image for image in images if image.name in todo]

    def listed_labels(self) -> dict | None:
        """The listing of ``labels/`` on object storage (for ``state``); None locally."""
        return self.store.list("labels") if self.remote else None

    def verified_lines(self, name: str, header: dict, category_ids: set[int], lines: list[str] | None = None) -> list[str]:
        """The stored annotations of a done image (one JSON object a line, without ``id`` and ``image_id``), each
        parsed and checked against the image (known category, RLE of the image's size, box and area inside it,
        score in [0, 1]) and the header's counts. ``lines``: the record's lines, read already. Raises ValueError
        saying what is wrong."""
        width, height = header["width"], header["height"]
        if lines is None:
            lines = self.parse_record(name, self.store.read_bytes(f"records/{name}.json"))[1]
        counts: dict[str, int] = {}
        for number, line in enumerate(lines, start=2):
            try:
                annotation = Annotation.from_dict(json.loads(line))
                annotation.check(width, height, category_ids)
            except ValueError as error:
                raise ValueError(f"line {number}: {error}") from None
            counts[str(annotation.category_id)] = counts.get(str(annotation.category_id), 0) + 1
        if counts != {k: v for k, v in header["per_category"].items() if v}:
            raise ValueError(f"its header counts {header['per_category']} annotations, its lines {counts}")
        return lines

    def write_label(self, name: str, png: bytes) -> int:
        """Write an image's label map (before its record); returns its size."""
        self.write(self.label_path(name), png)
        return len(png)

    def write_record(self, image: ImageFile, width: int, height: int, annotation_lines: list[str],
                     category_ids: list[int], precision: str) -> int:
        """Commit a labeled image (its label map must already be written): its annotations, one JSON object a
        line, and the category id of each. Returns the record's size."""
        per_category: dict[str, int] = {}
        for category_id in category_ids:
            key = str(category_id)
            per_category[key] = per_category.get(key, 0) + 1
        header = {"file": image.name, "size": image.size, "mtime_ns": image.mtime_ns, **_etag(image), "status": DONE,
                  "width": int(width), "height": int(height), "precision": precision, "per_category": per_category}
        data = ("\n".join([json.dumps(header, ensure_ascii=False), *annotation_lines]) + "\n").encode("utf-8")
        self.write(self.record_path(image.name), data)
        return len(data)

    def write_failure(self, image: ImageFile, error: str) -> int:
        """Record that an image failed; returns how many attempts have failed so far. On object storage the
        label map of an earlier version goes first (done is read off listings there)."""
        previous = self.read_header(image.name)
        attempts = int(previous.get("attempts", 0)) + 1 if previous and previous["status"] == FAILED else 1
        header = {"file": image.name, "size": image.size, "mtime_ns": image.mtime_ns, **_etag(image),
                  "status": FAILED, "error": error, "attempts": attempts}
        if self.remote:
            self.delete(self.label_path(image.name))
        self.write(self.record_path(image.name), (json.dumps(header, ensure_ascii=False) + "\n").encode("utf-8"))
        return attempts

    def forget_record(self, name: str) -> None:
        """Delete an image's record, so that the next run labels it again."""
        self.delete(self.record_path(name))

    def remove(self, name: str) -> None:
        """Forget an image: its record and its label map."""
        record, label = self.inside(self.record_path(name)), self.inside(self.label_path(name))  # both, then delete
        self.delete(record)
        self.delete(label)

    def recorded_names(self) -> Iterator[str]:
        """Names of every image that has a record (any state), in no particular order."""
        if self.remote:
            yield from (key[len("records/") : -len(".json")] for key in self.store.list("records")
                        if key.endswith(".json"))
            return
        records = self.root / "records"
        for directory, _, files in os.walk(records):
            for file in files:
                if file.endswith(".json") and not file.startswith("."):
                    yield (Path(directory) / file).relative_to(records).as_posix()[: -len(".json")]

    def split_collisions(self, images: list[ImageFile]) -> tuple[list[ImageFile], list[dict]]:
        """Images whose label map path is free, and a problem for each later one that would share it.

        ``a.jpg`` and ``a.png`` in one folder would share ``labels/a.png``: the first in sorted order is
        labeled, the other reported with what to do.
        """
        owner: dict[Path | str, str] = {}
        kept, problems = [], []
        for image in images:
            target = self.label_path(image.name)
            if target in owner:
                problems.append({"file": image.name, "error": f"its label map {_basename(target)} would overwrite that of "
                                                              f"{owner[target]}; rename one of them"})
                continue
            owner[target] = image.name
            kept.append(image)
        return kept, problems

    # ------------------------------------------------------------------------------------------ shards
    def write_manifest(self, names: list[str]) -> Path | str:
        """Write a shard's file list (always: a file found there is never trusted); returns its location, named
        by the content's key."""
        location = self.manifest_path(manifest_key(names))
        self.write_json(location, {"files": sorted(names)})
        return location

    def read_manifest(self, path: str | Path) -> list[str]:
        """The names of a shard manifest of this run folder, each checked by the path gate (and the set against
        the manifest's key). Raises ClearCLIPError naming the manifest: an EnvironmentFailure when it cannot be
        read (the file system may serve it on another try)."""
        stem = _basename(path).removesuffix(".json")
        if self.remote:
            inside = str(path) == str(self.manifest_path(stem))
        else:
            inside = Path(path).parent.resolve() == Path(self.manifests_dir).resolve()
        if not inside:
            raise ClearCLIPError(f"shard manifest {path} is not in {self.manifests_dir}; a shard reads only "
                                 "manifests its run wrote")
        try:
            text = self.store.read_bytes(f"manifests/{_basename(path)}").decode("utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise EnvironmentFailure(f"cannot read shard manifest {path}: {error}") from error
        try:
            names = [checked_name(name, path) for name in json.loads(text)["files"]]
        except (ValueError, KeyError, TypeError) as error:
            raise ClearCLIPError(f"cannot read shard manifest {path}: {error}") from error
        if manifest_key(names) != stem:
            raise ClearCLIPError(f"shard manifest {path} does not hold the files its name says; it was altered")
        return names

    def check_config(self, info: dict) -> None:
        """Refuse to write into a folder whose ``config.json`` is not ``info``: a shard must compute what its
        run computes. Raises ClearCLIPError naming what differs."""
        stored = self.read_config()
        if stored is None:
            raise ClearCLIPError(f"{self.config_path} is missing; a shard labels only into a folder its run prepared")
        if stored != info:
            changed = sorted(k for k in set(stored) | set(info) if stored.get(k) != info.get(k))
            raise ClearCLIPError(f"this shard's job differs from {self.config_path} ({', '.join(changed)} differ); "
                                 "it wrote nothing. Start the run again so its shards get the run's job")

    def read_json(self, location: Path | str) -> dict | None:
        """A JSON file of the folder, None when it is missing or not JSON."""
        try:
            return json.loads(self.store.read_bytes(self._key(location)).decode("utf-8"))
        except (OSError, ValueError):
            return None


def _holder(what: str) -> str:
    return f"{what} (pid {os.getpid()} on {lease.HOST})"


def _basename(location: Path | str) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def _etag(image: ImageFile) -> dict:
    """The header's ``etag`` of an image on object storage; nothing for a local file (records as before)."""
    return {"etag": image.etag} if image.etag else {}


def _same_version(header: dict, image: ImageFile) -> bool:
    """Whether a record's header was written for this version of the image: its modification time locally,
    its ETag on object storage (listings give modification times to the second only)."""
    if image.etag:
        return header.get("etag") == image.etag
    return header.get("mtime_ns") == image.mtime_ns


def _whole(value, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _well_formed(header, name: str) -> bool:
    """Whether a record header is one ``write_record`` or ``write_failure`` writes for image ``name``."""
    if not isinstance(header, dict) or header.get("file") != name or not _whole(header.get("size"), -1) \
            or not isinstance(header.get("mtime_ns"), int):
        return False
    if header.get("status") == FAILED:
        return isinstance(header.get("error"), str) and _whole(header.get("attempts"), 1)
    counts = header.get("per_category")
    return (header.get("status") == DONE and _whole(header.get("width"), 1) and _whole(header.get("height"), 1)
            and isinstance(counts, dict) and all(isinstance(k, str) and _whole(v) for k, v in counts.items()))


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
