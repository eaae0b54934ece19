"""The FiftyOne plugin's operators, executed from Python as the App executes them: immediately for a few
samples, delegated (queued, then run as `fiftyone delegated launch` runs them) for many."""

import json
from pathlib import Path

import fiftyone as fo
import fiftyone.operators as foo
from fiftyone import ViewField as F
import numpy as np
import pytest
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionError

from clearclip.review.export import export_view_coco
from clearclip.review.model import ClearCLIPModel
from folders import write_plain_folder

LABEL = "@clearclip/clearclip/label_with_clearclip"
EXPORT = "@clearclip/clearclip/export_coco"
OPTIONS = {"device": "cpu", "short_side": 48, "crop": 32, "stride": 16, "workers": 0}


def dataset_of(root, count, name):
    write_plain_folder(root, count, size=(48, 64))
    dataset = fo.Dataset(name, persistent=True, overwrite=True)
    dataset.add_samples([fo.Sample(filepath=str(p)) for p in sorted(root.rglob("*.png"))])
    return dataset


def params(tiny_model_name):
    return {"classes": "background\nsky\ngrass, lawn\n", "label_field": "op", "model": tiny_model_name,
            "pretrained": "", "min_area_fraction": 0.0, "options": OPTIONS}


def test_operators_are_registered():
    uris = {operator.uri for operator in foo.list_operators()}
    assert {LABEL, EXPORT, "@clearclip/clearclip/review_progress"} <= uris


def test_label_the_selected_samples_immediately(tmp_path, tiny_model_name):
    dataset = dataset_of(tmp_path / "data", 4, "plugin-immediate")
    selected = dataset.limit(2).values("id")
    result = foo.execute_operator(LABEL, ctx={"view": dataset.view(), "selected": selected,
                                              "params": params(tiny_model_name)})
    assert result.result == {"labeled": 2} and result.delegated is False
    assert dataset.count("op_segmentation") == 2 and dataset.mask_targets["op_segmentation"][1] == "sky"
    expected = ClearCLIPModel(["background", "sky", "grass, lawn"], model=tiny_model_name, pretrained=None,
                              min_area_fraction=0.0, **OPTIONS)
    for sample in dataset.select(selected):
        labels = expected.predict(np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(sample.filepath).convert("RGB")))
        assert np.array_equal(sample.op_segmentation.mask, labels["segmentation"].mask)


def test_many_samples_are_labeled_as_a_delegated_operation_and_a_missing_image_fails_only_its_sample(
        tmp_path, tiny_model_name):
    dataset = dataset_of(tmp_path / "data", 24, "plugin-delegated")
    result = foo.execute_operator(LABEL, ctx={"view": dataset.view(), "params": params(tiny_model_name)})
    assert result.delegated and not dataset.has_sample_field("op_segmentation")  # queued, not run
    missing = dataset.first().filepath
    Path(missing).unlink()  # gone by the time the queued operation runs
    service = DelegatedOperationService()
    service.execute_queued_operations(dataset_name=dataset.name)
    dataset.reload()
    assert dataset.count("op_segmentation") == 23 and dataset.one(F("filepath") == missing).op_segmentation is None
    [operation] = service.list_operations(dataset_name=dataset.name)
    assert operation.run_state == "completed", operation.run_state


def test_export_the_current_view_to_coco(tmp_path, tiny_model_name, monkeypatch):
    monkeypatch.setenv("CLEARCLIP_EXPORT_ROOT", str(tmp_path / "exports"))
    dataset = dataset_of(tmp_path / "data", 3, "plugin-export")
    foo.execute_operator(LABEL, ctx={"view": dataset.view(), "params": params(tiny_model_name)})
    view = dataset.limit(2)
    result = foo.execute_operator(EXPORT, ctx={"view": view, "params": {"path": "reviewed/op.json",
                                                                        "field": "op_detections"}})
    export_view_coco(view, tmp_path / "direct.json", "op_detections")
    exported = json.loads((tmp_path / "exports" / "reviewed" / "op.json").read_text())
    assert result.result["images"] == 2 and len(exported["images"]) == 2
    assert exported["annotations"] == json.loads((tmp_path / "direct.json").read_text())["annotations"]


def test_the_export_operator_writes_nowhere_but_its_export_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEARCLIP_EXPORT_ROOT", str(tmp_path / "exports"))
    dataset = dataset_of(tmp_path / "data", 1, "plugin-export-outside")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "link").symlink_to(tmp_path)
    for path in (str(victim), "../victim.txt", "link/victim.txt"):
        with pytest.raises(ExecutionError, match="outside the export folder"):
            foo.execute_operator(EXPORT, ctx={"view": dataset.view(), "params": {"path": path}})
    assert victim.read_text() == "precious"


def test_a_label_run_without_the_form_uses_the_forms_defaults(tmp_path):
    """No 'pretrained' given (a script, or an older form): the OpenAI weights the form shows are asked for,
    never random ones; they cannot be fetched offline, so the run says so."""
    dataset = dataset_of(tmp_path / "data", 2, "plugin-defaults")
    with pytest.raises(ExecutionError, match="could not load ViT-B-16 with weights 'openai'"):
        foo.execute_operator(LABEL, ctx={"view": dataset.view(), "params": {"classes": "sky\ngrass\n",
                                                                           "options": OPTIONS}})
    assert not dataset.has_sample_field("clearclip_segmentation")
