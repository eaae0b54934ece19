"""FiftyOne plugin: label the current view or selection with ClearCLIP, export the current view to COCO, and a
Review progress panel ("x of N reviewed").

Install for any App: put this folder in FiftyOne's plugins directory (``fiftyone config plugins_dir``), or
point ``FIFTYONE_PLUGINS_DIR`` at the folder holding it; ``clearclip review`` does the latter by itself.
"""

import fiftyone.operators as foo
import fiftyone.operators.types as types

IMMEDIATE_LIMIT = 20  # more samples than this are labeled as a delegated operation (fiftyone delegated launch)
LABEL_DEFAULTS = {"label_field": "clearclip", "model": "ViT-B-16", "pretrained": "openai", "min_score": 0.0,
                  "min_area_fraction": 0.001, "background_threshold": 0.0}  # the form's, and a run's without it


def _target(ctx):
    return ctx.view.select(ctx.selected) if ctx.selected else ctx.view


class LabelWithClearCLIP(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="label_with_clearclip", label="Label with ClearCLIP", dynamic=True,
                                  allow_immediate_execution=True, allow_delegated_execution=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        count = len(_target(ctx))
        where = "the selected samples" if ctx.selected else "the current view"
        inputs.view("target", types.Notice(label=f"Labels {where} ({count} samples)"
                                           + (", as a delegated operation" if count > IMMEDIATE_LIMIT else "")))
        inputs.str("classes", label="Classes", required=True, view=types.TextFieldView(multiline=True),
                   description="one class a line; commas separate synonyms (person, man); a first line "
                               "'background' makes class 0 background")
        inputs.str("label_field", label="Field", default=LABEL_DEFAULTS["label_field"],
                   description="results go to <field>_segmentation and <field>_detections")
        inputs.str("model", label="Model", default=LABEL_DEFAULTS["model"])
        inputs.str("pretrained", label="Weights", default=LABEL_DEFAULTS["pretrained"],
                   description="an open_clip tag or a checkpoint file; empty: random weights (tests only)")
        inputs.float("min_score", label="Minimum region score", default=LABEL_DEFAULTS["min_score"])
        inputs.float("min_area_fraction", label="Minimum region area (fraction of the image)",
                     default=LABEL_DEFAULTS["min_area_fraction"])
        inputs.float("background_threshold", label="Background threshold",
                     default=LABEL_DEFAULTS["background_threshold"])
        return types.Property(inputs)

    def resolve_delegation(self, ctx):
        return len(_target(ctx)) > IMMEDIATE_LIMIT

    def execute(self, ctx):
        from clearclip.review.model import ClearCLIPModel, label_samples

        params = {**LABEL_DEFAULTS, **ctx.params}  # a run without the form gets the form's defaults
        classes = [line.strip() for line in params["classes"].splitlines() if line.strip()]
        model = ClearCLIPModel(classes, model=params["model"], pretrained=params["pretrained"] or None,
                               background_threshold=params["background_threshold"], min_score=params["min_score"],
                               min_area_fraction=params["min_area_fraction"], **params.get("options", {}))
        target = _target(ctx)
        label_samples(target, model, params["label_field"])
        if not ctx.delegated:
            ctx.ops.reload_dataset()
        return {"labeled": len(target)}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("labeled", label="Samples labeled")
        return types.Property(outputs)


class ExportCOCO(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="export_coco", label="Export the current view to COCO (clearclip)")

    def resolve_input(self, ctx):
        from clearclip.review.export import export_root

        inputs = types.Object()
        inputs.str("path", label="COCO JSON file", required=True,
                   description=f"relative to the export folder {export_root(ctx.dataset)} (the only place this "
                               "operator writes; CLEARCLIP_EXPORT_ROOT moves it)")
        inputs.str("field", label="Detections field", default="pseudo_labels")
        return types.Property(inputs)

    def execute(self, ctx):
        from clearclip.review.export import export_view_coco, under_export_root

        path = under_export_root(ctx.dataset, ctx.params["path"])
        images, annotations = export_view_coco(_target(ctx), path, ctx.params.get("field", "pseudo_labels"))
        return {"images": images, "annotations": annotations, "path": str(path)}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("path", label="Written to")
        outputs.int("images", label="Images")
        outputs.int("annotations", label="Annotations")
        return types.Property(outputs)


class ReviewProgress(foo.Panel):
    """How far the review of the dataset is: samples tagged reviewed and rejected, and those left."""

    @property
    def config(self):
        return foo.PanelConfig(name="review_progress", label="Review progress", surfaces="grid",
                               help_markdown="Tag a sample `reviewed` when its labels are right, `rejected` to "
                                             "leave it out of exports; the saved view `to-review` shows the rest.")

    def on_load(self, ctx):
        from clearclip.review.sync import review_progress

        ctx.panel.state.progress = review_progress(ctx.dataset)

    def on_change_view(self, ctx):
        self.on_load(ctx)

    def render(self, ctx):
        panel = types.Object()
        panel.md(f"**{ctx.panel.state.progress or ''}**", name="progress")
        panel.btn("refresh", label="Refresh", on_click=self.on_load)
        return types.Property(panel, view=types.GridView(orientation="horizontal", align_y="center", gap=2))


def register(plugin):
    plugin.register(LabelWithClearCLIP)
    plugin.register(ExportCOCO)
    plugin.register(ReviewProgress)
