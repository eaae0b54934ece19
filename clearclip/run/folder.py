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
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..annotations.record import Annotation
from ..errors import ClearCLIPError, EnvironmentFailure, one_line
from ..io.atomic import TEMP_SUFFIX, create_text, write_json, write_text
from ..io.images import ImageFile
from ..io.label_png import png_size
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


@dataclass(frozen=True)
class RunFolder:
    """Paths and records of one labeling run."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    # ------------------------------------------------------------------------------------------ paths
    @property
    def annotations_path(self) -> Path:
        return self.root / "annotations.json"

    @property
    def summary_path(self) -> Path:
        return self.root / "run.json"

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    @property
    def decisions_path(self) -> Path:
        """A review's decisions (``clearclip.review.decisions``), kept with the run and carried by refilter."""
        return self.root / "review.json"

    def inside(self, path: Path) -> Path:
        """``path`` if writing or deleting it stays inside the run folder (see ``paths.contained``)."""
        return contained(self.root, path)

    def read_summary(self) -> dict:
        """``run.json`` of a finished run; ClearCLIPError saying what to do when it is missing or not a summary."""
        try:
            summary = json.loads(self.summary_path.read_text(encoding="utf-8"))
        except FileNotFoundError as error:
            raise ClearCLIPError(f"{self.root} is not a finished run (no run.json); run clearclip label first") from error
        except (OSError, ValueError) as error:
            raise ClearCLIPError(f"{self.summary_path} is not a clearclip run summary ({error}); rerun clearclip label "
                                 "into this folder to rewrite it") from error
        if not isinstance(summary, dict) or not isinstance(summary.get("dataset"), str):
            raise ClearCLIPError(f"{self.summary_path} is not a clearclip run summary; rerun clearclip label into "
                                 "this folder to rewrite it")
        if not self.annotations_path.is_file():
            raise ClearCLIPError(f"{self.root} is not a finished run (no annotations.json); run clearclip label first")
        return summary

    def mark(self) -> None:
        """Create the folder with its marker (listings skip marked folders)."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / RUN_MARKER).touch()

    @property
    def labels_dir(self) -> Path:
        return self.root / "labels"

    @property
    def manifests_dir(self) -> Path:
        return self.root / "manifests"

    def record_path(self, name: str) -> Path:
        return self.root / "records" / f"{name}.json"

    def label_path(self, name: str) -> Path:
        """``labels/<relative path without extension>.png``."""
        return self.labels_dir / label_map_name(name)

    def manifest_path(self, key: str) -> Path:
        return self.manifests_dir / f"{key}.json"

    def shard_marker_path(self, key: str) -> Path:
        return self.root / "shards" / f"{key}.json"

    def progress_path(self, key: str) -> Path:
        return self.root / "progress" / f"{key}.json"

    # ------------------------------------------------------------------------------------------ set-up
    def read_config(self) -> dict | None:
        """The stored ``config.json``, None when absent; ClearCLIPError when it is not a run config."""
        try:
            data = json.loads(self.config_path.read_text(encoding="utf-8"))
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
            write_json(self.config_path, info, indent=2)

    @contextmanager
    def lock(self, exclusive: bool) -> Iterator[None]:
        """Hold the run folder: exclusive for a whole ``clearclip label`` run, shared for each shard run.

        Raises EnvironmentFailure at once when another process holds it the other way.
        """
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
        The hold ends with the holder's process, so the parent of a rerun after a crash is not refused."""
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
        """Delete what killed writers left (``.*.tmp``); only while holding the folder exclusively."""
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
        path = self.inside(self.root / "precision.json")
        if not create_text(path, json.dumps(wanted)) and self._claim() is None:
            write_json(path, wanted)
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
        claim = self.read_json(self.root / "precision.json")
        if not isinstance(claim, dict) or not isinstance(claim.get("precision"), str):
            return None
        if not isinstance(claim.get("threads", 1), int) or isinstance(claim.get("threads"), bool):
            return None
        return claim

    # ------------------------------------------------------------------------------------------ records
    def read_header(self, name: str) -> dict | None:
        """The header line of an image's record, or None when there is no readable, well-formed one."""
        try:
            with open(self.record_path(name), "rb") as f:
                header = json.loads(f.readline(HEADER_LIMIT))
        except (OSError, ValueError):
            return None
        return header if _well_formed(header, name) else None

    def state(self, image: ImageFile, header: dict | None = None) -> str:
        """DONE, FAILED (retried by every run) or TODO (no record, a stale or malformed one, or no label map of
        the image's size). Costs a stat and two short reads."""
        header = header if header is not None else self.read_header(image.name)
        if header is None or header.get("size") != image.size or header.get("mtime_ns") != image.mtime_ns:
            return TODO
        if header["status"] == FAILED:
            return FAILED
        return DONE if png_size(self.label_path(image.name)) == (header["width"], header["height"]) else TODO

    def verified_lines(self, name: str, header: dict, category_ids: set[int]) -> list[str]:
        """The stored annotations of a done image (one JSON object a line, without ``id`` and ``image_id``), each
        parsed and checked against the image (known category, RLE of the image's size, box and area inside it,
        score in [0, 1]) and the header's counts. Raises ValueError saying what is wrong."""
        width, height = header["width"], header["height"]
        with open(self.record_path(name), "rb") as f:
            f.readline()
            lines = [line.decode("utf-8").rstrip("\n") for line in f if line.strip()]
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

    def write_record(self, image: ImageFile, width: int, height: int, annotation_lines: list[str],
                     category_ids: list[int], precision: str) -> None:
        """Commit a labeled image (its label map must already be written): its annotations, one JSON object a
        line, and the category id of each."""
        per_category: dict[str, int] = {}
        for category_id in category_ids:
            key = str(category_id)
            per_category[key] = per_category.get(key, 0) + 1
        header = {"file": image.name, "size": image.size, "mtime_ns": image.mtime_ns, "status": DONE,
                  "width": int(width), "height": int(height), "precision": precision, "per_category": per_category}
        lines = [json.dumps(header, ensure_ascii=False), *annotation_lines]
        write_text(self.inside(self.record_path(image.name)), "\n".join(lines) + "\n")

    def write_failure(self, image: ImageFile, error: str) -> int:
        """Record that an image failed; returns how many attempts have failed so far."""
        previous = self.read_header(image.name)
        attempts = int(previous.get("attempts", 0)) + 1 if previous and previous["status"] == FAILED else 1
        header = {"file": image.name, "size": image.size, "mtime_ns": image.mtime_ns, "status": FAILED,
                  "error": error, "attempts": attempts}
        write_text(self.inside(self.record_path(image.name)), json.dumps(header, ensure_ascii=False) + "\n")
        return attempts

    def forget_record(self, name: str) -> None:
        """Delete an image's record, so that the next run labels it again."""
        self.inside(self.record_path(name)).unlink(missing_ok=True)

    def remove(self, name: str) -> None:
        """Forget an image: its record and its label map."""
        record, label = self.inside(self.record_path(name)), self.inside(self.label_path(name))  # both, then delete
        record.unlink(missing_ok=True)
        label.unlink(missing_ok=True)

    def recorded_names(self) -> Iterator[str]:
        """Names of every image that has a record (any state), in no particular order."""
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
        owner: dict[Path, str] = {}
        kept, problems = [], []
        for image in images:
            target = self.label_path(image.name)
            if target in owner:
                problems.append({"file": image.name, "error": f"its label map {target.name} would overwrite that of "
                                                              f"{owner[target]}; rename one of them"})
                continue
            owner[target] = image.name
            kept.append(image)
        return kept, problems

    # ------------------------------------------------------------------------------------------ shards
    def write_manifest(self, names: list[str]) -> Path:
        """Write a shard's file list (always: a file found there is never trusted); returns its path, named by
        the content's key."""
        path = self.inside(self.manifest_path(manifest_key(names)))
        write_json(path, {"files": sorted(names)})
        return path

    def read_manifest(self, path: str | Path) -> list[str]:
        """The names of a shard manifest of this run folder, each checked by the path gate (and the set against
        the manifest's key). Raises ClearCLIPError naming the manifest: an EnvironmentFailure when it cannot be
        read (the file system may serve it on another try)."""
        path = Path(path)
        if path.parent.resolve() != self.manifests_dir.resolve():
            raise ClearCLIPError(f"shard manifest {path} is not in {self.manifests_dir}; a shard reads only "
                                 "manifests its run wrote")
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise EnvironmentFailure(f"cannot read shard manifest {path}: {error}") from error
        try:
            names = [checked_name(name, path) for name in json.loads(text)["files"]]
        except (ValueError, KeyError, TypeError) as error:
            raise ClearCLIPError(f"cannot read shard manifest {path}: {error}") from error
        if manifest_key(names) != path.stem:
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

    def read_json(self, path: Path) -> dict | None:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None


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
