"""Holding a run folder on object storage, where there is no ``fcntl``: lease objects.

A lease is a small object ``leases/<kind>.json`` (``{"owner", "token", "host", "pid", "expires"}``) created
with a conditional write (``If-None-Match: *``), so of two takers exactly one creates it. Its holder renews it
every third of ``LEASE_SECONDS`` from a thread; a holder that dies stops renewing, and once the lease has
expired (at once, when the holder was a process of this machine that is gone) the next taker deletes it and
takes its own. Shared holders (shard runs) each create ``leases/shared-<token>.json``; an exclusive taker
refuses while one of those is live, and a shared taker refuses while the exclusive lease is: each writes its
own lease before it looks for the other's, so of two at once at least one sees the other.
Clocks: expiry times are the holders' wall clocks, so machines must agree within a few seconds (NTP).
The token is random per holder: a holder renews and deletes its lease only while the object still holds its
token, so one that stalled past its lease and was replaced leaves the new holder's lease alone and says so
(a read, then a write: a taker that creates its lease in the milliseconds between them is the one race left).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import EnvironmentFailure, one_line
from ..io.storage import ObjectStorage

LEASE_SECONDS = 60.0
HOST = socket.gethostname()
PREFIX = "leases"


def _read(storage: ObjectStorage, key: str) -> dict | None:
    try:
        lease = json.loads(storage.read_bytes(key))
    except (FileNotFoundError, ValueError):
        return None
    return lease if isinstance(lease, dict) and isinstance(lease.get("expires"), (int, float)) else None


def _live(storage: ObjectStorage, key: str) -> dict | None:
    """The lease at ``key`` if it exists and has not expired (an unreadable one counts as live until it is
    LEASE_SECONDS old by the listing, then as expired)."""
    lease = _read(storage, key)
    if lease is None:
        info = storage.info(key)
        if info is None or time.time() - info.mtime_ns / 1e9 > LEASE_SECONDS:
            return None
        return {"owner": "a run whose lease is being written", "expires": time.time() + LEASE_SECONDS}
    if lease.get("host") == HOST and isinstance(lease.get("pid"), int) and not _running(lease["pid"]):
        return None
    return lease if lease["expires"] > time.time() else None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _body(owner: str, token: str) -> bytes:
    return json.dumps({"owner": owner, "token": token, "host": HOST, "pid": os.getpid(),
                       "expires": time.time() + LEASE_SECONDS}).encode()


def _taken_from(storage: ObjectStorage, key: str, token: str) -> dict | None:
    """The lease at ``key`` if another holder's token is in it (this holder's lease was replaced), else None."""
    lease = _read(storage, key)
    return lease if lease is not None and lease.get("token") != token else None


@contextmanager
def _renewed(storage: ObjectStorage, key: str, owner: str, token: str) -> Iterator[None]:
    """Keep the lease at ``key`` renewed while the block runs; delete it after. Both only while the object
    holds ``token``: a replaced holder stops renewing and says so once."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(LEASE_SECONDS / 3):
            try:
                if holder := _taken_from(storage, key, token):
                    print(f"clearclip: {storage.url}: this run's lease {key} expired and was taken by "
                          f"{one_line(holder.get('owner', 'another run'))}; stop one of the two runs",
                          file=sys.stderr)
                    return
                storage.write_bytes(key, _body(owner, token))
            except (OSError, EnvironmentFailure):
                pass  # the next renewal tries again; the lease lasts LEASE_SECONDS

    thread = threading.Thread(target=renew, name=f"lease {key}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        try:
            if _taken_from(storage, key, token) is None:
                storage.delete(key)
        except (OSError, EnvironmentFailure):
            pass  # unreachable store: the lease expires by itself within LEASE_SECONDS


def _take(storage: ObjectStorage, key: str, owner: str, token: str, what: str) -> None:
    """Create the lease at ``key``, replacing an expired one; EnvironmentFailure naming the holder if live."""
    for _ in range(2):
        if storage.create(key, _body(owner, token)):
            return
        holder = _live(storage, key)
        if holder is not None:
            raise EnvironmentFailure(f"{storage.url} is {what} by {one_line(holder.get('owner', 'another run'))}; "
                                     "wait for it to finish (a holder that died frees it within "
                                     f"{LEASE_SECONDS:.0f} s), or label into another out")
        storage.delete(key)  # expired: its holder died
    raise EnvironmentFailure(f"{storage.url}: could not take the lease {key} (another run took it meanwhile); "
                             "try again")


def _live_shared(storage: ObjectStorage, own: str | None = None) -> dict | None:
    for key in storage.list(PREFIX):
        if key.startswith(f"{PREFIX}/shared-") and key != own and (lease := _live(storage, key)):
            return lease
    return None


@contextmanager
def held(storage: ObjectStorage, exclusive: bool, owner: str) -> Iterator[None]:
    """Hold the run at ``storage`` exclusively (a whole ``clearclip label``) or shared (one shard run)."""
    token = secrets.token_hex(8)
    if exclusive:
        key = f"{PREFIX}/exclusive.json"
        _take(storage, key, owner, token, "in use")
        with _renewed(storage, key, owner, token):
            if holder := _live_shared(storage):
                raise EnvironmentFailure(f"{storage.url} is in use by {one_line(holder.get('owner'))}; wait for it "
                                         "to finish, or label into another out")
            yield
        return
    key = f"{PREFIX}/shared-{token}.json"
    storage.write_bytes(key, _body(owner, token))
    with _renewed(storage, key, owner, token):
        if holder := _live(storage, f"{PREFIX}/exclusive.json"):
            raise EnvironmentFailure(f"{storage.url} is in use by {one_line(holder.get('owner'))}; wait for it to "
                                     "finish, or label into another out")
        yield


@contextmanager
def orchestrating(storage: ObjectStorage, owner: str) -> Iterator[None]:
    """Hold the run for one orchestrating ``label-dataset`` run; a second is refused, naming the first."""
    key, token = f"{PREFIX}/orchestrator.json", secrets.token_hex(8)
    _take(storage, key, owner, token, "being labeled")
    with _renewed(storage, key, owner, token):
        yield
