"""Prefect flows in-process (prefect_test_harness): content-keyed shards, merge equals one `clearclip label`
run, a growing dataset, retried failures, and a shard far larger than Prefect's parameter cap."""

import inspect
import json
import re
import shutil
from dataclasses import fields
from pathlib import Path

import pytest
from PIL import Image

from clearclip.cli import main
from clearclip.run.job import LabelJob
from clearclip.run.folder import RunFolder, manifest_key
from folders import smooth_image, write_plain_folder

pytestmark = pytest.mark.slow  # end to end: real servers, workers or processes

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["background", "sky", "grass, lawn", "road"]
SMALL = {"short_side": 40, "crop": 32, "stride": 16, "min_area": 2, "min_area_fraction": 0.0}
SMALL_ARGS = ["--short-side", "40", "--crop", "32", "--stride", "16", "--min-area", "2", "--min-area-fraction", "0"]


@pytest.fixture(autouse=True)
def flows_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))


def flow_run(folder, out, model, **extra):
    from flows.label_dataset import label_dataset

    return label_dataset(dataset=str(folder), classes=CLASSES, out=str(out), model=model, device="cpu", workers=0,
                         **{**SMALL, **extra})


def cli_run(folder, out, model):
    return main(["label", str(folder), "--out", str(out), "--model", model, "--device", "cpu", "--quiet",
                 "--workers", "0", *[a for c in CLASSES for a in ("--class", c)], *SMALL_ARGS])


def test_flow_parameters_are_the_job_fields():
    from flows.label_dataset import label_dataset

    parameters = inspect.signature(label_dataset.fn).parameters
    assert {f.name for f in fields(LabelJob)} <= set(parameters)
    assert parameters["min_area_fraction"].default == LabelJob.__dataclass_fields__["min_area_fraction"].default


def test_shards_are_keyed_by_their_content(tmp_path):
    from flows.label_dataset import cut_shards

    folder = RunFolder(tmp_path)
    names = [f"d{i % 3}/img{i:03d}.png" for i in range(23)]
    shards = cut_shards(folder, list(reversed(names)), 5)
    assert [s.size for s in shards] == [5, 5, 5, 5, 3]
    listed = [n for s in shards for n in folder.read_manifest(s.manifest)]
    assert listed == sorted(names)
    assert shards[0].key == manifest_key(sorted(names)[:5]) and shards[0].manifest.name == f"{shards[0].key}.json"
    assert [s.key for s in cut_shards(folder, names, 5)] == [s.key for s in shards]
    assert cut_shards(folder, names[1:], 5)[0].key != shards[0].key


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("flowdata")
    write_plain_folder(root, 8, size=(40, 52))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return root


def test_label_dataset_merge_equals_single_label_run(prefect_harness, folder, tiny_model_name, tmp_path):
    out = tmp_path / "flow"
    summary = flow_run(folder, out, tiny_model_name, shard_size=3)
    assert summary["last_invocation"]["shards"] == 3 and summary["images_labeled"] == 8
    assert [f["file"] for f in summary["failures"]] == ["broken.png"]
    assert len(list((out / "shards").glob("*.json"))) == 3

    single = tmp_path / "single"
    assert cli_run(folder, single, tiny_model_name) == 0
    assert (out / "annotations.json").read_bytes() == (single / "annotations.json").read_bytes()

    again = flow_run(folder, out, tiny_model_name, shard_size=3, review=True)
    assert again["last_invocation"]["images_to_label"] == 1  # only the broken file, retried
    import fiftyone as fo

    from clearclip.review.sync import default_dataset_name

    reviewed = fo.load_dataset(default_dataset_name(out))
    assert len(reviewed) == 8 and reviewed.count("pseudo_labels.detections") == again["annotations"]
    assert (out / "annotations.json").read_bytes() == (single / "annotations.json").read_bytes()
    failure = json.loads((out / "run.json").read_text())["failures"][0]
    assert failure["file"] == "broken.png" and failure["attempts"] == 2


def grow(root: Path) -> list[str]:
    """Five new images whose names sort between the old ones (img_000 < img_000b < img_001 ...)."""
    added = []
    for i in range(5):
        name = f"{'ab'[i % 2]}/img_{i:03d}b.png"
        Image.fromarray(smooth_image(40, 52, 100 + i)).save(root / name)
        added.append(name)
    return added


