"""Labeling from and into object storage (a real SeaweedFS S3 server): the same results as a local run, reruns
that label exactly what changed, kills that never leave an object that reads as done, one run at a time, and
credentials that appear nowhere."""

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clearclip.cli import main
from clearclip.errors import ClearCLIPError, EnvironmentFailure
from clearclip.run import lease
from clearclip.run.folder import RunFolder
from clearclip.run.plan import list_dataset
from folders import smooth_image, write_plain_folder
from object_store import SECRET

pytestmark = pytest.mark.slow  # a real S3 server (SeaweedFS) and CLI runs

CLASSES = ["background", "sky", "grass"]
ROOT = Path(__file__).resolve().parents[2]


def label_args(data, out, model, store, *extra):
    endpoint = json.dumps(store.options["client_kwargs"])
    return ["label", str(data), "--out", str(out), "--model", model, "--device", "cpu", "--quiet", "--workers", "0",
            "--short-side", "32", "--crop", "32", "--stride", "16", *[a for c in CLASSES for a in ("--class", c)],
            "--storage-option", f"client_kwargs={endpoint}", *extra]


def read(store, url: str) -> bytes:
    return store.filesystem().cat_file(url.removeprefix("s3://"))


def summary(store, out: str) -> dict:
    return json.loads(read(store, f"{out}/run.json"))


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    write_plain_folder(root, 5, size=(40, 52))
    return root


def label_locally(data, tmp_path, model, store, name="local"):
    out = tmp_path / name
    assert main(label_args(data, out, model, store)) == 0
    return out


def test_a_bucket_labels_as_a_folder_does_and_a_rerun_does_no_model_work(data, tmp_path, tiny_model_name,
                                                                         object_store, bucket):
    local = label_locally(data, tmp_path, tiny_model_name, object_store)
    object_store.upload(data, f"{bucket}/images")
    out = f"{bucket}/runs/first"  # a decoding process of its own (spawned: the S3 client does not survive a fork)
    assert main(label_args(f"{bucket}/images", out, tiny_model_name, object_store, "--workers", "1")) == 0
    assert read(object_store, f"{out}/annotations.json") == (local / "annotations.json").read_bytes()
    fs = object_store.filesystem()
    for path in (local / "labels").rglob("*.png"):
        key = f"{out}/labels/{path.relative_to(local / 'labels').as_posix()}".removeprefix("s3://")
        assert fs.cat_file(key) == path.read_bytes()
    assert summary(object_store, out)["dataset"] == f"{bucket}/images"

    assert main(label_args(f"{bucket}/images", out, tiny_model_name, object_store)) == 0
    rerun = summary(object_store, out)["last_invocation"]
    assert rerun["labeled"] == 0 and rerun["skipped_as_done"] == 5
    assert read(object_store, f"{out}/annotations.json") == (local / "annotations.json").read_bytes()


def test_growth_replacement_and_deletion_on_s3_relabel_exactly_those(data, tmp_path, tiny_model_name, object_store,
                                                                     bucket):
    images, out = f"{bucket}/images", f"{bucket}/run"
    names = object_store.upload(data, images)
    assert main(label_args(images, out, tiny_model_name, object_store)) == 0
    fs = object_store.filesystem()
    # the local folder changes the same way, and labels from scratch as the reference
    grown = data / Path(names[0]).parent / (Path(names[0]).stem + "-between.png")  # sorts between old names
    Image.fromarray(smooth_image(40, 52, 77)).save(grown)
    Image.fromarray(smooth_image(40, 52, 78)).save(data / names[1])  # replaced, same name
    (data / names[2]).unlink()
    reference = label_locally(data, tmp_path, tiny_model_name, object_store, "reference")
    fs.put_file(str(grown), f"{images}/{grown.relative_to(data).as_posix()}".removeprefix("s3://"))
    fs.put_file(str(data / names[1]), f"{images}/{names[1]}".removeprefix("s3://"))
    fs.rm_file(f"{images}/{names[2]}".removeprefix("s3://"))

    assert main(label_args(images, out, tiny_model_name, object_store)) == 0
    run = summary(object_store, out)
    assert run["last_invocation"]["labeled"] == 2 and run["removed_records_of_deleted_images"] == 1
    assert read(object_store, f"{out}/annotations.json") == (reference / "annotations.json").read_bytes()
    assert not fs.exists(f"{out}/records/{names[2]}.json".removeprefix("s3://"))


