"""The FiftyOne App as a reviewer opens it: clearclip's plugin found, colours by class, the editable labels shown,
served on 127.0.0.1 until interrupted."""

from __future__ import annotations

import colorsys
import hashlib
import logging
import os
import socket
from pathlib import Path

from ..errors import EnvironmentFailure
from .fields import (FILE_NAME_FIELD, IMAGE_ID_FIELD, PRED_FIELD, RUN_FIELD, RUN_CHANGE_FIELD, RUN_HASH_FIELD,
                     SEGMENTATION_FIELD, TO_REVIEW_VIEW, WRITTEN_HASH_FIELD)
from .media import VIEWABLE_FIELD

PLUGINS_DIR = Path(__file__).resolve().parent / "plugins"  # installed with the package: the folder FiftyOne scans


def app_environment() -> None:
    """Before FiftyOne is imported: no usage tracking, and the App finds clearclip's plugin (unless the user
    chose another plugins directory)."""
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    if PLUGINS_DIR.is_dir():
        os.environ.setdefault("FIFTYONE_PLUGINS_DIR", str(PLUGINS_DIR))


def class_color(name: str) -> str:
    """The colour of a class, from its name alone: the same class has the same colour in every run, whatever
    its place in the class list (a hash of the name picks the hue; saturation and brightness stay readable)."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    hue = int.from_bytes(digest[:4], "big") / 2**32
    r, g, b = colorsys.hsv_to_rgb(hue, 0.65 + 0.3 * digest[4] / 255, 0.75 + 0.2 * digest[5] / 255)
    return "#%02x%02x%02x" % (round(r * 255), round(g * 255), round(b * 255))


def class_colors(names: list[str]) -> dict[str, str]:
    """``class_color`` of each name."""
    return {name: class_color(name) for name in names}


def app_config(dataset, categories: list[dict]) -> None:
    """Colour labels by class, the label map by value; show the editable detections (the label map, which
    covers every pixel, is a click away); group the fields a reviewer uses first and fold the tool's own."""
    import fiftyone as fo

    colors = class_colors([c["name"] for c in categories])
    by_value = [{"value": name, "color": color} for name, color in colors.items()]
    dataset.app_config.color_scheme = fo.ColorScheme(color_by="value", opacity=0.5, fields=[
        {"path": PRED_FIELD, "colorByAttribute": "label", "valueColors": by_value},
        {"path": RUN_FIELD, "colorByAttribute": "label", "valueColors": by_value},
        {"path": SEGMENTATION_FIELD, "maskTargetsColors": [{"intTarget": c["id"], "color": colors[c["name"]]}
                                                           for c in categories]},
    ])
    dataset.app_config.active_fields = fo.ActiveFields(paths=["tags", PRED_FIELD])  # tags on the tiles too
    dataset.app_config.media_fields = ["filepath", VIEWABLE_FIELD]  # TIFF and 16-bit images: a viewable copy
    dataset.app_config.grid_media_field = dataset.app_config.modal_media_field = VIEWABLE_FIELD
    dataset.app_config.sidebar_groups = [
        fo.SidebarGroupDocument(name="review", paths=["tags", PRED_FIELD, SEGMENTATION_FIELD, "min_confidence",
                                                      "mean_confidence", FILE_NAME_FIELD]
                                + ([RUN_CHANGE_FIELD] if dataset.has_field(RUN_CHANGE_FIELD) else [])),
        fo.SidebarGroupDocument(name="clearclip internals", expanded=False,
                                paths=[RUN_FIELD, RUN_HASH_FIELD, WRITTEN_HASH_FIELD, IMAGE_ID_FIELD, VIEWABLE_FIELD]),
    ]


class _RemovedOptionNoise(logging.Filter):
    """FiftyOne's session copies its own App config, re-reading option names it has removed, and warns about
    them although nobody set them; those three lines say nothing about this run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "App config option has been removed" not in record.getMessage()


def check_port_free(port: int, address: str) -> None:
    """Raise EnvironmentFailure naming the port when something already listens there (FiftyOne would wait,
    then print a long traceback)."""
    with socket.socket() as probe:
        try:
            probe.bind((address, port))
        except OSError as error:
            raise EnvironmentFailure(f"port {port} on {address} is in use ({error.strerror}); stop what listens "
                                     "there or give another --port") from None


def review_spaces():
    """The App's layout: the samples grid, and below it a strip with the Review progress panel (the plugin's)."""
    import fiftyone as fo

    samples, progress = fo.Panel(type="Samples", pinned=True), fo.Panel(type="review_progress")
    return fo.Space(orientation="vertical", sizes=[0.85, 0.15], children=[
        fo.Space(children=[samples], active_child=samples.component_id),
        fo.Space(children=[progress], active_child=progress.component_id),
    ])


def launch(dataset, port: int = 5151, address: str = "127.0.0.1") -> None:
    """Open the FiftyOne App on the to-review view (least confident first) and serve until interrupted."""
    import fiftyone as fo

    check_port_free(port, address)
    logging.getLogger("fiftyone.core.config").addFilter(_RemovedOptionNoise())
    session = fo.launch_app(dataset, view=dataset.load_saved_view(TO_REVIEW_VIEW), spaces=review_spaces(),
                            port=port, address=address, auto=False)
    print(f"FiftyOne App: http://{address}:{port}/datasets/{dataset.name}  (Ctrl-C stops it)", flush=True)
    session.wait(-1)
