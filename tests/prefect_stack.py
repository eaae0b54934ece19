"""The stack the README starts (`scripts/serve`: Prefect server, deployments, crash detection, workers), on a
free port, for end-to-end tests; shard workers can be added with their own environment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from processes import free_port, kill_tree

ROOT = Path(__file__).resolve().parents[1]
KILL_AFTER = Path(__file__).resolve().parent / "kill_after.py"

FLOW_RUNS_SCRIPT = """
import json
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as client:
    flows = {f.id: f.name for f in client.read_flows()}
    runs = client.read_flow_runs()
    print(json.dumps([{"id": str(r.id), "name": r.name, "flow": flows.get(r.flow_id), "state": r.state_type.value,
                       "message": r.state.message if r.state else None, "parameters": r.parameters,
                       "created": r.created.isoformat()} for r in runs]))
"""


class ServeStack:
    """``with ServeStack(home, shard_workers=0) as stack``: scripts/serve on a free port, stopped with Ctrl-C.
    ``database``: serve's DATABASE (sqlite, postgres or auto); ``orchestrator=False``: serve starts no
    orchestrator worker (the test starts one elsewhere)."""

    def __init__(self, home: Path, shard_workers: int = 0, heartbeat_seconds: int = 30, database: str = "sqlite",
                 orchestrator: bool = True) -> None:
        self.home = home
        self.port = free_port()
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PORT": str(self.port),
            "SHARD_WORKERS": str(shard_workers),
            "ORCHESTRATOR_WORKERS": "1" if orchestrator else "0",
            "DATABASE": database,
            "HEARTBEAT_SECONDS": str(heartbeat_seconds),
            "PREFECT_API_URL": f"http://127.0.0.1:{self.port}/api",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(heartbeat_seconds),
        }
        self.serve: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.output = home / "serve.out"

    def __enter__(self) -> "ServeStack":
        self.home.mkdir(parents=True, exist_ok=True)
        self.serve = subprocess.Popen([str(ROOT / "scripts" / "serve")], cwd=ROOT, env=self.env,
                                      stdout=open(self.output, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.wait_until(lambda: "logs in" in self.output.read_text(), 240, "scripts/serve to start")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start_shard_worker(self, name: str, kill_after: int | str | None = None, **env: str) -> subprocess.Popen:
        """A shard worker; with ``kill_after``, it SIGKILLs itself once that many images are committed (or,
        with ``"claim"``, once it has claimed a shard run, before starting it)."""
        log = open(self.home / f"worker-{name}.log", "ab")
        start = [sys.executable, "-m"] if kill_after is None else [sys.executable, str(KILL_AFTER), str(kill_after)]
        worker = subprocess.Popen(
            [*start, "flows.shard_worker", "--pool", "gpu", "--queue", "shards", "--name", name],
            cwd=ROOT, env={**self.env, "PREFECT_WORKER_QUERY_SECONDS": "2", **env}, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
        self.workers.append(worker)
        return worker

    def cli(self, *args: str) -> str:
        result = subprocess.run(["prefect", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=180)
        if result.returncode != 0:
            raise RuntimeError(f"prefect {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def run_deployment(self, name: str, parameters: dict) -> None:
        self.cli("deployment", "run", name, "--params", json.dumps(parameters))

    def served(self, *words: str) -> psutil.Process:
        """The process scripts/serve started whose command line holds ``words`` (the server, a worker)."""
        for process in psutil.Process(self.serve.pid).children(recursive=True):
            command = " ".join(process.cmdline())
            if all(word in command for word in words):
                return process
        raise LookupError(f"scripts/serve runs no process with {words}")

    def flow_runs(self) -> list[dict]:
        result = subprocess.run([sys.executable, "-c", FLOW_RUNS_SCRIPT], env=self.env, capture_output=True, text=True,
                                timeout=60)
        if result.returncode != 0:
            raise RuntimeError(result.stderr)
        return json.loads(result.stdout)

    def wait_until(self, condition, timeout: float, what: str, poll: float = 1.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(poll)
        logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.home.rglob("*.log")) + [self.output])
        raise TimeoutError(f"timed out waiting for {what}\n{logs}")

    def interrupt(self, timeout: float = 90) -> str:
        """Ctrl-C, as a terminal sends it to scripts/serve's process group; returns what it printed."""
        os.killpg(self.serve.pid, signal.SIGINT)
        self.serve.wait(timeout=timeout)
        return self.output.read_text()

    def stop(self) -> None:
        for worker in self.workers:
            kill_tree(worker)
        if self.serve is not None and self.serve.poll() is None:
            try:
                self.interrupt()
            except Exception:
                kill_tree(self.serve)