def test_a_record_of_another_version_on_s3_is_relabeled_not_reported_missing_on_every_run(
        data, tmp_path, tiny_model_name, object_store, bucket):
    """A record newer than its image (by the listings' whole seconds) but written for another version of it, as
    when the image is replaced after the listing: the merge forgets it and the run's second pass labels it."""
    images, out = f"{bucket}/images", f"{bucket}/run"
    names = object_store.upload(data, images)
    assert main(label_args(images, out, tiny_model_name, object_store)) == 0
    first = read(object_store, f"{out}/annotations.json")
    time.sleep(1.1)  # the rewritten record is a second newer than the image
    key = f"{out}/records/{names[1]}.json".removeprefix("s3://")
    fs = object_store.filesystem()
    header, _, rest = fs.cat_file(key).partition(b"\n")
    fs.pipe_file(key, json.dumps({**json.loads(header), "etag": "0" * 32}).encode() + b"\n" + rest)

    assert main(label_args(images, out, tiny_model_name, object_store)) == 0
    run = summary(object_store, out)
    assert run["last_invocation"]["labeled"] == 1 and not run["missing"]
    assert read(object_store, f"{out}/annotations.json") == first
    assert main(label_args(images, out, tiny_model_name, object_store)) == 0
    assert summary(object_store, out)["last_invocation"]["labeled"] == 0


def test_a_record_of_the_images_own_second_on_s3_is_judged_by_its_version(data, tiny_model_name, object_store,
                                                                          bucket):
    """Listings give whole seconds: an image replaced in the second its record was written reads as no newer
    than the record, so the record's header decides."""
    images, out = f"{bucket}/images", f"{bucket}/run"
    object_store.upload(data, images)
    assert main(label_args(images, out, tiny_model_name, object_store)) == 0
    folder = RunFolder(out, object_store.options)
    records = folder.store.list("records")
    listed = list_dataset(images, folder, object_store.options).images
    same_second = [replace(image, mtime_ns=records[f"records/{image.name}.json"].mtime_ns) for image in listed]
    assert folder.pending(same_second) == []
    replaced = [replace(same_second[2], etag="0" * 32), *same_second[3:]]
    assert folder.pending(replaced) == [replaced[0]]


def test_a_failed_image_on_s3_is_retried_and_never_taken_for_done(data, tmp_path, tiny_model_name, object_store,
                                                                  bucket):
    images, out = f"{bucket}/images", f"{bucket}/run"
    names = object_store.upload(data, images)
    fs = object_store.filesystem()
    fs.pipe_file(f"{images}/broken.png".removeprefix("s3://"), b"\x89PNG\r\n\x1a\n not really")
    assert main(label_args(images, out, tiny_model_name, object_store)) == 0
    failures = summary(object_store, out)["failures"]
    assert [f["file"] for f in failures] == ["broken.png"] and "not an image" in failures[0]["error"]
    assert main(label_args(images, out, tiny_model_name, object_store)) == 0
    again = summary(object_store, out)
    assert again["failures"][0]["attempts"] == 2 and again["last_invocation"]["labeled"] == 0
    assert again["images_labeled"] == len(names)


def test_a_killed_labeler_leaves_nothing_that_reads_as_done(data, tmp_path, tiny_model_name, object_store, bucket):
    local = label_locally(data, tmp_path, tiny_model_name, object_store)
    images, out = f"{bucket}/images", f"{bucket}/run"
    object_store.upload(data, images)
    killed = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_after.py"), "2", "clearclip",
                             *label_args(images, out, tiny_model_name, object_store)], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert killed.returncode == -9, killed.stderr
    fs = object_store.filesystem()
    assert not fs.exists(f"{out}/annotations.json".removeprefix("s3://"))
    records = RunFolder(out, object_store.options).store.list("records")
    assert 2 <= len(records) < 5
    assert main(label_args(images, out, tiny_model_name, object_store)) == 0
    assert summary(object_store, out)["last_invocation"]["labeled"] == 5 - len(records)
    assert read(object_store, f"{out}/annotations.json") == (local / "annotations.json").read_bytes()


def test_an_upload_that_dies_midway_leaves_no_object(object_store, bucket):
    folder = RunFolder(f"{bucket}/run", object_store.options)
    with pytest.raises(RuntimeError):
        with folder.written_through(folder.annotations_path) as path:
            path.write_bytes(b"x" * (12 << 20))  # multipart-sized
            raise RuntimeError("killed while writing")
    assert not folder.exists(folder.annotations_path)


