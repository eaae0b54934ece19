"""Where data lives: a local folder or an fsspec URL (``s3://``, ``gs://``, ``az://``; ``file://`` is a local
folder). One ``Storage`` is a root; everything under it is addressed by a ``/``-separated key.

Every write is whole or absent: locally a temp file renamed into place (``io.atomic``), on object storage one
PUT or one completed multipart upload (an object appears only when its upload completes). Credentials are
never an argument here: fsspec's backends take them from each machine's standard sources (environment,
profiles, instance roles); ``options`` holds only what is not secret (an endpoint URL, a region).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import cache
from pathlib import Path, PurePosixPath

from ..errors import ClearCLIPError, EnvironmentFailure, one_line
from .atomic import atomic_path, create_text, write_bytes

BACKENDS = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"), "gs": ("gcsfs", "gs"), "gcs": ("gcsfs", "gs"),
            "az": ("adlfs", "az"), "abfs": ("adlfs", "az"), "abfss": ("adlfs", "az")}  # scheme: (module, extra)
FETCH_CONCURRENCY = 32  # objects read at once by ``read_many`` (fsspec's async backends run them together)
LIST_CONCURRENCY = 16  # subfolders listed at once (S3)
LIST_SPLIT_LEVELS = 3  # how deep a listing looks for subfolders to list concurrently


def is_url(location: str | Path) -> bool:
    """Whether ``location`` names object storage (``scheme://...``) rather than a local path."""
    return isinstance(location, str) and "://" in location and not location.startswith("file://")


def local_path(location: str | Path) -> Path:
    """A local location as a Path (``file://`` stripped)."""
    text = str(location)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a listing tells of one object: its size, modification time and (object storage) ETag."""

    size: int
    mtime_ns: int
    etag: str = ""


def _filesystem(url: str, options: dict):
    """The fsspec filesystem of ``url``; a missing backend is one ClearCLIPError naming the extra to install."""
    import fsspec

    scheme = url.split("://", 1)[0].lower()
    module, extra = BACKENDS.get(scheme, (None, None))
    try:
        return fsspec.filesystem(scheme, **options)
    except (ImportError, ValueError) as error:
        if module:
            raise ClearCLIPError(f"{url}: reading {scheme}:// needs {module}; pip install 'clearclip[{extra}]'") from error
        raise ClearCLIPError(f"{url}: no fsspec backend for {scheme}:// ({error})") from error


def _modified_ns(info: dict) -> int:
    """An fsspec listing entry's modification time in ns (each backend names it its own way)."""
    value = next((info[k] for k in ("LastModified", "last_modified", "updated", "mtime", "modified") if k in info), 0)
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, datetime):
        return int(value.timestamp()) * 1_000_000_000 + value.microsecond * 1000
    return int(float(value) * 1e9)


def _etag(info: dict) -> str:
    return str(info.get("ETag") or info.get("etag") or info.get("e_tag") or info.get("md5Hash") or "").strip('"')


FAST_OPTIONS = {"client_kwargs", "endpoint_url", "region_name", "anon"}  # what the obstore path understands


