"""End to end, as the README runs it: `scripts/serve` (a real Prefect server, pool `gpu`, the deployments, the
crash-detection automation), long-lived shard workers, and `prefect deployment run label-dataset/default`.

A worker dies mid-shard (SIGKILL, from the tests' kill_after runner, so the moment is deterministic): its run stops
sending heartbeats, the automation marks it CRASHED, the parent submits the shard again and another worker
finishes it, with nobody doing anything. A shard that fails on every attempt fails the parent with a message
that says how to resume. Ctrl-C stops everything scripts/serve started."""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from clearclip.cli import main
from folders import write_plain_folder
from prefect_stack import ROOT, ServeStack

pytestmark = pytest.mark.slow  # end to end: real servers, workers or processes

CLASSES = ["background", "sky", "grass, lawn", "road"]
SETTINGS = {"short_side": 96, "crop": 32, "stride": 16, "min_area": 2, "batch_size": 1, "workers": 0}


def parameters(folder, out, model, **extra):
    return {"dataset": str(folder), "classes": CLASSES, "out": str(out), "model": model, "device": "cpu",
            "shard_size": 4, **SETTINGS, **extra}


def parent_runs(stack, out):
    return [r for r in stack.flow_runs() if r["flow"] == "label-dataset" and r["parameters"].get("out") == str(out)]


def final_parent(stack, out):
    runs = [r for r in parent_runs(stack, out) if r["state"] in ("COMPLETED", "FAILED", "CRASHED")]
    return runs[-1] if runs else None


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("deployment-data")
    write_plain_folder(root, 12, size=(72, 96))
    return root


@pytest.fixture(scope="module")
def reference(folder, tmp_path_factory, tiny_model_name):
    out = tmp_path_factory.mktemp("deployment-reference")
    args = [a for key, value in SETTINGS.items() for a in (f"--{key.replace('_', '-')}", str(value))]
    assert main(["label", str(folder), "--out", str(out), "--model", tiny_model_name, "--device", "cpu", "--quiet",
                 *[a for c in CLASSES for a in ("--class", c)], *args]) == 0
    return out


def test_a_dead_worker_never_stalls_a_run(folder, reference, tiny_model_name, tmp_path):
    with ServeStack(tmp_path / "prefect") as stack:
        out = tmp_path / "run"
        doomed = stack.start_shard_worker("doomed", kill_after=2)  # SIGKILLs itself mid-shard
        stack.run_deployment("label-dataset/default", parameters(folder, out, tiny_model_name))
        stack.wait_until(lambda: doomed.poll() is not None, 240, "the doomed worker to die mid-shard")
        assert doomed.returncode == -9
        assert 2 <= len(list((out / "records").rglob("*.json"))) < 12
        stack.start_shard_worker("survivor")

        # heartbeats every 30 s; crashed after 3 missed (90 s); then the shard runs again: no one steps in
        parent = stack.wait_until(lambda: final_parent(stack, out), 90 + 60 + 90, "the parent run to finish", poll=3)
        assert parent["state"] == "COMPLETED", parent["message"]
        shard_runs = [r for r in stack.flow_runs() if r["flow"] == "label-shard" and r["parameters"]["out"] == str(out)]
        crashed = [r for r in shard_runs if r["state"] == "CRASHED"]
        assert len(crashed) == 1 and "no heartbeat" in crashed[0]["message"]
        assert sum(r["state"] == "COMPLETED" for r in shard_runs) == 3
        resubmitted = [r for r in shard_runs if r["parameters"]["manifest"] == crashed[0]["parameters"]["manifest"]]
        assert len(resubmitted) == 2
        assert (out / "annotations.json").read_bytes() == (reference / "annotations.json").read_bytes()
        survivor_log = (tmp_path / "prefect" / "worker-survivor.log").read_text()
        assert survivor_log.count("Finished in state Completed") >= 2  # the survivor took more than one shard

        printed = stack.interrupt()
    assert printed.rstrip().endswith("stopped the workers and the Prefect server")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", stack.port), timeout=2)