@pytest.mark.parametrize("via", ["flow", "cli"])
def test_grown_dataset_labels_exactly_the_new_images(prefect_harness, folder, tiny_model_name, tmp_path, via):
    data = tmp_path / "data"
    shutil.copytree(folder, data)
    (data / "broken.png").unlink()
    out = tmp_path / "run"
    label = (lambda: flow_run(data, out, tiny_model_name, shard_size=3)) if via == "flow" else \
        (lambda: cli_run(data, out, tiny_model_name))
    label()
    before = {p: p.stat().st_mtime_ns for p in (out / "records").rglob("*.json")}
    added = grow(data)
    label()
    summary = json.loads((out / "run.json").read_text())
    assert summary["images_labeled"] == 13 and not summary["missing"]
    labeled_now = summary["last_invocation"]["labeled"]
    assert labeled_now == len(added)
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in before.items())  # old images were not redone

    fresh = tmp_path / "fresh"
    assert cli_run(data, fresh, tiny_model_name) == 0
    assert (out / "annotations.json").read_bytes() == (fresh / "annotations.json").read_bytes()


def test_a_failed_image_is_labeled_once_it_is_fixed(prefect_harness, tiny_model_name, tmp_path):
    data = tmp_path / "data"
    write_plain_folder(data, 3, size=(40, 52))
    (data / "later.png").write_bytes(b"not yet an image")
    out = tmp_path / "run"
    first = flow_run(data, out, tiny_model_name)
    assert [f["file"] for f in first["failures"]] == ["later.png"] and first["failures"][0]["attempts"] == 1
    Image.fromarray(smooth_image(40, 52, 7)).save(data / "later.png")
    second = flow_run(data, out, tiny_model_name)
    assert second["failures"] == [] and second["images_labeled"] == 4
    assert second["last_invocation"]["labeled"] == 1


def test_a_shard_of_20000_files_runs(prefect_harness, tiny_model_name, tmp_path):
    """Its file list is far above Prefect's 512 KB parameter cap; the shard run receives only a manifest path."""
    data = tmp_path / "data"
    long_folder = data / ("a-rather-long-folder-name-as-datasets-have-" * 2)
    long_folder.mkdir(parents=True)
    for i in range(20_000):
        (long_folder / f"broken-camera-frame-{i:06d}.png").touch()  # empty files: fast failures
    Image.fromarray(smooth_image(40, 52, 1)).save(data / "real.png")
    summary = flow_run(data, tmp_path / "run", tiny_model_name, shard_size=20_001)
    assert summary["last_invocation"]["shards"] == 1
    assert summary["images_labeled"] == 1 and len(summary["failures"]) == 20_000
    manifest = next((tmp_path / "run" / "manifests").glob("*.json"))
    assert manifest.stat().st_size > 512 * 1024


def test_out_of_memory_halves_the_images_per_pass(tiny_model_name, tmp_path):
    import torch

    from clearclip import ClearCLIP
    from clearclip.run.plan import label_folder

    class OneImageFits(ClearCLIP):
        """A device that runs out of memory on any pass over more than one image."""

        def segment_categories(self, prepared, *args):
            if len(prepared) > 1:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return super().segment_categories(prepared, *args)

    data = tmp_path / "data"
    write_plain_folder(data, 5, size=(40, 52))
    base = ClearCLIP.from_pretrained(tiny_model_name, device="cpu")
    job = LabelJob(CLASSES, model=tiny_model_name, device="cpu", batch_size=4, workers=0, **SMALL)
    config = job.label_config()
    summary = label_folder(OneImageFits(base.model, base.tokenizer), data, tmp_path / "run", config, job.info(config),
                           progress=False)
    assert summary["last_invocation"]["batch_size"] == 1 and summary["images_labeled"] == 5

    reference = tmp_path / "reference"
    assert cli_run(data, reference, tiny_model_name) == 0
    assert (tmp_path / "run" / "annotations.json").read_bytes() == (reference / "annotations.json").read_bytes()


def test_job_info_is_json_with_custom_templates(tiny_model_name):
    job = LabelJob(["sky", "road"], model=tiny_model_name, templates=["a {}.", "{}!"])
    info = json.loads(json.dumps(job.info()))
    assert info["settings"]["templates"] == ["a {}.", "{}!"]
    assert LabelJob(["sky"], model=tiny_model_name).info()["settings"]["templates"] == "openai_imagenet_80"


