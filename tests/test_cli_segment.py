"""`clearclip segment`: outputs a person can look at, help text, and one-line errors."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from clearclip.cli import main


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


def test_segment_writes_label_maps_overlays_and_a_table(images, tiny_model_name, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["segment", *map(str, images), "--class", "sky", "--class", "grass, lawn", "--out", str(out), *small(tiny_model_name)])
    assert code == 0
    for path in images:
        labels = np.asarray(Image.open(out / f"{path.stem}_labels.png"))
        assert labels.shape == np.asarray(Image.open(path)).shape[:2]
        assert set(np.unique(labels)) <= {0, 1}
        overlay = Image.open(out / f"{path.stem}_overlay.png")
        assert overlay.height >= labels.shape[0] and overlay.width > labels.shape[1]  # legend beside the image
    printed = capsys.readouterr().out
    assert "sky" in printed or "grass" in printed
    assert "%" in printed


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


def test_help_explains_every_option():
    result = subprocess.run([sys.executable, "-m", "clearclip", "segment", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for option in ["--classes-file", "--class", "--model", "--pretrained", "--variant", "--background-threshold",
                   "--device", "--out", "--precision", "--crop", "--stride", "--short-side", "--logit-scale"]:
        assert option in result.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["/nonexistent/image.png", "--class", "cat"], "no such image file: /nonexistent/image.png"),
        (["IMAGE"], "no classes given"),
        (["IMAGE", "--class", "cat", "--model", "ViT-Nope"], "unknown model 'ViT-Nope'"),
        (["IMAGE", "--class", "cat", "--variant", "nope"], "unknown variant 'nope'"),
        (["IMAGE", "--classes-file", "/nonexistent/classes.txt"], "cannot read class file /nonexistent/classes.txt"),
    ],
)
def test_errors_are_one_line(images, args, message):
    args = [str(images[0]) if a == "IMAGE" else a for a in args]
    result = subprocess.run([sys.executable, "-m", "clearclip", "segment", *args, "--device", "cpu"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("clearclip: error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_empty_class_file_is_an_error(images, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    assert main(["segment", str(images[0]), "--classes-file", str(empty)]) == 2
    assert "lists no classes" in capsys.readouterr().err
