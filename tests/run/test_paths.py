"""Names read from files never become paths outside the run: the gate, manifests, and a poisoned run folder."""

import json
import os

import pytest

from clearclip import ClearCLIPError
from clearclip.cli import main
from clearclip.run.folder import RunFolder, manifest_key
from clearclip.run.paths import checked_name, contained
from folders import write_plain_folder


@pytest.mark.parametrize("name", ["/etc/passwd", "../../../../etc/passwd", "a/../../b.png", "./a.png", "a//b.png",
                                  "", "a\x00.png", 7, None])
def test_the_gate_refuses_names_that_leave_their_root(name):
    with pytest.raises(ClearCLIPError, match=r"manifests/x\.json: .* (not a relative path|not a file name)"):
        checked_name(name, "manifests/x.json")


@pytest.mark.parametrize("name", ["a.png", "deep/er/ünïcødé 名前/photo é.png", "..hidden-ish.png", "a..b.png"])
def test_the_gate_passes_relative_names(name):
    assert checked_name(name, "m.json") == name


def test_a_symlink_out_of_the_root_is_refused_for_writes(tmp_path):
    root, outside = tmp_path / "run", tmp_path / "outside"
    (root / "labels").mkdir(parents=True)
    outside.mkdir()
    (root / "labels" / "ext").symlink_to(outside)
    assert contained(root, root / "labels" / "in.png") == root / "labels" / "in.png"
    with pytest.raises(ClearCLIPError, match="leads outside"):
        contained(root, root / "labels" / "ext" / "x.png")


@pytest.mark.parametrize("names", [["/abs/secret.png"], ["../../../../etc/passwd"], ["ok.png", "../victim.png"]])
def test_a_traversal_manifest_is_refused_naming_it(tmp_path, names):
    folder = RunFolder(tmp_path / "run")
    path = folder.manifest_path(manifest_key(names))
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"files": names}))
    with pytest.raises(ClearCLIPError, match=f"{path}: .* not a relative path"):
        folder.read_manifest(path)


def test_a_planted_manifest_is_never_trusted(tmp_path):
    folder = RunFolder(tmp_path / "run")
    names = ["a.png", "b.png"]
    planted = folder.manifest_path(manifest_key(names))
    planted.parent.mkdir(parents=True)
    planted.write_text(json.dumps({"files": ["victim.png"]}))  # the key of a.png, b.png, other content
    with pytest.raises(ClearCLIPError, match="does not hold the files its name says"):
        folder.read_manifest(planted)
    assert folder.write_manifest(names) == planted  # the parent writes its own, whatever was there
    assert folder.read_manifest(planted) == names
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"files": names}))
    with pytest.raises(ClearCLIPError, match="is not in .*manifests"):
        folder.read_manifest(elsewhere)


def test_a_poisoned_run_folder_deletes_nothing_outside(tmp_path, tiny_model_name, capsys):
    data, out, outside = tmp_path / "data", tmp_path / "run", tmp_path / "outside"
    write_plain_folder(data, 2, size=(40, 52))
    args = ["label", str(data), "--out", str(out), "--model", tiny_model_name, "--device", "cpu", "--quiet",
            "--workers", "0", "--short-side", "32", "--crop", "32", "--stride", "16", "--class", "sky", "--class", "road"]
    assert main(args) == 0
    outside.mkdir()
    (outside / "precious.png").write_bytes(b"keep me")
    (out / "records" / "ext").mkdir()
    (out / "records" / "ext" / "precious.json").write_text('{"file": "ext/precious", "status": "done"}\n')
    (out / "labels" / "ext").symlink_to(outside)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "leads outside" in err and "labels/ext/precious.png" in err and len(err.strip().splitlines()) == 1
    assert (outside / "precious.png").read_bytes() == b"keep me"
    os.unlink(out / "labels" / "ext")  # the link removed, as the message says, the run goes on
    assert main(args) == 0
    assert json.loads((out / "run.json").read_text())["removed_records_of_deleted_images"] == 1


class _Listed:
    """A bucket whose listing holds ``keys`` (AWS S3 accepts keys like ``a/../../b``; SeaweedFS refuses them)."""

    url = "s3://bucket/run"

    def download(self, keys, files):
        for file in files:
            open(file, "wb").close()


def test_an_object_key_that_leaves_the_media_cache_is_refused(tmp_path):
    from clearclip.io.storage import ObjectInfo
    from clearclip.run.copies import CopyReport, _fetch

    target = tmp_path / "cache" / "run"
    target.mkdir(parents=True)
    wanted = {"labels/a.png": ObjectInfo(1, 0, "e1"), "labels/../../../escaped.png": ObjectInfo(1, 0, "e2")}
    with pytest.raises(ClearCLIPError, match=r"s3://bucket/run: 'labels/\.\./\.\./\.\./escaped\.png'"):
        _fetch(_Listed(), wanted, target, {}, CopyReport(tmp_path / "cache"), lambda _: None)
    assert not list(tmp_path.rglob("*.png"))  # nothing fetched, inside or out