def test_a_shard_whose_worker_died_before_starting_it_is_crashed_by_the_parent(folder, reference, tiny_model_name,
                                                                             tmp_path):
    """A worker killed between claiming a shard run and starting it sends no heartbeat, so the crash
    automation never sees that run; the parent marks it crashed after stall_seconds (40 s: well above a
    busy machine's model load, so no healthy shard is crashed) and submits it again."""
    with ServeStack(tmp_path / "prefect") as stack:
        out = tmp_path / "run"
        doomed = stack.start_shard_worker("doomed", kill_after="claim")
        stack.run_deployment("label-dataset/default", parameters(folder, out, tiny_model_name, stall_seconds=40))
        stack.wait_until(lambda: doomed.poll() is not None, 120, "the doomed worker to die after its claim")
        assert doomed.returncode == -9
        stack.start_shard_worker("survivor")
        parent = stack.wait_until(lambda: final_parent(stack, out), 240, "the parent run to finish", poll=3)
        assert parent["state"] == "COMPLETED", parent["message"]
        online = subprocess.run([sys.executable, "-c", "from flows.label_dataset import _pool_size as n; "
                                 "print(n())"], env=stack.env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert int(online.stdout) >= 2, online.stderr  # the orchestrator and the survivor (the dead one until it times out)
        shard_runs = [r for r in stack.flow_runs() if r["flow"] == "label-shard" and r["parameters"]["out"] == str(out)]
        crashed = [r for r in shard_runs if r["state"] == "CRASHED"]
        assert len(crashed) == 1 and "PENDING for 40 s without a finished image: marked crashed by label-dataset" \
            in crashed[0]["message"]
        assert sum(r["state"] == "COMPLETED" for r in shard_runs) == 3
        assert (out / "annotations.json").read_bytes() == (reference / "annotations.json").read_bytes()


def _when_the_server_answers(condition):
    """``condition``, or None while the Prefect server is down (it is being started again)."""
    def check():
        try:
            return condition()
        except RuntimeError:
            return None
    return check


POSTGRES = bool(glob.glob("/usr/lib/postgresql/*/bin/initdb"))


def test_serve_restarts_a_dead_worker_and_a_killed_server_and_the_run_completes(folder, reference, tiny_model_name):
    """scripts/serve on PostgreSQL when it is installed (SQLite otherwise). SIGKILL of the orchestrator worker:
    serve starts it again and says so. Then, mid-shard, SIGKILL of the Prefect server: serve starts it again;
    the shard run the server last saw RUNNING reports nothing more (its end went to a dead server), so the
    parent, whose polls ride out the outage, marks it crashed after stall_seconds (40) and submits it again;
    the new run finds its images done. Bound: 300 s after the kill."""
    home = Path(tempfile.mkdtemp(prefix="clearclip-serve-"))
    home.chmod(0o755)  # run as root, PostgreSQL runs as user postgres, who must enter PREFECT_HOME
    try:
        with ServeStack(home / "prefect", shard_workers=1, database="postgres" if POSTGRES else "sqlite") as stack:
            if POSTGRES:
                assert "database: PostgreSQL on 127.0.0.1:" in stack.output.read_text()
            stack.served("worker", "start", "--name orchestrator").kill()
            stack.wait_until(lambda: "worker orchestrator exited (status 137); starting it again"
                             in stack.output.read_text(), 30, "scripts/serve to start the orchestrator again")
            out = home / "run"
            stack.run_deployment("label-dataset/default", parameters(folder, out, tiny_model_name, stall_seconds=40))
            stack.wait_until(lambda: len(list((out / "records").rglob("*.json"))) >= 2 if out.exists() else False,
                             240, "two images labeled", poll=0.5)
            stack.served("prefect", "server", "start").kill()
            parent = stack.wait_until(_when_the_server_answers(lambda: final_parent(stack, out)), 300,
                                      "the parent to finish after the server restart", poll=3)
            assert parent["state"] == "COMPLETED", parent["message"]
            assert "the Prefect server exited (status 137); starting it again" in stack.output.read_text()
            assert (out / "annotations.json").read_bytes() == (reference / "annotations.json").read_bytes()
            summary = json.loads((out / "run.json").read_text())
            assert summary["last_invocation"]["labeled"] == 12  # images of the crashed run count as this run's
            printed = stack.interrupt()
        assert printed.rstrip().endswith("stopped the workers and the Prefect server")
        assert not [p for p in psutil.process_iter(["cmdline"]) if str(home) in " ".join(p.info["cmdline"] or [])]
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _flow_run_process(flow_run_id: str) -> int:
    """The pid of the process that runs this flow run (a process worker gives it PREFECT__FLOW_RUN_ID)."""
    import psutil

    for process in psutil.process_iter():
        try:
            if process.environ().get("PREFECT__FLOW_RUN_ID") == flow_run_id and "prefect.engine" in " ".join(process.cmdline()):
                return process.pid
        except psutil.Error:
            continue
    return 0


def test_a_parent_killed_mid_run_is_submitted_again_and_merges(folder, reference, tiny_model_name, tmp_path):
    """SIGKILL of the parent's process: the worker marks it CRASHED, the automation starts
    resume-label-dataset, and a new parent labels what is left and writes annotations.json."""
    with ServeStack(tmp_path / "prefect") as stack:
        out = tmp_path / "run"
        stack.start_shard_worker("only")
        stack.run_deployment("label-dataset/default", parameters(folder, out, tiny_model_name))
        stack.wait_until(lambda: len(list((out / "shards").glob("*.json"))) >= 1 if out.exists() else False, 240,
                         "a first shard to finish", poll=1)
        first = parent_runs(stack, out)[0]
        pid = stack.wait_until(lambda: _flow_run_process(first["id"]), 30, "the parent's process")
        os.kill(pid, signal.SIGKILL)
        done = stack.wait_until(lambda: [r for r in parent_runs(stack, out) if r["state"] == "COMPLETED"], 300,
                                "a resumed parent to complete", poll=3)
        assert len(done) == 1 and done[0]["name"].startswith("resume-of-")
        assert sorted(r["state"] for r in parent_runs(stack, out)) == ["COMPLETED", "CRASHED"]
        resumes = [r for r in stack.flow_runs() if r["flow"] == "resume-label-dataset"]
        assert [r["state"] for r in resumes] == ["COMPLETED"] and resumes[0]["parameters"]["crashed_run"].endswith(first["id"])
        assert (out / "annotations.json").read_bytes() == (reference / "annotations.json").read_bytes()
        shard_records = [json.loads(p.read_text()) for p in (out / "shards").glob("*.json")]
        assert sum(r["labeled"] for r in shard_records) == 12  # model work: no image labeled twice


def test_a_shard_lost_on_every_attempt_fails_the_parent_with_how_to_resume(folder, reference, tiny_model_name,
                                                                        tmp_path):
    with ServeStack(tmp_path / "prefect") as stack:
        out = tmp_path / "run"
        good = parameters(folder, out, tiny_model_name, max_attempts=2)
        without_classes = {k: v for k, v in good.items() if k != "classes"}
        for bad, named in [({"shard_size": 0}, "shard_size"), ({"max_attempts": 0}, "max_attempts"),
                           ({"min_score": 1.5}, "min_score"), ({"batch_size": 0}, "batch_size"),
                           ({"refine": "foo"}, "refine")]:
            with pytest.raises(RuntimeError) as refused:  # refused by the server's schema check, at submit
                stack.run_deployment("label-dataset/default", {**good, **bad})
            assert "Validation failed" in str(refused.value) and named in str(refused.value), bad
        with pytest.raises(RuntimeError) as refused:
            stack.run_deployment("label-dataset/default", without_classes)
        assert "'classes' is a required property" in " ".join(str(refused.value).split())  # the CLI wraps lines
        assert parent_runs(stack, out) == []  # nothing was submitted
        stack.run_deployment("label-dataset/default", good)
        manifests = stack.wait_until(lambda: sorted((out / "manifests").glob("*.json")) if out.exists() else [],
                                     120, "the shard manifests")
        lost = manifests[0]
        lost.unlink()  # the cause: every run of this shard fails to read its files
        stack.start_shard_worker("only")
        parent = stack.wait_until(lambda: final_parent(stack, out), 240, "the parent run to finish", poll=3)
        assert parent["state"] == "FAILED"
        message = parent["message"]
        assert f"shard {lost.stem} (files: {lost}) failed 2 times" in message
        assert "cannot read shard manifest" in message
        assert "prefect deployment run label-dataset/default --params" in message and str(out) in message

        # the cause removed (the rerun writes its manifests again), the same command completes the run
        resume = json.loads(message.split("--params '")[1].rsplit("'", 1)[0])
        stack.run_deployment("label-dataset/default", resume)
        stack.wait_until(lambda: len([r for r in parent_runs(stack, out) if r["state"] == "COMPLETED"]) == 1, 240,
                         "the resumed run to complete", poll=3)
        assert (out / "annotations.json").read_bytes() == (reference / "annotations.json").read_bytes()

        # a class file that is not there fails the parent before any shard run exists
        nofile = tmp_path / "nofile"
        stack.run_deployment("label-dataset/default", {**parameters(folder, nofile, tiny_model_name),
                                                       "classes": str(tmp_path / "missing-classes.txt")})
        parent = stack.wait_until(lambda: final_parent(stack, nofile), 120, "the run without classes to fail", poll=2)
        assert parent["state"] == "FAILED" and "missing-classes.txt" in parent["message"]
        assert not [r for r in stack.flow_runs() if r["flow"] == "label-shard" and r["parameters"]["out"] == str(nofile)]
        assert not (nofile / "manifests").exists()

        # a job the worker can never run (a device it lacks) fails its shards once each: no resubmission
        cuda = tmp_path / "cuda"
        stack.run_deployment("label-dataset/default", parameters(folder, cuda, tiny_model_name, device="cuda"))
        parent = stack.wait_until(lambda: final_parent(stack, cuda), 240, "the cuda run to finish", poll=3)
        assert parent["state"] == "FAILED" and "was refused, last: Refused: device 'cuda' was asked for" in parent["message"]
        shard_runs = [r for r in stack.flow_runs() if r["flow"] == "label-shard" and r["parameters"]["out"] == str(cuda)]
        manifests = [r["parameters"]["manifest"] for r in shard_runs]
        assert shard_runs and len(set(manifests)) == len(manifests)  # one run per shard

        # two deployment runs into one out at once: the second is refused, naming the first; the first completes
        twice = tmp_path / "twice"
        stack.run_deployment("label-dataset/default", parameters(folder, twice, tiny_model_name))
        stack.run_deployment("label-dataset/default", parameters(folder, twice, tiny_model_name))
        ended = stack.wait_until(lambda: len(runs := [r for r in parent_runs(stack, twice) if r["state"] in
                                                      ("COMPLETED", "FAILED", "CRASHED")]) == 2 and runs, 300,
                                 "both runs into one out to end", poll=3)
        assert sorted(r["state"] for r in ended) == ["COMPLETED", "FAILED"]
        refused = next(r for r in ended if r["state"] == "FAILED")
        first = next(r for r in ended if r["state"] == "COMPLETED")
        assert f"is being labeled by label-dataset flow run '{first['name']}'" in refused["message"]
        assert json.loads((twice / "run.json").read_text())["last_invocation"]["labeled"] == 12
        assert (twice / "annotations.json").read_bytes() == (reference / "annotations.json").read_bytes()


RECORDED_SCRIPT = """
import json
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as client:
    print(json.dumps({"artifacts": [str(a.data) for a in client.read_artifacts()],
                      "logs": [log.message for log in client.read_logs()]}))
"""


def _installed_python(home: Path) -> Path:
    """The python of a fresh virtual environment holding clearclip as a worker machine gets it: a wheel built
    from this checkout and installed (the flows included), not the checkout itself. The other dependencies
    come from this interpreter's site-packages (nothing to download)."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(home / "dist"), str(ROOT)], check=True, timeout=300)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(home / "venv")], check=True, timeout=120)
    python = home / "venv" / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    *map(str, (home / "dist").glob("clearclip-*.whl"))], check=True, timeout=300)
    return python


def _bare_process(stack, home: Path, name: str, command: list[str], extra: dict) -> subprocess.Popen:
    """A process as on a machine that shares nothing with the deployer: its own working directory, HOME,
    TMPDIR and PREFECT_HOME, no checkout on its path, and an environment of PREFECT_API_URL and the storage
    credentials only (plus PATH to find python)."""
    own = home / name
    for folder in ("cwd", "home", "tmp", "prefect"):
        (own / folder).mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(own / "home"), "TMPDIR": str(own / "tmp"),
           "PREFECT_HOME": str(own / "prefect"), "PREFECT_API_URL": stack.env["PREFECT_API_URL"],
           "PREFECT_WORKER_QUERY_SECONDS": "2", **extra}
    process = subprocess.Popen(command, cwd=own / "cwd", env=env, stdout=open(own / "worker.log", "ab"),
                               stderr=subprocess.STDOUT, start_new_session=True)
    stack.workers.append(process)
    return process


def test_workers_that_share_nothing_label_a_bucket(folder, reference, tiny_model_name, tmp_path, object_store, bucket):
    """The dataset lives only in a bucket; the orchestrator and two shard workers run clearclip installed from a
    wheel, from their own folders, with nothing but PREFECT_API_URL and storage credentials; one shard worker is SIGKILLed mid-shard (no
    heartbeats are configured: the parent's stall check recovers its shard). annotations.json in the bucket
    equals a local run's, and the secret is in no parameter, log or object."""
    from object_store import SECRET, credentials_environment

    copy = tmp_path / "images"
    shutil.copytree(folder, copy)
    object_store.upload(copy, f"{bucket}/images")
    shutil.rmtree(copy)
    storage = credentials_environment()
    python = _installed_python(tmp_path / "install")
    where = subprocess.run([str(python), "-c", "import clearclip, flows; print(clearclip.__file__, flows.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert str(ROOT) not in where and where.count(str(tmp_path / "install" / "venv")) == 2, where
    with ServeStack(tmp_path / "prefect", orchestrator=False) as stack:
        machines = tmp_path / "machines"
        _bare_process(stack, machines, "orchestrator", [str(python), "-m", "prefect", "worker", "start", "--pool", "gpu",
                                                        "--work-queue", "orchestrator", "--name", "far-orchestrator"],
                      storage)
        shard = [str(python), "-m", "flows.shard_worker", "--pool", "gpu", "--queue", "shards"]
        doomed = _bare_process(stack, machines, "doomed", [str(python), str(ROOT / "tests" / "kill_after.py"), "2",
                                                           *shard[2:], "--name", "doomed"], storage)
        out = f"{bucket}/run"
        params = {**parameters(f"{bucket}/images", out, tiny_model_name, stall_seconds=30),
                  "storage_options": object_store.options}
        stack.run_deployment("label-dataset/default", params)
        stack.wait_until(lambda: doomed.poll() is not None, 240, "the doomed worker to die mid-shard")
        assert doomed.returncode == -9
        _bare_process(stack, machines, "survivor", [*shard, "--name", "survivor"], storage)
        parent = stack.wait_until(lambda: final_parent(stack, out), 300, "the parent run to finish", poll=3)
        assert parent["state"] == "COMPLETED", parent["message"]
        fs = object_store.filesystem()
        assert fs.cat_file(f"{out}/annotations.json".removeprefix("s3://")) == \
            (reference / "annotations.json").read_bytes()
        runs = stack.flow_runs()
        assert any(r["flow"] == "label-shard" and r["state"] == "CRASHED" for r in runs)
        recorded = subprocess.run([sys.executable, "-c", RECORDED_SCRIPT], env=stack.env, capture_output=True,
                                  text=True, timeout=60)
        assert recorded.returncode == 0 and "annotations file" in recorded.stdout, recorded.stderr
        exposed = [json.dumps(runs), recorded.stdout] + [p.read_text(errors="replace") for p in machines.rglob("*.log")]
        exposed += [fs.cat_file(key).decode("utf-8", "replace") for key in fs.find(out.removeprefix("s3://"))]
        assert not [text for text in exposed if SECRET in text]
