"""End to end: a real Prefect server, process workers on pool `gpu`, `prefect deploy --all`, and
`prefect deployment run label-dataset/default`; then a shard worker killed with SIGKILL mid-shard."""

import json
import time

from pycocotools.coco import COCO

from folders import write_plain_folder
from prefect_stack import PrefectStack
from processes import kill_tree

CLASSES = ["background", "sky", "grass, lawn", "road"]


def parameters(folder, out, model):
    # many small windows make each image take about a second, so a shard can be caught half done
    return {"dataset": str(folder), "classes": CLASSES, "out": str(out), "model": model, "device": "cpu",
            "shard_size": 4, "batch_size": 1, "min_area": 2, "segment": {"short_side": 448, "crop": 32, "stride": 8}}


def completed_parent(stack, out):
    if not (out / "run.json").exists():  # cheap check first: asking the API means starting a Python process
        return []
    runs = [r for r in stack.flow_runs() if r["flow"] == "label-dataset" and r["parameters"].get("out") == str(out)]
    return [r for r in runs if r["state"] == "COMPLETED"]


def test_deployment_run_then_worker_killed_mid_shard(tiny_model_name, tmp_path):
    folder = tmp_path / "data"
    files = write_plain_folder(folder, 12, size=(96, 128))
    with PrefectStack(tmp_path / "prefect") as stack:
        stack.start_worker("orchestrator", "orchestrator")
        shard_worker = stack.start_worker("shards", "cpu-1", limit=1)

        # 1. an uninterrupted run through the deployments
        reference = tmp_path / "reference"
        stack.run_deployment("label-dataset/default", parameters(folder, reference, tiny_model_name))
        stack.wait_until(lambda: completed_parent(stack, reference), 300, "label-dataset to complete", poll=3)
        shard_runs = [r for r in stack.flow_runs() if r["flow"] == "label-shard" and r["parameters"]["out"] == str(reference)]
        assert len(shard_runs) == 3 and all(r["state"] == "COMPLETED" for r in shard_runs)
        coco = COCO(str(reference / "annotations.json"))
        assert len(coco.dataset["images"]) == len(files) and coco.dataset["annotations"]

        # 2. the shard worker dies (SIGKILL, with its flow-run process) while a shard is half done
        out = tmp_path / "killed"
        stack.run_deployment("label-dataset/default", parameters(folder, out, tiny_model_name))

        def half_done():
            parts = len(list((out / "parts").rglob("*.json"))) if (out / "parts").exists() else 0
            markers = len(list((out / "shards").glob("*.json"))) if (out / "shards").exists() else 0
            if parts == len(files):
                raise AssertionError("every image finished before the worker could be killed")
            return parts > 4 * markers  # a shard has started but not finished

        stack.wait_until(half_done, 300, "a shard to be half done", poll=0.05)
        kill_tree(shard_worker)
        markers = len(list((out / "shards").glob("*.json")))
        assert markers < 3

        # 3. a new worker, a rerun of the deployment into the same folder
        stack.start_worker("shards", "cpu-2", limit=1)
        stack.run_deployment("label-dataset/default", parameters(folder, out, tiny_model_name))
        stack.wait_until(lambda: completed_parent(stack, out), 300, "the rerun to complete", poll=3)
        time.sleep(1)
        assert (out / "annotations.json").read_bytes() == (reference / "annotations.json").read_bytes()
        run = json.loads((out / "run.json").read_text())
        assert run["shards"] == 3 and run["images_labeled"] == len(files)
        assert sorted(p.name for p in (out / "shards").glob("*.json")) == ["000000.json", "000001.json", "000002.json"]
