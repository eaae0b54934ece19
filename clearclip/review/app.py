"""The FiftyOne App as a reviewer opens it: clearclip's plugin found, colours by class, the editable labels shown,
served on 127.0.0.1 until interrupted."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from ..errors import EnvironmentFailure
from ..io.pictures import palette
from .fields import LEAST_CONFIDENT_VIEW, PRED_FIELD, RUN_FIELD, SEGMENTATION_FIELD

PLUGINS_DIR = Path(__file__).resolve().parent / "plugins"  # installed with the package: the folder FiftyOne scans


def app_environment() -> None:
    """Before FiftyOne is imported: no usage tracking, and the App finds clearclip's plugin (unless the user
    chose another plugins directory)."""
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    if PLUGINS_DIR.is_dir():
        os.environ.setdefault("FIFTYONE_PLUGINS_DIR", str(PLUGINS_DIR))


def class_colors(names: list[str]) -> dict[str, str]:
    """A stable colour per class name: the same class has the same colour in every run and view."""
    colors = palette(len(names) + 1)[1:]
    return {name: "#%02x%02x%02x" % tuple(int(c) for c in color) for name, color in zip(names, colors)}


def app_config(dataset, categories: list[dict]) -> None:
    """Colour labels by class, the label map by value; show the editable labels and the label map."""
    import fiftyone as fo

    colors = class_colors([c["name"] for c in categories])
    by_value = [{"value": name, "color": color} for name, color in colors.items()]
    dataset.app_config.color_scheme = fo.ColorScheme(color_by="value", opacity=0.5, fields=[
        {"path": PRED_FIELD, "colorByAttribute": "label", "valueColors": by_value},
        {"path": RUN_FIELD, "colorByAttribute": "label", "valueColors": by_value},
        {"path": SEGMENTATION_FIELD, "maskTargetsColors": [{"intTarget": c["id"], "color": colors[c["name"]]}
                                                           for c in categories]},
    ])
    dataset.app_config.active_fields = fo.ActiveFields(paths=[PRED_FIELD, SEGMENTATION_FIELD])


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


def launch(dataset, port: int = 5151, address: str = "127.0.0.1") -> None:
    """Open the FiftyOne App on the least-confident-first view and serve until interrupted."""
    import fiftyone as fo

    check_port_free(port, address)
    logging.getLogger("fiftyone.core.config").addFilter(_RemovedOptionNoise())
    session = fo.launch_app(dataset, view=dataset.load_saved_view(LEAST_CONFIDENT_VIEW), port=port, address=address,
                            auto=False)
    print(f"FiftyOne App: http://{address}:{port}/datasets/{dataset.name}  (Ctrl-C stops it)", flush=True)
    session.wait(-1)