class FastS3:
    """The per-object reads, writes and listings of an ``s3://`` prefix through obstore (Rust's object_store:
    about a tenth of botocore's CPU per request, which bounds the merge, the resume check and image fetches).
    Credentials as fsspec gets them: the environment, else botocore's chain (profiles, roles)."""

    def __init__(self, url: str, options: dict) -> None:
        from obstore.store import S3Store

        bucket, _, prefix = url.split("://", 1)[1].partition("/")
        client = dict(options.get("client_kwargs") or {})
        endpoint = client.get("endpoint_url") or options.get("endpoint_url")
        region = client.get("region_name") or options.get("region_name") or os.environ.get("AWS_DEFAULT_REGION")
        config: dict = {"region": region} if region else {}
        if endpoint:
            config.update(endpoint=endpoint, virtual_hosted_style_request=False)
        if options.get("anon"):
            config["skip_signature"] = True
        elif not os.environ.get("AWS_ACCESS_KEY_ID"):
            config["credential_provider"] = _botocore_credentials
        self.store = S3Store(bucket, prefix=prefix or None, client_options={"allow_http": True} if endpoint and
                             endpoint.startswith("http://") else None, **config)

    def read_bytes(self, key: str) -> bytes:
        import obstore

        return bytes(obstore.get(self.store, key).bytes())

    def read_head(self, key: str, limit: int) -> bytes:
        import obstore

        return bytes(obstore.get_range(self.store, key, start=0, length=limit))

    def write_bytes(self, key: str, data: bytes) -> None:
        import obstore

        obstore.put(self.store, key, data)

    def create(self, key: str, data: bytes) -> bool:
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        try:
            obstore.put(self.store, key, data, mode="create")
        except (AlreadyExistsError, PreconditionError):
            return False
        return True

    def delete(self, key: str) -> None:
        import obstore

        obstore.delete(self.store, key)

    def info(self, key: str) -> ObjectInfo | None:
        import obstore

        try:
            entry = obstore.head(self.store, key)
        except FileNotFoundError:
            return None
        return ObjectInfo(int(entry["size"]), _modified_ns(entry), _etag(entry))

    def list(self, prefix: str) -> dict[str, ObjectInfo]:
        """Every object under ``prefix``. A listing is a sequence of 1,000-object pages, so the subfolders are
        listed concurrently: those of ``prefix``, or of its only subfolder (``images/``) down to a few levels."""
        import obstore

        found: dict[str, ObjectInfo] = {}
        folders = [f"{prefix}/" if prefix else ""]
        for _ in range(LIST_SPLIT_LEVELS):
            if len(folders) != 1:
                break
            level = obstore.list_with_delimiter(self.store, folders[0] or None)
            found.update(_infos(o for o in level["objects"] if o["path"] != folders[0].rstrip("/")))  # a marker
            folders = [f"{folder.rstrip('/')}/" for folder in level["common_prefixes"]]
        with ThreadPoolExecutor(LIST_CONCURRENCY, thread_name_prefix="s3-list") as pool:
            for part in pool.map(self._list_below, folders):
                found.update(part)
        return found

    def _list_below(self, folder: str) -> dict[str, ObjectInfo]:
        import obstore

        found: dict[str, ObjectInfo] = {}
        for batch in obstore.list(self.store, folder, chunk_size=1000):
            found.update(_infos(batch))
        return found


def _infos(entries) -> dict[str, ObjectInfo]:
    return {entry["path"]: ObjectInfo(int(entry["size"]), _modified_ns(entry), _etag(entry)) for entry in entries}


CLIENT_ERRORS = (("obstore.exceptions", "BaseError"), ("botocore.exceptions", "BotoCoreError"),
                 ("aiohttp", "ClientError"), ("azure.core.exceptions", "AzureError"))  # none of them an OSError


@cache
def _client_errors() -> tuple[type[Exception], ...]:
    found = []
    for module, name in CLIENT_ERRORS:
        try:
            found.append(getattr(importlib.import_module(module), name))
        except ImportError:
            continue
    return tuple(found)


@contextmanager
def _os_errors() -> Iterator[None]:
    """A failed request as an OSError, whichever client sent it (obstore, botocore, aiohttp and azure-core
    raise their own families; a missing object already is a FileNotFoundError), so callers handle one kind."""
    try:
        yield
    except _client_errors() as error:
        if isinstance(error, OSError):
            raise
        raise OSError(one_line(error)) from error


def _unreadable(location: str | Path, error: OSError) -> EnvironmentFailure:
    """The failure of a read that the machine or the store, not the input, stopped."""
    return EnvironmentFailure(f"cannot read {location}: {error}")


def _botocore_credentials() -> dict:
    """Credentials from botocore's chain (profiles, SSO, instance roles), for obstore; refreshed every 5 minutes."""
    import botocore.session

    found = botocore.session.get_session().get_credentials()
    if found is None:
        raise ClearCLIPError("no AWS credentials on this machine (environment, ~/.aws, or an instance role)")
    frozen = found.get_frozen_credentials()
    return {"access_key_id": frozen.access_key, "secret_access_key": frozen.secret_key, "token": frozen.token,
            "expires_at": datetime.now(timezone.utc) + timedelta(minutes=5)}


