"""Prefect flows in-process (prefect_test_harness): deterministic shards, merge equals one `clearclip label` run."""

import json
from pathlib import Path

import pytest

from clearclip.cli import main
from clearclip.jobs import make_shards
from folders import write_plain_folder

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["background", "sky", "grass, lawn", "road"]
SEGMENT = {"short_side": 40, "crop": 32, "stride": 16}


def test_shards_are_deterministic_and_cover_every_image_once():
    files = [f"d{i % 3}/img{i:03d}.png" for i in range(23)]
    shards = make_shards(files, 5)
    assert make_shards(list(reversed(files)), 5) == shards
    flat = [f for shard in shards for f in shard]
    assert sorted(flat) == sorted(files) and len(flat) == len(set(flat))
    assert [len(s) for s in shards] == [5, 5, 5, 5, 3]
    with pytest.raises(ValueError):
        make_shards(files, 0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("flowdata")
    write_plain_folder(root, 8, size=(40, 52))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return root


def test_label_dataset_merge_equals_single_label_run(prefect_harness, folder, tiny_model_name, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from flows.label_dataset import label_dataset

    out = tmp_path / "flow"
    summary = label_dataset(dataset=str(folder), classes=CLASSES, out=str(out), model=tiny_model_name, device="cpu",
                            shard_size=3, min_area=2, segment=SEGMENT)
    assert summary["shards"] == 3 and summary["images_labeled"] == 8
    assert [f["file"] for f in summary["failures"]] == ["broken.png"]
    assert len(list((out / "shards").glob("*.json"))) == 3

    single = tmp_path / "single"
    assert main(["label", str(folder), "--out", str(single), "--model", tiny_model_name, "--device", "cpu", "--quiet",
                 *[a for c in CLASSES for a in ("--class", c)], "--min-area", "2", "--short-side", "40", "--crop", "32",
                 "--stride", "16", "--workers", "0"]) == 0
    assert (out / "annotations.json").read_bytes() == (single / "annotations.json").read_bytes()

    again = label_dataset(dataset=str(folder), classes=CLASSES, out=str(out), model=tiny_model_name, device="cpu",
                          shard_size=3, min_area=2, segment=SEGMENT, review=True)
    assert again["last_invocation"]["shards_labeled"] == 0
    import fiftyone as fo

    from clearclip.review import default_dataset_name

    reviewed = fo.load_dataset(default_dataset_name(out))
    assert len(reviewed) == 8 and reviewed.count("pseudo_labels.detections") == again["annotations"]
    assert (out / "annotations.json").read_bytes() == (single / "annotations.json").read_bytes()
    run = json.loads((out / "run.json").read_text())
    assert run["images_labeled"] == 8 and run["shards"] == 3


def test_shard_retries_cuda_out_of_memory_with_smaller_batches(prefect_harness, folder, tiny_model_name, tmp_path,
                                                                monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    import torch

    import flows.label_shard as shard_module
    from clearclip import ClearCLIP
    from clearclip.images import list_images
    from clearclip.jobs import LabelJob

    class OneImageFits(ClearCLIP):
        """A device that runs out of memory on any batch of more than one image."""

        def segment_prepared(self, prepared, vocabulary, settings):
            if len(prepared) > 1:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return super().segment_prepared(prepared, vocabulary, settings)

    base = ClearCLIP.from_pretrained(tiny_model_name, device="cpu")
    monkeypatch.setattr(shard_module, "load_labeler", lambda *args: OneImageFits(base.model, base.tokenizer))
    files = [f for f in list_images(folder) if f != "broken.png"][:5]
    job = LabelJob(CLASSES, model=tiny_model_name, device="cpu", batch_size=4, num_workers=0, segment=SEGMENT)
    record = shard_module.label_shard(job.to_dict(), str(folder), files, str(tmp_path), 0)
    assert record["batch_size"] == 1 and record["labeled"] == len(files)
    assert len(list((tmp_path / "parts").rglob("*.json"))) == len(files)


def test_job_info_is_json_with_custom_templates(tiny_model_name):
    from clearclip.jobs import LabelJob

    job = LabelJob(["sky", "road"], model=tiny_model_name, segment={"templates": ["a {}.", lambda name: f"{name}!"]})
    info = json.loads(json.dumps(job.info()))
    assert info["settings"]["templates"] == ["a {}.", "{}!"]
    assert LabelJob(["sky"], model=tiny_model_name).info()["settings"]["templates"] == "openai_imagenet_80"