def test_two_runs_into_one_s3_out_one_is_refused(data, tmp_path, tiny_model_name, object_store, bucket, capsys):
    images, out = f"{bucket}/images", f"{bucket}/run"
    object_store.upload(data, images)
    folder = RunFolder(out, object_store.options)
    with folder.lock(exclusive=True):
        assert main(label_args(images, out, tiny_model_name, object_store)) == 1
        err = capsys.readouterr().err
        assert "in use by clearclip label" in err and len(err.strip().splitlines()) == 1
        with pytest.raises(EnvironmentFailure, match="in use"):
            with folder.lock(exclusive=False):
                pass
    with folder.lock(exclusive=False):  # a shard run: a whole-folder run waits for it, refused meanwhile
        with pytest.raises(EnvironmentFailure, match="in use by a shard run"):
            with folder.lock(exclusive=True):
                pass
    assert main(label_args(images, out, tiny_model_name, object_store)) == 0
    assert not folder.store.list("leases")  # every holder deleted its lease


def test_a_dead_holders_lease_expires(object_store, bucket, monkeypatch):
    folder = RunFolder(f"{bucket}/run", object_store.options)
    stale = {"owner": "clearclip label (pid 1 on gone)", "expires": time.time() - 1}
    folder.store.write_bytes("leases/exclusive.json", json.dumps(stale).encode())
    with folder.lock(exclusive=True):
        held = json.loads(folder.store.read_bytes("leases/exclusive.json"))
        assert held["owner"] != stale["owner"] and held["expires"] > time.time()
    monkeypatch.setattr(lease, "LEASE_SECONDS", 0.6)  # renewed every 0.2 s: a live lease outlasts its length
    with folder.orchestrated("first parent"):
        time.sleep(1.5)
        with pytest.raises(EnvironmentFailure, match="being labeled by first parent"):
            with folder.orchestrated("second parent"):
                pass


def test_a_holder_whose_lease_was_taken_leaves_the_new_holders_lease_alone(object_store, bucket, monkeypatch,
                                                                           capsys):
    """A holder that stalled past its lease, which another run then took, neither renews over the new holder's
    lease nor deletes it when it ends, and says so."""
    folder = RunFolder(f"{bucket}/run", object_store.options)
    monkeypatch.setattr(lease, "LEASE_SECONDS", 0.6)  # renewed every 0.2 s
    with folder.orchestrated("stalled parent"):
        held = json.loads(folder.store.read_bytes("leases/orchestrator.json"))
        assert held["owner"] == "stalled parent" and held["token"]
        taker = {**held, "owner": "second parent", "token": "another", "expires": time.time() + 3600}
        folder.store.write_bytes("leases/orchestrator.json", json.dumps(taker).encode())  # as a taker after expiry
        time.sleep(1.0)  # several renewals
        assert json.loads(folder.store.read_bytes("leases/orchestrator.json")) == taker
    assert json.loads(folder.store.read_bytes("leases/orchestrator.json")) == taker  # not deleted either
    err = capsys.readouterr().err
    assert err.count("was taken by second parent") == 1 and "lease leases/orchestrator.json" in err, err
    with pytest.raises(EnvironmentFailure, match="being labeled by second parent"):
        with folder.orchestrated("third parent"):
            pass


