"""`clearclip segment`: outputs a person can look at, options that reach the job, and one-line errors."""

import json
import re
import subprocess
import sys
from dataclasses import fields

import numpy as np
import pytest
from PIL import Image

from clearclip.cli import build_parser, main
from clearclip.cli.options import job_from_args
from clearclip.run.job import LabelJob


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for name, size in [("a.png", (40, 60)), ("b.jpg", (50, 50))]:
        path = tmp_path / name
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def small(model_name):
    return ["--model", model_name, "--device", "cpu", "--short-side", "32", "--crop", "32", "--stride", "16"]


def test_segment_writes_label_maps_overlays_and_the_shares_it_prints(images, tiny_model_name, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["segment", *map(str, images), "--class", "sky", "--class", "grass, lawn", "--out", str(out),
                 *small(tiny_model_name)])
    assert code == 0
    printed = capsys.readouterr().out
    for path in images:
        block = printed.split(f"{path} (")[1].split("\n\n")[0]
        labels = np.asarray(Image.open(out / f"{path.stem}_labels.png"))
        assert labels.shape == np.asarray(Image.open(path)).shape[:2]
        overlay = Image.open(out / f"{path.stem}_overlay.png")
        assert overlay.height >= labels.shape[0] and overlay.width > labels.shape[1]  # legend beside the image
        shares = {name: float(value) for name, value in re.findall(r"^\s+(sky|grass)\s+([\d.]+)%$", block, re.M)}
        counts = np.bincount(labels.ravel(), minlength=2)
        expected = {name: round(100 * counts[i] / labels.size, 1) for i, name in enumerate(["sky", "grass"]) if counts[i]}
        assert shares == expected


def test_images_with_the_same_stem_get_their_own_outputs(tiny_model_name, tmp_path):
    rng = np.random.default_rng(1)
    paths = [tmp_path / "x" / "a.png", tmp_path / "y" / "a.png", tmp_path / "y" / "a.jpg"]
    for index, path in enumerate(paths):  # widths 40, 48, 56 tell the outputs apart
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 40 + 8 * index), dtype=np.uint8)).save(path)
    out = tmp_path / "out"
    assert main(["segment", *map(str, paths), "--class", "sky", "--class", "road", "--out", str(out), *small(tiny_model_name)]) == 0
    widths = [np.asarray(Image.open(out / f"{name}_labels.png")).shape[1] for name in ["a", "a-2", "a-3"]]
    assert widths == [Image.open(path).width for path in paths]


def example_value(name):
    return {"templates": ["a {}."], "compile": True, "pretrained": "laion2b_s34b_b88k", "device": "cpu",
            "variant": "maskclip", "precision": "fp32", "instances": "semantic", "model": "ViT-L-14",
            "class_thresholds": "per_class.yaml", "workers": 3, "max_pixels": 1234, "refine": "pamr",
            "pamr_dilations": [4, 8], "finishers": 2, "threads": 3,
            "storage_options": {"client_kwargs": {"endpoint_url": "http://127.0.0.1:1"}, "region_name": "r1"}}.get(name)


@pytest.mark.parametrize("field", [f for f in fields(LabelJob) if f.name != "classes"], ids=lambda f: f.name)
def test_every_job_option_reaches_the_job(field):
    value = example_value(field.name)
    if value is None:
        value = 7 if field.type in ("int",) else 0.25
    flag = field.metadata.get("flag") or "--" + field.name.replace("_", "-")
    argument = [] if value is True else [flag, *map(str, value if isinstance(value, list) else [value])]
    if value is True:
        argument = [flag]
    if isinstance(value, dict):  # repeated KEY=VALUE, values that read as JSON parsed
        argument = [part for key, item in value.items() for part in (flag, f"{key}={json.dumps(item)}")]
    args = build_parser().parse_args(["label", "data", "--class", "cat", *argument])
    assert getattr(job_from_args(args, ["cat"]), field.name) == value