def test_a_class_file_edited_between_two_shards_cannot_change_their_vocabulary(prefect_harness, folder,
                                                                                 tiny_model_name, tmp_path, monkeypatch):
    import flows.label_dataset as label_dataset_module

    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    shard = label_dataset_module.label_shard

    def then_edit(*args, **kwargs):  # the shard runs as it does, then someone edits the class file
        result = shard(*args, **kwargs)
        classes.write_text("background\ncat\ndog\n")
        return result

    monkeypatch.setattr(label_dataset_module, "label_shard", then_edit)
    out = tmp_path / "edited"
    summary = label_dataset_module.label_dataset(dataset=str(folder), classes=str(classes), out=str(out),
                                                 model=tiny_model_name, device="cpu", workers=0, shard_size=3, **SMALL)
    assert summary["last_invocation"]["shards"] == 3 and summary["images_labeled"] == 8
    single = tmp_path / "single"
    assert cli_run(folder, single, tiny_model_name) == 0
    assert (out / "annotations.json").read_bytes() == (single / "annotations.json").read_bytes()


def test_a_shard_given_another_job_is_refused_and_writes_nothing(prefect_harness, folder, tiny_model_name, tmp_path):
    from flows.label_shard import REFUSED, label_shard

    out = tmp_path / "run"
    flow_run(folder, out, tiny_model_name, shard_size=20)
    manifest = next((out / "manifests").glob("*.json"))
    for record in (out / "records").rglob("*.json"):
        record.unlink()  # every image needs work again
    other = LabelJob(["background", "sky", "road"], model=tiny_model_name, device="cpu", workers=0, **SMALL)
    state = label_shard(other.resolved().to_dict(), str(folder), str(manifest), str(out), return_state=True)
    assert state.is_failed() and state.name == REFUSED  # the parent does not submit it again
    assert re.search(r"differs from .*config.json \(vocabulary differ\); it wrote nothing", state.message)
    assert not list((out / "records").rglob("*.json"))


def test_the_summary_table_keeps_its_shape_whatever_the_names():
    from flows.label_dataset import summary_markdown

    summary = {"run_dir": "r", "images_labeled": 1, "images_listed": 2, "annotations": 3, "images_per_second": 1.0,
               "last_invocation": {"shards": 1}, "annotations_per_class": {"cat | dog": 3},
               "failures": [{"file": "a|b\nc.png", "error": "broken | really"}]}
    results = {"annotations_file": "r/annotations|.json", "fiftyone_dataset": "clearclip-r", "elapsed_seconds": 12.3}
    rows = [line for line in summary_markdown(summary, results).splitlines() if line.startswith("|")]
    assert all(line.replace("\\|", "").count("|") == 3 for line in rows), rows
    assert "| cat \\| dog | 3 |" in rows and "| a\\|b\\\\nc.png | broken \\| really |" in rows
    assert "| annotations file | `r/annotations\\|.json` |" in rows and "| elapsed | 12 s |" in rows
    assert "| FiftyOne dataset | `clearclip-r` (`clearclip review` opens it) |" in rows


def test_shards_are_sized_to_the_workers():
    from flows.label_dataset import MAX_SHARD_SIZE, auto_shard_size

    assert auto_shard_size(200, workers=2) == 25  # 8 shards: each worker has 4 rounds, none idles
    assert auto_shard_size(1_000_000, workers=8) == MAX_SHARD_SIZE
    assert auto_shard_size(3, workers=16) == 1 and auto_shard_size(0, workers=0) == 1


def test_a_second_parent_into_the_same_out_is_refused(prefect_harness, folder, tiny_model_name, tmp_path):
    from clearclip.errors import EnvironmentFailure
    from clearclip.run.folder import RunFolder

    out = tmp_path / "run"
    with RunFolder(out).orchestrated("label-dataset flow run 'first-run' (1234)"):
        with pytest.raises(EnvironmentFailure, match=r"run is being labeled by label-dataset flow run 'first-run' \(1234\); "
                                                     "wait for it to finish, or label into another out"):
            flow_run(folder, out, tiny_model_name)
        assert not (out / "manifests").exists()  # refused before planning
    summary = flow_run(folder, out, tiny_model_name)  # the first one is gone: the next one runs
    assert summary["images_labeled"] == 8 and summary["last_invocation"]["shards"] == 3  # auto: 9 images, 4 shards of <= 3