class LocalStorage:
    """A local folder: atomic writes by rename, listings by ``os.walk``."""

    remote = False

    def __init__(self, root: str | Path) -> None:
        self.root = local_path(root)

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def location(self, key: str) -> Path:
        return self.root / key if key else self.root

    def read_bytes(self, key: str) -> bytes:
        return self.location(key).read_bytes()

    def read_line(self, key: str, limit: int) -> bytes:
        with open(self.location(key), "rb") as f:
            return f.readline(limit)

    def read_many(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        """Each key's bytes, None where there is no such file; EnvironmentFailure if one cannot be read."""
        out: dict[str, bytes | None] = {}
        for key in keys:
            try:
                out[key] = self.read_bytes(key)
            except FileNotFoundError:
                out[key] = None
            except OSError as error:
                raise _unreadable(self.location(key), error) from error
        return out

    def write_bytes(self, key: str, data: bytes) -> None:
        write_bytes(self.location(key), data)

    def create(self, key: str, data: bytes) -> bool:
        """Write ``key`` unless it exists; returns whether this call created it."""
        return create_text(self.location(key), data.decode("utf-8"))

    def delete(self, key: str) -> None:
        self.location(key).unlink(missing_ok=True)

    def info(self, key: str) -> ObjectInfo | None:
        try:
            stat = os.stat(self.location(key))
        except OSError:
            return None
        return ObjectInfo(stat.st_size, stat.st_mtime_ns)

    def list(self, prefix: str) -> dict[str, ObjectInfo]:
        """Every file under folder ``prefix`` (keys relative to the root), hidden files (temp files) excluded."""
        found = {}
        top = self.location(prefix)
        for directory, _, files in os.walk(top):
            for file in files:
                if file.startswith("."):
                    continue
                path = Path(directory) / file
                try:
                    stat = path.stat()
                except OSError:
                    continue
                found[path.relative_to(self.root).as_posix()] = ObjectInfo(stat.st_size, stat.st_mtime_ns)
        return found

    @contextmanager
    def writing(self, key: str) -> Iterator[Path]:
        """A local path to write ``key`` through; it becomes ``key`` when the block ends without an error."""
        with atomic_path(self.location(key)) as tmp:
            yield tmp


@dataclass
class ObjectStorage:
    """A prefix of an object store, through fsspec. ``options`` are the filesystem's non-secret options."""

    url: str
    options: dict = field(default_factory=dict)
    remote = True

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        self.fs = _filesystem(self.url, self.options)
        self._root = self.fs._strip_protocol(self.url).rstrip("/")
        self.fast = _fast_s3(self.url, self.options)

    def __repr__(self) -> str:
        return f"ObjectStorage({self.url!r})"

    def __getstate__(self) -> dict:  # helper processes rebuild the filesystem (it holds an event loop)
        return {"url": self.url, "options": self.options}

    def __setstate__(self, state: dict) -> None:
        self.url, self.options = state["url"], state["options"]
        self.__post_init__()

    @property
    def root(self) -> str:
        return self.url

    def location(self, key: str) -> str:
        return f"{self.url}/{key}" if key else self.url

    def _path(self, key: str) -> str:
        return f"{self._root}/{key}" if key else self._root

    def read_bytes(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError if there is none, EnvironmentFailure if the request failed."""
        with self._reading(key):
            return self.fast.read_bytes(key) if self.fast else self.fs.cat_file(self._path(key))

    def read_head(self, key: str, limit: int) -> bytes:
        """The first ``limit`` bytes of ``key`` (one ranged GET); errors as ``read_bytes``."""
        with self._reading(key):
            return self.fast.read_head(key, limit) if self.fast else self.fs.cat_file(self._path(key), start=0, end=limit)

    @contextmanager
    def _reading(self, key: str) -> Iterator[None]:
        try:
            with _os_errors():
                yield
        except FileNotFoundError:
            raise
        except OSError as error:
            raise _unreadable(self.location(key), error) from error

    def read_line(self, key: str, limit: int) -> bytes:
        data = self.read_head(key, limit)
        end = data.find(b"\n")
        return data if end < 0 else data[: end + 1]

    def read_many(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        """Each key's bytes, None where there is no such object, FETCH_CONCURRENCY GETs at once (``cat_ranges``:
        no HEAD before each GET, as ``cat`` sends); EnvironmentFailure naming the first that failed otherwise."""
        keys = list(keys)
        if self.fast:
            def read(key: str) -> bytes | None:
                try:
                    return self.read_bytes(key)
                except FileNotFoundError:
                    return None

            with ThreadPoolExecutor(FETCH_CONCURRENCY, thread_name_prefix="s3-read") as pool:
                return dict(zip(keys, pool.map(read, keys)))
        got = self.fs.cat_ranges([self._path(k) for k in keys], [None] * len(keys), [None] * len(keys),
                                 on_error="return", batch_size=FETCH_CONCURRENCY) if keys else []
        found: dict[str, bytes | None] = {}
        for key, value in zip(keys, got):
            if isinstance(value, FileNotFoundError):
                found[key] = None
            elif isinstance(value, Exception):
                with self._reading(key):
                    raise value
            else:
                found[key] = bytes(value)
        return found

    def write_bytes(self, key: str, data: bytes) -> None:
        with _os_errors():
            if self.fast:
                return self.fast.write_bytes(key, data)
            self.fs.pipe_file(self._path(key), data)

    def create(self, key: str, data: bytes) -> bool:
        """Write ``key`` unless it exists (a conditional PUT, ``If-None-Match: *``); whether this call did."""
        with _os_errors():
            if self.fast:
                return self.fast.create(key, data)
            try:
                with self.fs.open(self._path(key), "xb") as f:
                    f.write(data)
            except FileExistsError:
                return False
            except OSError as error:
                if "pre-condition" in str(error).lower() or "precondition" in str(error).lower():
                    return False
                raise
        return True

    def delete(self, key: str) -> None:
        with _os_errors():
            if self.fast:
                return self.fast.delete(key)
            try:
                self.fs.rm_file(self._path(key))
            except FileNotFoundError:
                pass

    def info(self, key: str) -> ObjectInfo | None:
        with _os_errors():
            if self.fast and key:
                return self.fast.info(key)
            try:
                info = self.fs.info(self._path(key))
            except FileNotFoundError:
                return None
        if info.get("type") == "directory":
            return None
        return ObjectInfo(int(info["size"]), _modified_ns(info), _etag(info))

    def list(self, prefix: str, hidden: bool = False) -> dict[str, ObjectInfo]:
        """Every object under ``prefix`` (paged listings; on s3:// through obstore, subfolders concurrently), keys
        relative to the root; unless ``hidden``, names with a part starting with ``.`` excluded."""
        with _os_errors():
            if self.fast:
                return {k: v for k, v in self.fast.list(prefix).items()
                        if hidden or not any(p.startswith(".") for p in k.split("/"))}
            self.fs.invalidate_cache()
            try:
                entries = self.fs.find(self._path(prefix), detail=True, withdirs=False)
            except FileNotFoundError:
                return {}
        found = {}
        cut = len(self._root) + 1
        for path, info in entries.items():
            key = path[cut:]
            if info.get("type") == "directory" or (not hidden and any(p.startswith(".") for p in key.split("/"))):
                continue
            found[key] = ObjectInfo(int(info["size"]), _modified_ns(info), _etag(info))
        return found

    @contextmanager
    def writing(self, key: str) -> Iterator[Path]:
        """A local temp path to write ``key`` through; uploaded (multipart when large) when the block ends
        without an error, so the object appears whole or not at all."""
        folder = tempfile.mkdtemp(prefix="clearclip-upload-")
        try:
            path = Path(folder) / PurePosixPath(key).name
            yield path
            self.upload([path], [key])
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def upload(self, files: Sequence[Path], keys: Sequence[str]) -> None:
        """Each local file as the object at its key, concurrently, each whole (multipart when large)."""
        with _os_errors():
            self.fs.put([str(f) for f in files], [self._path(k) for k in keys])

    def download(self, keys: Sequence[str], files: Sequence[Path]) -> None:
        """Each object into the local file beside it, concurrently; FileNotFoundError if one is gone."""
        with _os_errors():
            self.fs.get([self._path(k) for k in keys], [str(f) for f in files])


def _fast_s3(url: str, options: dict) -> FastS3 | None:
    """The obstore path for ``s3://`` when obstore is installed (the [s3] extra) and the options are ones it
    understands; None otherwise (every call goes through fsspec)."""
    if url.split("://", 1)[0].lower() not in ("s3", "s3a") or not set(options) <= FAST_OPTIONS:
        return None
    if set(options.get("client_kwargs") or {}) - {"endpoint_url", "region_name"}:
        return None
    if importlib.util.find_spec("obstore") is None:
        return None
    return FastS3(url, options)


Storage = LocalStorage | ObjectStorage


def open_storage(location: str | Path, options: dict | None = None) -> Storage:
    """The storage rooted at ``location``: a local path or ``file://`` URL, or an fsspec URL."""
    return ObjectStorage(str(location), dict(options or {})) if is_url(location) else LocalStorage(location)


def read_location(location: str | Path, options: dict | None = None, limit: int | None = None) -> bytes:
    """The bytes of one file or object (at most ``limit``+1 of them, so a caller can tell it is too big)."""
    if not is_url(location):
        with open(local_path(location), "rb") as f:
            return f.read(-1 if limit is None else limit + 1)
    parent, _, name = str(location).rstrip("/").rpartition("/")
    storage = ObjectStorage(parent, dict(options or {}))
    return storage.read_bytes(name) if limit is None else storage.read_head(name, limit + 1)
