"""`clearclip label` against a hostile world: broken run folders, changed datasets, full disks, a second run,
Ctrl-C. Each case is one clear line and a run that goes on where it can."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from clearclip.cli import main
from clearclip.run.folder import RunFolder
from folders import smooth_image, write_plain_folder

CLASSES = ["background", "sky", "grass"]


def label_args(data, out, model, *extra):
    return ["label", str(data), "--out", str(out), "--model", model, "--device", "cpu", "--quiet", "--workers", "0",
            "--short-side", "32", "--crop", "32", "--stride", "16", *[a for c in CLASSES for a in ("--class", c)], *extra]


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    write_plain_folder(root, 4, size=(40, 52))
    return root


@pytest.fixture
def reference(data, tmp_path, tiny_model_name):
    out = tmp_path / "reference"
    assert main(label_args(data, out, tiny_model_name)) == 0
    return out


def labeled_now(out):
    return json.loads((out / "run.json").read_text())["last_invocation"]["labeled"]


@pytest.mark.parametrize("damage", [b"\xff\xfe not utf-8", b"{}", b"", b'{"file": "a/img_000.png", "status": "done"}'])
def test_an_unreadable_record_means_not_done(data, reference, tmp_path, tiny_model_name, damage):
    out = tmp_path / "run"
    assert main(label_args(data, out, tiny_model_name)) == 0
    RunFolder(out).record_path("a/img_000.png").write_bytes(damage)
    assert main(label_args(data, out, tiny_model_name)) == 0
    assert labeled_now(out) == 1
    assert (out / "annotations.json").read_bytes() == (reference / "annotations.json").read_bytes()


def _edit_header(text, **changes):
    header, *lines = text.split("\n")
    values = json.loads(header)
    for key, value in changes.items():
        if value is None:
            values.pop(key)
        else:
            values[key] = value
    return "\n".join([json.dumps(values), *lines])


def _edit_first_annotation(text, **changes):
    header, first, *lines = text.split("\n")
    return "\n".join([header, json.dumps({**json.loads(first), **changes}), *lines])


RECORD_DAMAGE = {  # what a record may hold that clearclip never wrote
    "a cut annotation line": lambda text: text[: text.rindex("}", 0, len(text) - 2) - 3] + "\n",
    "a header without per_category": lambda text: _edit_header(text, per_category=None),
    "a width that is no number": lambda text: _edit_header(text, width="wide"),
    "an unknown category": lambda text: _edit_first_annotation(text, category_id=999),
    "a mask of another size": lambda text: _edit_first_annotation(
        text, segmentation={**json.loads(text.split("\n")[1])["segmentation"], "size": [7, 7]}),
    "a score above 1": lambda text: _edit_first_annotation(text, score=1.5),
    "counts that differ from the lines": lambda text: _edit_header(text, per_category={"1": 999}),
}


@pytest.mark.parametrize("damage", list(RECORD_DAMAGE))
def test_a_record_that_does_not_check_is_labeled_again(data, reference, tmp_path, tiny_model_name, damage, capsys):
    out = tmp_path / "run"
    assert main(label_args(data, out, tiny_model_name)) == 0
    record = RunFolder(out).record_path("a/img_000.png")
    assert len(record.read_text().splitlines()) > 2, "the image needs annotations for this test"
    record.write_text(RECORD_DAMAGE[damage](record.read_text()))
    capsys.readouterr()
    assert main(label_args(data, out, tiny_model_name)) == 0
    json.loads((out / "annotations.json").read_text())  # valid JSON, whatever the record held
    assert (out / "annotations.json").read_bytes() == (reference / "annotations.json").read_bytes()
    err = capsys.readouterr().err
    if "header" not in damage and "width" not in damage:  # a header that does not check means "not done" at once
        assert f"{record} is not a record clearclip wrote" in err


def test_both_passes_of_a_run_count_in_its_summary(data, reference, tmp_path, tiny_model_name):
    out = tmp_path / "run"
    assert main(label_args(data, out, tiny_model_name)) == 0
    record = RunFolder(out).record_path("a/img_000.png")
    record.write_text(RECORD_DAMAGE["an unknown category"](record.read_text()))  # found by the merge: pass 2
    (out / "labels" / "b" / "img_001.png").unlink()  # found by the plan: pass 1
    assert main(label_args(data, out, tiny_model_name)) == 0
    assert labeled_now(out) == 2
    assert (out / "annotations.json").read_bytes() == (reference / "annotations.json").read_bytes()


def test_a_record_body_that_is_not_utf8_is_labeled_again(data, reference, tmp_path, tiny_model_name):
    out = tmp_path / "run"
    assert main(label_args(data, out, tiny_model_name)) == 0
    record = RunFolder(out).record_path("a/img_000.png")
    record.write_bytes(record.read_bytes().split(b"\n")[0] + b"\n\xff\xfe{not utf-8}\n")
    assert main(label_args(data, out, tiny_model_name)) == 0
    assert (out / "annotations.json").read_bytes() == (reference / "annotations.json").read_bytes()


@pytest.mark.parametrize("damage", [b"", b"not a png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x07\x00\x00\x00\x07"])
def test_a_label_map_that_is_no_png_of_the_image_size_is_made_again(data, reference, tmp_path, tiny_model_name,
                                                                       damage):
    out = tmp_path / "run"
    assert main(label_args(data, out, tiny_model_name)) == 0
    (out / "labels" / "b" / "img_001.png").write_bytes(damage)
    assert main(label_args(data, out, tiny_model_name)) == 0
    assert labeled_now(out) == 1
    assert (out / "annotations.json").read_bytes() == (reference / "annotations.json").read_bytes()


def test_a_deleted_label_map_is_made_again(data, reference, tmp_path, tiny_model_name):
    out = tmp_path / "run"
    assert main(label_args(data, out, tiny_model_name)) == 0
    (out / "labels" / "b" / "img_001.png").unlink()
    assert main(label_args(data, out, tiny_model_name)) == 0
    assert labeled_now(out) == 1 and (out / "labels" / "b" / "img_001.png").is_file()
    assert (out / "annotations.json").read_bytes() == (reference / "annotations.json").read_bytes()


def test_replaced_and_deleted_images(data, tmp_path, tiny_model_name):
    out = tmp_path / "run"
    assert main(label_args(data, out, tiny_model_name)) == 0
    Image.fromarray(smooth_image(60, 30, 42)).save(data / "a" / "img_000.png")  # other size and content
    (data / "b" / "img_001.png").unlink()
    assert main(label_args(data, out, tiny_model_name)) == 0
    summary = json.loads((out / "run.json").read_text())
    assert summary["last_invocation"]["labeled"] == 1 and summary["removed_records_of_deleted_images"] == 1
    document = json.loads((out / "annotations.json").read_text())
    assert {i["file_name"]: (i["width"], i["height"]) for i in document["images"]}["a/img_000.png"] == (30, 60)
    assert "b/img_001.png" not in {i["file_name"] for i in document["images"]}
    assert not (out / "labels" / "b" / "img_001.png").exists() and not RunFolder(out).record_path("b/img_001.png").exists()
    fresh = tmp_path / "fresh"
    assert main(label_args(data, fresh, tiny_model_name)) == 0
    assert (out / "annotations.json").read_bytes() == (fresh / "annotations.json").read_bytes()


@pytest.mark.parametrize("content", ["garbage", "[1, 2]", ""])
def test_a_broken_config_is_one_line(data, tmp_path, tiny_model_name, capsys, content):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(content)
    assert main(label_args(data, out, tiny_model_name)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clearclip: error:") and "is not a clearclip run config" in err and "delete it" in err
    assert len(err.splitlines()) == 1


def test_bad_options_write_nothing_and_a_run_without_results_takes_new_settings(data, tmp_path, tiny_model_name):
    out = tmp_path / "run"
    with pytest.raises(SystemExit):
        main(label_args(data, out, tiny_model_name, "--stride", "0"))
    assert not out.exists()
    bad = tmp_path / "thresholds.yaml"
    bad.write_text("sky: {min_score: high}")
    assert main(label_args(data, out, tiny_model_name, "--class-thresholds", str(bad))) == 2
    assert not out.exists()
    # a folder whose settings were recorded but that holds no result yet takes other settings
    RunFolder(out).prepare({"vocabulary": ["other"]})
    assert main(label_args(data, out, tiny_model_name)) == 0


def test_a_second_run_into_a_busy_folder_is_refused(data, tmp_path, tiny_model_name, capsys):
    out = tmp_path / "run"
    with RunFolder(out).lock(exclusive=True):
        assert main(label_args(data, out, tiny_model_name)) == 1
    err = capsys.readouterr().err
    assert "in use by another clearclip run" in err and len(err.strip().splitlines()) == 1
    assert main(label_args(data, out, tiny_model_name)) == 0


def test_a_full_disk_is_one_line_and_a_rerun_resumes(data, reference, tmp_path, tiny_model_name, capsys, monkeypatch):
    out = tmp_path / "run"
    real_write = RunFolder.write_label
    written = []

    def write_until_full(folder, name, png):
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(folder.label_path(name)))
        written.append(name)
        return real_write(folder, name, png)

    monkeypatch.setattr(RunFolder, "write_label", write_until_full)  # finishing in this process, to see the patch
    assert main(label_args(data, out, tiny_model_name, "--batch-size", "1", "--finishers", "0")) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no space left on the device of" in err and str(out) in err
    assert "MB more for the 2 images left" in err and "rerun the same command" in err
    monkeypatch.setattr(RunFolder, "write_label", real_write)
    assert main(label_args(data, out, tiny_model_name)) == 0
    assert (out / "annotations.json").read_bytes() == (reference / "annotations.json").read_bytes()


def test_out_inside_the_dataset_never_labels_its_own_outputs(data, tmp_path, tiny_model_name):
    out = data / "runs" / "mine"
    for _ in range(2):
        assert main(label_args(data, out, tiny_model_name)) == 0
        assert json.loads((out / "run.json").read_text())["images_listed"] == 4


def test_a_non_utf8_file_name_fails_alone(data, tmp_path, tiny_model_name):
    Image.fromarray(smooth_image(40, 52, 5)).save(data / os.fsdecode(b"caf\xe9.png"))
    out = tmp_path / "run"
    assert main(label_args(data, out, tiny_model_name)) == 0
    summary = json.loads((out / "run.json").read_text())
    assert summary["images_labeled"] == 4
    assert summary["failures"] == [{"file": "caf\\xe9.png", "error": "file name is not valid UTF-8; rename it"}]


def test_outputs_get_the_normal_file_mode(data, tmp_path, tiny_model_name):
    previous = os.umask(0o022)
    try:
        out = tmp_path / "run"
        assert main(label_args(data, out, tiny_model_name)) == 0
    finally:
        os.umask(previous)
    files = [out / "annotations.json", out / "run.json", out / "config.json", out / "labels" / "a" / "img_000.png",
             RunFolder(out).record_path("a/img_000.png")]
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {"0o644"}


def test_a_run_folder_keeps_one_precision(data, tmp_path, tiny_model_name, capsys):
    out = tmp_path / "run"
    assert main(label_args(data, out, tiny_model_name)) == 0
    (out / "precision.json").write_text('{"precision": "fp16"}')  # as if a GPU labeled it first
    (out / "labels" / "a" / "img_000.png").unlink()
    assert main(label_args(data, out, tiny_model_name)) == 2
    assert "computed in fp16, and this labeler computes in fp32" in capsys.readouterr().err


def test_a_run_folder_keeps_one_cpu_thread_count(data, tmp_path, tiny_model_name, capsys):
    out, fresh = tmp_path / "run", tmp_path / "fresh"
    assert main(label_args(data, out, tiny_model_name, "--threads", "1")) == 0
    assert json.loads((out / "precision.json").read_text()) == {"precision": "fp32", "threads": 1}
    (out / "labels" / "a" / "img_000.png").unlink()
    capsys.readouterr()
    assert main(label_args(data, out, tiny_model_name, "--threads", "2")) == 2
    err = capsys.readouterr().err
    assert "computed with 1 CPU threads, and this labeler uses 2" in err and "pass --threads 1" in err
    assert main(label_args(data, out, tiny_model_name, "--threads", "1")) == 0
    assert main(label_args(data, fresh, tiny_model_name, "--threads", "1")) == 0
    assert (out / "annotations.json").read_bytes() == (fresh / "annotations.json").read_bytes()


@pytest.mark.parametrize("garbage", ["", "not json", '{"precision": 5}', '["fp32"]'])
def test_an_unreadable_precision_record_counts_as_none(data, tmp_path, tiny_model_name, garbage):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precision.json").write_text(garbage)
    assert main(label_args(data, out, tiny_model_name)) == 0
    assert json.loads((out / "annotations.json").read_text())["info"]["precision"] == "fp32"


@pytest.mark.slow
def test_ctrl_c_while_decoding_prints_one_line(tiny_model_name, tmp_path):
    data = tmp_path / "data"
    write_plain_folder(data, 200, size=(96, 128))  # enough that the run is still decoding at the first record
    command = [sys.executable, "-m", "clearclip", *label_args(data, tmp_path / "run", tiny_model_name)]
    command[command.index("--workers") + 1] = "1"
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "run" / "records").rglob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before the first record was seen"
    os.killpg(process.pid, signal.SIGINT)  # what a terminal does: the whole group, decode worker included
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.strip() == "clearclip: interrupted", err


def test_random_weights_are_the_same_every_time():
    import torch

    from clearclip.inference.model import load_model

    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = load_model("ViT-S-32", None).model.state_dict()
    assert torch.equal(torch.rand(1), expected_next)  # the caller's random stream is untouched
    second = load_model("ViT-S-32", None).model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("where", ["a file", "the dataset"])
def test_an_out_that_cannot_be_a_run_folder_is_one_line(data, tmp_path, tiny_model_name, capsys, where):
    out = tmp_path / "out.txt" if where == "a file" else data
    if where == "a file":
        out.write_text("not a folder")
    assert main(label_args(data, out, tiny_model_name)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err
    assert ("is a file; give --out a folder" if where == "a file" else "is the dataset folder itself") in err
    assert not (data / "annotations.json").exists()


def test_file_names_cannot_forge_lines_or_escape_sequences(tmp_path, tiny_model_name, capsys):
    data = tmp_path / "data"
    write_plain_folder(data, 1, size=(40, 52))
    (data / "evil\nclearclip: error: forged\x1b[31m.png").write_bytes(b"not an image")
    assert main(label_args(data, tmp_path / "run", tiny_model_name)) == 0
    err = capsys.readouterr().err
    assert "\x1b" not in err and "forged" in err
    assert [line for line in err.splitlines() if "forged" in line] == [
        line for line in err.splitlines() if line.startswith("clearclip: skipped") and "\\nclearclip: error: forged"
        in line]