def test_classes_and_thresholds_read_from_a_bucket(data, tmp_path, tiny_model_name, object_store, bucket):
    fs = object_store.filesystem()
    fs.pipe_file(f"{bucket}/classes.txt".removeprefix("s3://"), "\n".join(CLASSES).encode())
    fs.pipe_file(f"{bucket}/thresholds.json".removeprefix("s3://"), b'{"sky": {"min_score": 0.99}}')
    out = tmp_path / "run"
    args = [a for a in label_args(data, out, tiny_model_name, object_store) if a not in CLASSES and a != "--class"]
    assert main([*args, "--classes-file", f"{bucket}/classes.txt", "--class-thresholds",
                 f"{bucket}/thresholds.json"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["vocabulary"] == CLASSES and config["thresholds"]["per_class"]["sky"]["min_score"] == 0.99


def test_credentials_appear_in_nothing_a_run_writes(data, tiny_model_name, object_store, bucket):
    images, out = f"{bucket}/images", f"{bucket}/run"
    object_store.upload(data, images)
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == SECRET  # the run signs with it
    assert main(label_args(images, out, tiny_model_name, object_store)) == 0
    fs = object_store.filesystem()
    written = fs.find(out.removeprefix("s3://"))
    assert any(key.endswith("run.json") for key in written) and any(key.endswith("config.json") for key in written)
    for key in written:
        assert SECRET.encode() not in fs.cat_file(key), key


def test_credentials_in_storage_options_are_refused(data, tmp_path, tiny_model_name, object_store, capsys):
    args = label_args(data, tmp_path / "run", tiny_model_name, object_store, "--storage-option", f"secret={SECRET}")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "must not hold credentials" in err and SECRET not in err


def test_a_url_without_its_backend_names_the_extra():
    import importlib.util

    if importlib.util.find_spec("adlfs") is not None:
        pytest.skip("adlfs is installed here")
    with pytest.raises(ClearCLIPError, match=r"pip install 'clearclip\[az\]'"):
        RunFolder("az://container/run")


def test_an_image_fetched_from_s3_decodes_as_the_file_does(tmp_path, object_store, bucket):
    from clearclip.io.images import load_image
    from clearclip.io.storage import open_storage

    rgba = np.dstack([smooth_image(30, 20, 3), np.full((30, 20), 128, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "a.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the fetched bytes must be turned upright too
    Image.fromarray(smooth_image(30, 20, 4)).save(tmp_path / "b.jpg", exif=exif)
    object_store.upload(tmp_path, f"{bucket}/x")
    storage = open_storage(f"{bucket}/x", object_store.options)
    for name in ("a.png", "b.jpg"):
        fetched = load_image(f"{bucket}/x/{name}", content=storage.read_bytes(name))
        assert np.array_equal(fetched, load_image(tmp_path / name))


def test_an_unreachable_store_fails_as_the_machine_not_the_input():
    """A request that fails (here: nothing listens at the endpoint) is an OSError whichever client sent it, so a
    lease keeps renewing through a blip, and a read, one of a merge's included, is an environment failure naming
    the object (not an image taken for unlabeled)."""
    import socket

    from clearclip.io.storage import ObjectStorage

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
    for options in ({"client_kwargs": {"endpoint_url": endpoint}},  # obstore
                    {"client_kwargs": {"endpoint_url": endpoint}, "config_kwargs": {"retries": {"max_attempts": 1}}}):
        storage = ObjectStorage("s3://nowhere/run", options)
        assert (storage.fast is None) == ("config_kwargs" in options)  # the second through s3fs
        with pytest.raises(EnvironmentFailure, match="s3://nowhere/run/run.json"):
            storage.read_bytes("run.json")
        with pytest.raises(EnvironmentFailure, match="s3://nowhere/run/records/a.jpg.json"):
            storage.read_many(["records/a.jpg.json"])
        with pytest.raises(OSError):
            storage.write_bytes("leases/exclusive.json", b"{}")


def test_a_listing_is_complete_whatever_the_layout(object_store, bucket):
    """obstore's listing (subfolders listed concurrently, a few levels down a lone folder) finds exactly what a
    plain s3fs listing finds: more than a page of objects side by side, deep lone folders, folders beside files."""
    from clearclip.io.storage import ObjectStorage

    keys = [f"flat/k{i:04d}" for i in range(1100)] + ["one/two/three/four/x.jpg", "one/two/y.jpg", "one/z.jpg",
                                                        "top.jpg", "a/b.jpg", "a/.hidden", "a/c/d.jpg"]
    object_store.filesystem().pipe({f"{bucket.removeprefix('s3://')}/listed/{k}": b"x" for k in keys})
    fast = ObjectStorage(f"{bucket}/listed", object_store.options)
    plain = ObjectStorage(f"{bucket}/listed", {**object_store.options, "config_kwargs": {}})  # s3fs
    assert fast.fast is not None and plain.fast is None
    for prefix in ("", "one", "flat", "a"):
        expected = {k for k in keys if k.startswith(f"{prefix}/" if prefix else "") and ".hidden" not in k}
        assert set(fast.list(prefix)) == set(plain.list(prefix)) == expected, prefix
    assert set(fast.list("a", hidden=True)) == {"a/b.jpg", "a/.hidden", "a/c/d.jpg"}
