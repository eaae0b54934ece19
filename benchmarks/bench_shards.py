"""Per-shard overhead of a shard worker, and the control plane under many workers.

Default: the long-lived shard worker (flows/shard_worker.py, model kept) against Prefect's process worker (a
new process, imports and model load per shard), measured in the same run. Starts scripts/serve with no
shard worker, then for each kind: one worker, one `label-dataset` deployment run of SHARDS shards, and from
the flow runs' times: overhead of a shard = time the worker spent on it beyond labeling its images (the
shard's own measurement) plus the gap since the worker's previous shard ended.

With --databases: for each database, scripts/serve with that DATABASE and --workers shard workers, one
`label-dataset` run of --shards one-image shards; reports the parent's submit latency (the time between
two shard runs it creates), each worker's idle time between two shards (one's end to the next's start on
the same worker), the run's wall time and the `database is locked` lines the server logged.

    python benchmarks/bench_shards.py [--shards 6] [--images-per-shard 4] [--model ViT-B-16]
    python benchmarks/bench_shards.py --databases sqlite postgres --workers 8 --shards 64 --model ViT-S-16
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(1)
    raise TimeoutError(what)


def shard_overheads(out: Path) -> list[float]:
    """Seconds each shard cost beyond labeling its images (model load included), in the order the worker ran them."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows()}
        runs = [r for r in client.read_flow_runs() if flows[r.flow_id] == "label-shard" and r.parameters["out"] == str(out)]
    runs.sort(key=lambda r: r.start_time)
    overheads, previous_end = [], None
    for run in runs:
        marker = json.loads((out / "shards" / f"{Path(run.parameters['manifest']).stem}.json").read_text())
        labeling = marker["seconds"] - marker["model_seconds"]  # loading the model is overhead
        busy = (run.end_time - run.start_time).total_seconds() - labeling
        gap = (run.start_time - previous_end).total_seconds() if previous_end else 0.0
        overheads.append(busy + gap)
        previous_end = run.end_time
    return overheads


def write_images(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (64, 96, 3), np.uint8)).save(folder / f"img{i:04d}.png")


