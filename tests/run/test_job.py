"""The job: its resolved form (what shards receive) reads no file, and its info is computed without torch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clearclip import ClearCLIPError
from clearclip.cli import main
from clearclip.run.folder import RunFolder
from clearclip.run.job import LabelJob
from folders import write_plain_folder


def test_the_resolved_job_carries_the_classes_and_thresholds_as_values(tmp_path, tiny_model_name):
    classes = tmp_path / "classes.txt"
    classes.write_text("background\nsky, air\nroad\n")
    thresholds = tmp_path / "per_class.yaml"
    thresholds.write_text("road:\n  min_area: 120\n")
    job = LabelJob(str(classes), model=tiny_model_name, class_thresholds=str(thresholds), min_score=0.2)
    resolved = job.resolved()
    assert resolved.classes == ["background", "sky, air", "road"]
    assert resolved.class_thresholds == {"road": {"pixel_threshold": 0.0, "min_score": 0.2, "min_area": 120,
                                                  "min_area_fraction": 0.001}}
    assert json.loads(json.dumps(resolved.to_dict())) == resolved.to_dict()  # a Prefect parameter as it is
    classes.write_text("cat\ndog\n")  # the file changes, or is missing on the worker
    thresholds.unlink()
    assert resolved.info() == LabelJob(**resolved.to_dict()).info()
    assert resolved.info()["vocabulary"] == ["background", "sky, air", "road"]
    assert resolved.info()["thresholds"]["per_class"]["road"]["min_area"] == 120
    with pytest.raises(ClearCLIPError, match="cannot read class thresholds"):
        job.label_config()


def test_inline_thresholds_are_checked_like_a_file(tiny_model_name):
    with pytest.raises(ClearCLIPError, match="class_thresholds: 'cat' is not a class to label"):
        LabelJob(["sky"], model=tiny_model_name, class_thresholds={"cat": {"min_area": 3}}).label_config()
    with pytest.raises(ClearCLIPError, match="min_score must be a number from 0 to 1"):
        LabelJob(["sky"], model=tiny_model_name, class_thresholds={"sky": {"min_score": 1.5}}).label_config()


@pytest.mark.parametrize("template", ["a photo of {{}}", "{}{}", "{} {x}", "{0}", "no placeholder", "{:>10}"])
def test_templates_need_exactly_one_plain_placeholder(template):
    with pytest.raises(ClearCLIPError, match="exactly one '{}'"):
        LabelJob(["sky"], templates=[template])
    assert LabelJob(["sky"], templates=["a {{curly}} {}"]).templates == ["a {{curly}} {}"]


def test_a_stride_above_the_crop_is_refused_before_any_model_loads():
    with pytest.raises(ClearCLIPError, match="stride 64 is larger than crop 32"):
        LabelJob(["sky"], crop=32, stride=64).label_config()


def test_a_shard_job_that_differs_from_the_run_config_is_refused(tmp_path, tiny_model_name):
    folder = RunFolder(tmp_path / "run")
    job = LabelJob(["sky", "road"], model=tiny_model_name)
    folder.prepare(job.info())
    folder.check_config(job.resolved().info())
    other = LabelJob(["sky", "road", "tree"], model=tiny_model_name)
    with pytest.raises(ClearCLIPError, match=r"differs from .*config.json \(vocabulary differ\)"):
        folder.check_config(other.info())
    with pytest.raises(ClearCLIPError, match="config.json is missing"):
        RunFolder(tmp_path / "elsewhere").check_config(job.info())


def test_rerunning_a_finished_run_never_imports_torch(tmp_path, tiny_model_name):
    data, out = tmp_path / "data", tmp_path / "run"
    write_plain_folder(data, 3, size=(40, 52))
    args = ["label", str(data), "--out", str(out), "--model", tiny_model_name, "--device", "cpu", "--quiet",
            "--workers", "0", "--short-side", "32", "--crop", "32", "--stride", "16", "--class", "sky", "--class", "road"]
    assert main(args) == 0
    before = (out / "annotations.json").read_bytes()
    code = ("import json, sys\nfrom clearclip.cli import main\ncode = main(json.loads(sys.argv[1]))\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip'))\n"
            "print(json.dumps(loaded)); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"  # the resume check and the merge loaded no torch
    summary = json.loads((out / "run.json").read_text())
    assert summary["last_invocation"]["labeled"] == 0 and summary["last_invocation"]["skipped_as_done"] == 3
    assert (out / "annotations.json").read_bytes() == before


def test_a_class_file_with_a_byte_order_mark_reads_as_without(tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_bytes("background\nsky\n".encode("utf-8-sig"))
    config = LabelJob(str(classes), background_threshold=0.3).label_config()
    assert config.vocabulary.names == ["background", "sky"] and config.vocabulary.has_background


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_a_class_or_thresholds_file_that_is_no_file_is_one_error(tmp_path, kind):
    path = {"fifo": tmp_path / "fifo", "device": Path("/dev/zero"), "folder": tmp_path}[kind]
    if kind == "fifo":
        os.mkfifo(path)  # reading it would block forever
    with pytest.raises(ClearCLIPError, match=f"class file {path} is not a regular file|cannot read class file {path}"):
        LabelJob(str(path)).label_config()
    with pytest.raises(ClearCLIPError, match=f"class thresholds file {path} is not a regular file|cannot read class"):
        LabelJob(["sky"], class_thresholds=str(path)).label_config()


@pytest.mark.parametrize("name,text", [("t.yaml", "sky:\n  min_area: 3\nsky:\n  min_area: 9\n"),
                                       ("t.yaml", "sky: {min_area: 3, min_area: 9}\n"),
                                       ("t.json", '{"sky": {"min_area": 3}, "sky": {"min_area": 9}}')])
def test_a_key_given_twice_in_a_thresholds_file_is_refused(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ClearCLIPError, match=f"cannot read class thresholds {path}: .*'(sky|min_area)' is given twice"):
        LabelJob(["sky"], class_thresholds=str(path)).label_config()
