"""The FiftyOne App served by `clearclip review`, seen through headless Chromium: the grid with labels coloured
by class, the Review progress panel's count, a sample and a detection's tooltip (its label and confidence),
clearclip's operators in the App's operator list, and a relabel made by clicks in the Annotate panel. With
CLEARCLIP_UPDATE_SCREENSHOTS=1 the screenshots replace those in docs/."""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from browser import CHROMIUM, Browser
from clearclip.cli import main
from clearclip.review.fields import PRED_FIELD
from processes import free_port, kill_tree

pytestmark = pytest.mark.slow  # end to end: real servers, workers or processes

ROOT = Path(__file__).resolve().parents[2]


def label_sample_photos(run: Path, model: str) -> Path:
    """``run``: the bundled photos labeled with the bundled classes by ``model``."""
    assert main(["label", str(ROOT / "workspace" / "samples"), "--out", str(run), "--model", model,
                 "--device", "cpu", "--quiet", "--classes-file", str(ROOT / "workspace" / "classes.txt")]) == 0
    return run


def start_review(run: Path, name: str, port: int, log: Path, env: dict) -> subprocess.Popen:
    """`clearclip review` serving the App on ``port``, once it answers."""
    app = subprocess.Popen([sys.executable, "-m", "clearclip", "review", str(run), "--name", name, "--port", str(port)],
                           stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        if app.poll() is not None:
            raise AssertionError(log.read_text())
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            return app
        except OSError:
            if time.monotonic() > deadline:
                kill_tree(app)
                raise AssertionError("the App did not start") from None
            time.sleep(0.5)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
def test_app_shows_the_run_and_the_operators(tmp_path, tiny_model_name):
    run = label_sample_photos(tmp_path / "run", tiny_model_name)
    port, name = free_port(), "app-check-run"
    log = tmp_path / "review.log"
    env = {k: v for k, v in os.environ.items() if k not in ("FIFTYONE_DO_NOT_TRACK", "FIFTYONE_PLUGINS_DIR")}
    app = start_review(run, name, port, log, env)
    try:
        import fiftyone as fo

        dataset = fo.load_dataset(name)
        by_confidence = dataset.sort_by("mean_confidence")
        sample_id, done, later = by_confidence.values("id")[:3]
        dataset.select(sample_id).tag_samples("needs-fix")  # a reviewer's tag, shown on its tile
        dataset.select(done).tag_samples("reviewed")  # out of the to-review view, counted in the progress panel

        async def look(page):
            url = f"http://127.0.0.1:{port}/datasets/{name}"
            await page.open(url, 15)
            await page.click_text("Dismiss")  # FiftyOne's own promotion, not part of the run
            await asyncio.sleep(2)
            grid_text = await page.text()
            await page.screenshot(tmp_path / "review-app.png")
            dataset.select(later).tag_samples("reviewed")  # as a reviewer tags in the App
            assert await page.click_text("Refresh")  # the progress panel counts again
            await asyncio.sleep(2)
            refreshed = await page.text()
            await page.open(f"{url}?id={sample_id}", 15)
            await page.screenshot(tmp_path / "review-sample.png")
            tooltip = ""
            for x, y in [(x, y) for y in (300, 200, 450, 600) for x in (530, 300, 750, 150, 900)]:  # over the image
                await page.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
                await page.call("Input.dispatchMouseEvent", type="mouseMoved", x=x + 3, y=y + 2)
                await asyncio.sleep(1.5)
                text = await page.text()
                if "Lock tooltip" in text:  # a detection's tooltip
                    tooltip = text[text.index("Lock tooltip"):]
                    await page.screenshot(tmp_path / "review-hover.png")
                    break
            await page.open(url, 12)
            await page.click_text("Dismiss")
            await page.press("`", "Backquote")  # the App's operator browser
            await asyncio.sleep(2)
            await page.type("clearclip")
            await asyncio.sleep(2)
            await page.screenshot(tmp_path / "review-operators.png")
            return grid_text, refreshed, tooltip, await page.text()

        with Browser() as browser:
            grid, refreshed, tooltip, operators = browser.run(look)
    finally:
        kill_tree(app, sig_kill=False)
    assert "pseudo_labels" in grid and "pseudo_segmentation" in grid and "3 samples" in grid  # to-review
    assert "Review progress" in grid and "1 of 4 reviewed, 0 rejected, 3 to review" in grid
    assert "2 of 4 reviewed, 0 rejected, 2 to review" in refreshed
    lines = tooltip.splitlines()  # value, then its name: a detection's label and confidence, not the label map's
    assert "label" in lines and "confidence" in lines and "run_index" in lines, tooltip
    assert 0 < float(lines[lines.index("confidence") - 1]) <= 1
    assert "Label with ClearCLIP" in operators and "Export the current view to COCO (clearclip)" in operators
    assert "App config option has been removed" not in log.read_text()
    for shot in ("review-app.png", "review-sample.png", "review-hover.png", "review-operators.png"):
        assert (tmp_path / shot).stat().st_size > 20_000
        if os.environ.get("CLEARCLIP_UPDATE_SCREENSHOTS"):
            shutil.copy(tmp_path / shot, ROOT / "docs" / shot)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
def test_a_relabel_clicked_in_the_annotate_panel_is_saved_and_survives_review_again(tmp_path, tiny_model_name):
    """The Annotate panel loads on a reviewed dataset (its label list, not "Loading"); a detection clicked there
    and given another class in its label box is saved to the dataset, and `review` run again keeps it."""
    import fiftyone as fo

    run = label_sample_photos(tmp_path / "run", tiny_model_name)
    port, name = free_port(), "app-annotate-run"
    app = start_review(run, name, port, tmp_path / "review.log", dict(os.environ))
    try:
        dataset = fo.load_dataset(name)
        sample = dataset.sort_by("mean_confidence").first()
        before = {d.id: d.label for d in sample[PRED_FIELD].detections}
        clicked = sample[PRED_FIELD].detections[0].label
        new_label = next(c for c in dataset.label_schemas[PRED_FIELD]["classes"] if c not in before.values())

        async def edit(page):
            await page.open(f"http://127.0.0.1:{port}/datasets/{name}?id={sample.id}", 15)
            await page.click_text("Dismiss")  # FiftyOne's own promotion, not part of the run
            assert await page.click_text("Annotate")
            await asyncio.sleep(4)
            panel = await page.text()
            assert await page.click_text(clicked)  # the detection, in the panel's label list
            await asyncio.sleep(3)
            assert await page.mouse_click("document.querySelector('[data-cy=root_label_container] input[role=combobox]')")
            await asyncio.sleep(1.5)
            options = await page.evaluate("[...document.querySelectorAll('[role=option]')].map(e => e.innerText.trim())")
            assert await page.mouse_click("[...document.querySelectorAll('[role=option]')]"
                                          f".find(e => e.innerText.trim() === {json.dumps(new_label)})")
            for _ in range(30):  # the panel saves on its own, shortly after the change
                await asyncio.sleep(1)
                dataset.reload()
                if [d.label for d in dataset[sample.id][PRED_FIELD].detections] != list(before.values()):
                    break
            await page.screenshot(tmp_path / "review-annotate-edit.png")
            return panel, options

        with Browser() as browser:
            panel, options = browser.run(edit)
    finally:
        kill_tree(app, sig_kill=False)
    assert f"LABELS\n{len(before)}" in panel and "Loading" not in panel, panel
    assert options == dataset.label_schemas[PRED_FIELD]["classes"]
    changed = {d.id: d.label for d in fo.load_dataset(name)[sample.id][PRED_FIELD].detections}
    assert sum(changed[i] != before[i] for i in before) == 1 and new_label in changed.values(), changed

    assert main(["review", str(run), "--name", name, "--no-launch"]) == 0
    assert {d.id: d.label for d in fo.load_dataset(name)[sample.id][PRED_FIELD].detections} == changed
    if os.environ.get("CLEARCLIP_UPDATE_SCREENSHOTS"):
        shutil.copy(tmp_path / "review-annotate-edit.png", ROOT / "docs" / "review-annotate.png")


def _patch(url: str, body, if_match: str) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="PATCH",
                                     headers={"Content-Type": "application/json-patch+json", "If-Match": if_match})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def test_edits_saved_through_the_app_survive_review_again(tmp_path, tiny_model_name):
    """A relabel and a delete sent to the App's server as its Annotate panel sends them (JSON patches of one
    detection of pseudo_labels) are in the dataset, and stay there when `review` runs again."""
    import fiftyone as fo

    run = label_sample_photos(tmp_path / "run", tiny_model_name)
    port, name = free_port(), "app-edit-run"
    app = start_review(run, name, port, tmp_path / "review.log", dict(os.environ))
    try:
        dataset = fo.load_dataset(name)
        relabeled, deleted = [s for s in dataset.sort_by("filepath") if len(s[PRED_FIELD].detections) >= 2][:2]
        classes = dataset.label_schemas[PRED_FIELD]["classes"]
        target = relabeled[PRED_FIELD].detections[0]
        new_label = next(c for c in classes if c != target.label)
        base = f"http://127.0.0.1:{port}/dataset/{dataset._doc.id}/sample"
        _patch(f"{base}/{relabeled.id}/{PRED_FIELD}.detections/{target.id}",
               [{"op": "replace", "path": "/label", "value": new_label}], relabeled.last_modified_at.isoformat())
        gone = deleted[PRED_FIELD].detections[0]
        _patch(f"{base}/{deleted.id}/{PRED_FIELD}.detections/{gone.id}", [{"op": "remove", "path": "/"}],
               deleted.last_modified_at.isoformat())
    finally:
        kill_tree(app, sig_kill=False)

    assert main(["review", str(run), "--name", name, "--no-launch"]) == 0
    dataset = fo.load_dataset(name)
    after = dataset[relabeled.id][PRED_FIELD].detections
    assert after[0].id == target.id and after[0].label == new_label
    remaining = [d.id for d in dataset[deleted.id][PRED_FIELD].detections]
    assert gone.id not in remaining and len(remaining) == len(deleted[PRED_FIELD].detections) - 1
