"""A real local Prefect server with process workers, for end-to-end tests; everything stops on exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from processes import free_port, kill_tree

ROOT = Path(__file__).resolve().parents[1]

FLOW_RUNS_SCRIPT = """
import json
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as client:
    flows = {f.id: f.name for f in client.read_flows()}
    runs = client.read_flow_runs()
    print(json.dumps([{"id": str(r.id), "name": r.name, "flow": flows.get(r.flow_id), "state": r.state_type.value,
                       "parameters": r.parameters} for r in runs]))
"""


class PrefectStack:
    """``with PrefectStack(tmp) as stack``: server on a free port, pool ``gpu``, deployments of prefect.yaml."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": f"http://127.0.0.1:{self.port}/api",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "INFO",
            "PWD": str(ROOT),
        }
        self.server: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    def __enter__(self) -> "PrefectStack":
        self.home.mkdir(parents=True, exist_ok=True)
        try:
            self.server = self._spawn(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)], "server")
            self._wait_healthy()
            self.cli("work-pool", "create", "gpu", "--type", "process")
            self.cli("--no-prompt", "deploy", "--all")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, command: list[str], log_name: str) -> subprocess.Popen:
        log = open(self.home / f"{log_name}.log", "ab")
        return subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _wait_healthy(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise RuntimeError(f"prefect server exited; see {self.home / 'server.log'}")
            try:
                urllib.request.urlopen(f"{self.env['PREFECT_API_URL']}/health", timeout=1)
                return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError("prefect server did not become healthy")

    def cli(self, *args: str) -> str:
        result = subprocess.run(["prefect", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=180)
        if result.returncode != 0:
            raise RuntimeError(f"prefect {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def start_worker(self, queue: str, name: str, limit: int | None = None) -> subprocess.Popen:
        limit_args = ["--limit", str(limit)] if limit else []
        worker = self._spawn(["prefect", "worker", "start", "--pool", "gpu", "--work-queue", queue, *limit_args,
                              "--name", name], f"worker-{name}")
        self.workers.append(worker)
        return worker

    def run_deployment(self, name: str, parameters: dict) -> None:
        args = [a for key, value in parameters.items() for a in ("-p", f"{key}={json.dumps(value)}")]
        self.cli("deployment", "run", name, *args)

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
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.home.glob("*.log")))
        raise TimeoutError(f"timed out waiting for {what}\n{logs}")

    def stop(self) -> None:
        for worker in self.workers:  # workers before the server
            kill_tree(worker, sig_kill=False)
        if self.server is not None:
            kill_tree(self.server, sig_kill=False)