COMMANDS = ["segment", "label", "eval-miou", "eval-coco", "review", "export", "calibrate", "refilter"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_prints_its_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"usage: clearclip {command}")
    if command == "label":  # help texts with a '%' and list defaults
        assert "(0.001 = 0.1 %) (default: 0.001)" in " ".join(printed.split())
        assert "(default: 8 16)" in printed


@pytest.mark.parametrize("value", ["none", "None", " NONE ", None])
def test_pretrained_none_means_random_weights_from_the_cli_the_flow_and_the_api(value):
    assert LabelJob(["cat"], pretrained=value).pretrained is None  # what the flows and the Python API build
    if value is not None:
        args = build_parser().parse_args(["label", "data", "--class", "cat", "--pretrained", value])
        assert job_from_args(args, ["cat"]).pretrained is None


def exit_code(argv) -> int:
    """What ``clearclip ARGV`` exits with, in-process (usage errors exit through argparse)."""
    try:
        return main(argv)
    except SystemExit as done:
        return done.code


@pytest.mark.parametrize(
    "args,message",
    [
        (["/nonexistent/image.png", "--class", "cat"], "no such image file: /nonexistent/image.png"),
        (["IMAGE"], "no classes given"),
        (["IMAGE", "--class", "cat", "--model", "ViT-Nope"], "unknown model 'ViT-Nope'"),
        (["IMAGE", "--class", "cat", "--variant", "nope"], "argument --variant: invalid choice: 'nope'"),
        (["IMAGE", "--classes-file", "/nonexistent/classes.txt"], "cannot read class file /nonexistent/classes.txt"),
        (["IMAGE", "--class", "cat", "--crop", "0"], "argument --crop: must be a whole number, 1 or more (got '0')"),
        (["IMAGE", "--class", "cat", "--logit-scale", "nan"], "argument --logit-scale: must be a finite number above 0"),
        (["IMAGE", "--class", "cat", "--device", "banana"], "argument --device: must be auto, cpu, cuda or cuda:N"),
        (["IMAGE", "--class", "cat", "--class", "dog", "--background-threshold", "0.99"],
         "background_threshold needs 'background' as the first class"),
        (["IMAGE", "--class", "cat", "--class", "dog, cat"], "class name 'cat' appears in classes 0 and 1"),
        (["IMAGE", "--class", "background"], "the class list has only 'background'"),
    ],
)
def test_errors_are_one_line(images, args, message, capsys):
    args = [str(images[0]) if a == "IMAGE" else a for a in args]
    assert exit_code(["segment", *args, "--device", "cpu"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clearclip: error:") and message in lines[0], lines


@pytest.mark.slow
def test_the_command_fails_on_bad_input_with_one_line_and_without_loading_torch(images):
    """As a user runs it: ``clearclip segment img.png`` without a class never imports torch to say so."""
    code = ("import sys; from clearclip.__main__ import run; sys.argv = ['clearclip', 'segment', sys.argv[1]]\n"
            "try:\n    run()\nexcept SystemExit as done:\n"
            "    assert 'torch' not in sys.modules, 'torch was imported'\n    raise")
    result = subprocess.run([sys.executable, "-c", code, str(images[0])], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "clearclip: error: no classes given; pass --classes-file FILE or --class NAME " \
                                    "(repeatable)"


def test_empty_class_file_is_an_error(images, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    assert main(["segment", str(images[0]), "--classes-file", str(empty)]) == 2
    assert "lists no classes" in capsys.readouterr().err


def test_eval_miou_refuses_a_negative_limit(capsys):
    assert exit_code(["eval-miou", "--benchmark", "voc21", "--data-root", "/nonexistent", "--limit", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--limit: must be a whole number, 0 or more (got '-1')" in err and len(err.splitlines()) == 1


def test_calibrate_refuses_a_plot_format_before_any_work(tmp_path, capsys):
    out = tmp_path / "thresholds.yaml"
    assert exit_code(["calibrate", "no-such-dataset", "--out", str(out), "--plot", str(tmp_path / "pr.xyz")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--plot" in err and "cannot write '.xyz'" in err and ".png" in err and len(err.splitlines()) == 1
    assert not out.exists()
