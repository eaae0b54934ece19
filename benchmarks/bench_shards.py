"""Per-shard overhead of a shard worker: the long-lived one (flows/shard_worker.py, model kept) against
Prefect's process worker (a new process, imports and model load per shard), measured in the same run.

Starts scripts/serve with no shard worker, then for each kind: one worker, one `label-dataset` deployment
run of SHARDS shards, and from the flow runs' times: overhead of a shard = time the worker spent on it beyond
labeling its images (the shard's own measurement) plus the gap since the worker's previous shard ended.

    python benchmarks/bench_shards.py [--shards 6] [--images-per-shard 4] [--model ViT-B-16]
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=6)
    parser.add_argument("--images-per-shard", type=int, default=4)
    parser.add_argument("--model", default="ViT-B-16", help="open_clip model, random weights (default: ViT-B-16)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        for i in range(args.shards * args.images_per_shard):
            Image.fromarray(rng.integers(0, 255, (64, 96, 3), np.uint8)).save(tmp / f"img{i:04d}.png")
        port = free_port()
        env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect"), "PORT": str(port), "SHARD_WORKERS": "0",
               "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_WORKER_QUERY_SECONDS": "2"}
        os.environ.update({k: env[k] for k in ("PREFECT_API_URL",)})
        serve = subprocess.Popen([str(ROOT / "scripts" / "serve")], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            for line in serve.stdout:
                if line.startswith("logs in"):
                    break
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