def serve_env(home: Path, **extra: str) -> dict:
    port = free_port()
    return {**os.environ, "PREFECT_HOME": str(home), "PORT": str(port), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_WORKER_QUERY_SECONDS": "2", **extra}


def start_serve(env: dict) -> subprocess.Popen:
    serve = subprocess.Popen([str(ROOT / "scripts" / "serve")], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    for line in serve.stdout:
        if line.startswith("logs in"):
            return serve
    raise RuntimeError("scripts/serve did not start")


def control_plane(database: str, workers: int, shards: int, model: str) -> dict:
    """One run of ``shards`` one-image shards on ``workers`` shard workers of scripts/serve on ``database``."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = Path(tempfile.mkdtemp(prefix=f"bench-{database}-"))
    home.chmod(0o755)  # PostgreSQL runs as user postgres when this runs as root
    data, out = home / "images", home / "run"
    data.mkdir()
    write_images(data, shards)
    env = serve_env(home / "prefect", DATABASE=database, SHARD_WORKERS=str(workers))
    serve = start_serve(env)
    try:
        parameters = {"dataset": str(data), "classes": ["background", "sky", "grass", "road"], "out": str(out),
                      "model": model, "pretrained": None, "device": "cpu", "shard_size": 1, "short_side": 64,
                      "workers": 0}
        started = time.monotonic()
        subprocess.run(["prefect", "deployment", "run", "label-dataset/default", "--params", json.dumps(parameters)],
                       env=env, check=True, capture_output=True)
        wait_for(lambda: (out / "run.json").exists(), 3600, f"the {database} run")
        wall = time.monotonic() - started
        with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
            flows = {f.id: f.name for f in client.read_flows()}
            runs = []
            while page := client.read_flow_runs(limit=200, offset=len(runs)):  # the API's largest page
                runs += page
            runs = [r for r in runs if flows[r.flow_id] == "label-shard"]
    finally:
        os.killpg(serve.pid, signal.SIGINT)
        serve.wait(timeout=120)
    created = sorted(r.created for r in runs)
    submit = [(b - a).total_seconds() for a, b in zip(created, created[1:])]
    idle, by_worker = [], {}
    for run in runs:
        by_worker.setdefault(run.infrastructure_pid, []).append(run)
    for worker_runs in by_worker.values():
        worker_runs.sort(key=lambda r: r.start_time)
        idle += [(b.start_time - a.end_time).total_seconds() for a, b in zip(worker_runs, worker_runs[1:])]
    locked = (home / "prefect" / "logs" / "server.log").read_text(errors="replace").count("database is locked")
    return {"database": database, "wall": wall, "submit": submit, "idle": idle, "locked": locked,
            "workers_used": len(by_worker)}


def compare_databases(args) -> int:
    results = [control_plane(database, args.workers, args.shards, args.model) for database in args.databases]
    print(f"{args.shards} one-image shards on {args.workers} shard workers, {args.model} random weights, CPU")
    print(f"{'database':<10} {'wall s':>7} {'submit mean s':>14} {'submit max s':>13} {'idle mean s':>12} "
          f"{'idle max s':>11} {'locked':>7} {'workers':>8}")
    for r in results:
        print(f"{r['database']:<10} {r['wall']:>7.1f} {statistics.mean(r['submit']):>14.2f} {max(r['submit']):>13.2f} "
              f"{statistics.mean(r['idle']):>12.2f} {max(r['idle']):>11.2f} {r['locked']:>7} {r['workers_used']:>8}")
    if len(results) == 2:
        a, b = results
        print(f"{b['database']} vs {a['database']}: submit {statistics.mean(a['submit']) / statistics.mean(b['submit']):.1f}x "
              f"faster, wall {a['wall'] / b['wall']:.2f}x")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=6)
    parser.add_argument("--images-per-shard", type=int, default=4)
    parser.add_argument("--model", default="ViT-B-16", help="open_clip model, random weights (default: ViT-B-16)")
    parser.add_argument("--databases", nargs="+", choices=["sqlite", "postgres"],
                        help="measure the control plane on these databases instead")
    parser.add_argument("--workers", type=int, default=8, help="shard workers, with --databases (default: 8)")
    args = parser.parse_args(argv)
    if args.databases:
        return compare_databases(args)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_images(tmp, args.shards * args.images_per_shard)
        env = serve_env(tmp / "prefect", SHARD_WORKERS="0")
        os.environ["PREFECT_API_URL"] = env["PREFECT_API_URL"]
        serve = start_serve(env)
        try:
            kinds = {
                "long-lived shard worker": [sys.executable, "-m", "flows.shard_worker", "--pool", "gpu"],
                "prefect process worker": ["prefect", "worker", "start", "--pool", "gpu", "--work-queue", "shards",
                                           "--limit", "1"],
            }
            results = {}
            for kind, command in kinds.items():
                out = tmp / kind.replace(" ", "-")
                worker = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True)
                parameters = {"dataset": str(tmp), "classes": ["background", "sky", "grass", "road"], "out": str(out),
                              "model": args.model, "pretrained": None, "device": "cpu", "shard_size":
                              args.images_per_shard, "short_side": 64, "workers": 0}
                subprocess.run(["prefect", "deployment", "run", "label-dataset/default", "--params",
                                json.dumps(parameters)], env=env, check=True, capture_output=True)
                wait_for(lambda: (out / "run.json").exists(), 1800, f"the {kind} run")
                time.sleep(2)
                results[kind] = shard_overheads(out)
                os.killpg(worker.pid, signal.SIGKILL)
        finally:
            os.killpg(serve.pid, signal.SIGINT)
            serve.wait(timeout=90)
    print(f"{args.shards} shards of {args.images_per_shard} images, {args.model} random weights, CPU")
    print(f"{'worker':<26} {'first shard s':>13} {'later shards: mean s':>21} {'max s':>7}")
    for kind, overheads in results.items():
        later = overheads[1:]
        print(f"{kind:<26} {overheads[0]:>13.1f} {statistics.mean(later):>21.1f} {max(later):>7.1f}")
    ours, theirs = (statistics.mean(results[k][1:]) for k in kinds)
    print(f"per-shard overhead after the first shard: {ours:.1f} s vs {theirs:.1f} s ({theirs / ours:.1f}x less)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
