"""ClearCLIP as a FiftyOne model: ``dataset.apply_model(ClearCLIPModel(classes), label_field="clearclip")``.

Each sample gets ``<label_field>_segmentation`` (a ``fo.Segmentation``: the map of category ids that
``clearclip label`` writes to ``labels/``) and, unless ``instances=None``, ``<label_field>_detections``
(``fo.Detections`` with instance masks and ``confidence``): the same regions and scores ``clearclip label``
writes for the image, since images are decoded and labeled by the same code. FiftyOne does not take mask
targets from models; ``label_samples`` sets them (``model.mask_targets``) and applies the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import fiftyone as fo
import fiftyone.core.models as fom
from fiftyone.utils.torch import GetItem

from ..annotations.regions import extract_regions
from ..inference.segmentation import prepare_image
from ..io.images import DEFAULT_MAX_PIXELS, load_image
from ..run.job import LabelJob
from .fields import to_detection


class _LoadImage(GetItem):
    """Decodes a sample's image as ``clearclip label`` does (EXIF-rotated, 8-bit RGB), in data-loader workers."""

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS, field_mapping=None) -> None:
        self.max_pixels = max_pixels
        super().__init__(field_mapping=field_mapping)

    @property
    def required_keys(self) -> list[str]:
        return ["filepath"]

    def __call__(self, d):
        return load_image(d["filepath"], self.max_pixels)


class ClearCLIPModel(fom.Model, fom.TorchModelMixin, fom.SupportsGetItem):
    """ClearCLIP pseudo-labels for FiftyOne samples.

    Arguments:
        classes: class strings ("cat, kitten": synonyms) or a class-file path; a first class "background"
            allows ``background_threshold``.
        instances: "components" (one detection per connected region), "semantic" (one per class) or None
            (the segmentation alone).
        options: any other ``clearclip label`` option (``min_area``, ``refine``, ``device``, ...).
    """

    def __init__(self, classes: str | Sequence[str], model: str = "ViT-B-16", pretrained: str | None = "openai",
                 variant: str = "clearclip", background_threshold: float = 0.0,
                 instances: str | None = "components", **options) -> None:
        self.instances = instances
        self.job = LabelJob(classes if isinstance(classes, str) else list(classes), model=model, pretrained=pretrained,
                            variant=variant, background_threshold=background_threshold,
                            instances=instances or "components", **options)
        self.config = self.job.label_config()
        self._cc = self.job.load_model()
        self._preprocess = False

    @property
    def mask_targets(self) -> dict[int, str]:
        """Pixel value -> class name of the segmentation (0 is background or unlabeled)."""
        names = self.config.vocabulary.names
        return {0: "background", **{cid: names[i] for i, cid in enumerate(self.config.vocabulary.category_ids()) if cid}}

    @property
    def media_type(self) -> str:
        return "image"

    @property
    def ragged_batches(self) -> bool:
        return True  # images keep their own sizes

    @property
    def transforms(self):
        return None

    @property
    def preprocess(self) -> bool:
        return self._preprocess

    @preprocess.setter
    def preprocess(self, value: bool) -> None:
        self._preprocess = value

    def build_get_item(self, field_mapping=None) -> GetItem:
        return _LoadImage(self.config.max_pixels, field_mapping=field_mapping)

    def predict(self, arg) -> dict:
        """Labels of one image (an HxWx3 uint8 array or a PIL image)."""
        return self.predict_all([arg])[0]

    def predict_all(self, args) -> list[dict]:
        """Labels of several images, their windows batched together."""
        prepared = [prepare_image(image) for image in args]
        result = self._cc.segment_categories(prepared, self.config.vocabulary, self.config.settings,
                                             self.config.region_filter.pixel_thresholds(self.config.vocabulary.names))
        return [self._labels(categories, scores) for categories, scores in result.maps()]

    def _labels(self, categories, scores) -> dict:
        labels = {"segmentation": fo.Segmentation(mask=categories.copy())}
        if self.instances is not None:
            names = dict(zip(self.config.vocabulary.category_ids(), self.config.vocabulary.names))
            labels["detections"] = fo.Detections(detections=[
                to_detection(a, names[a.category_id])
                for a in extract_regions(categories, scores, self.config.vocabulary, self.config.region_filter)])
        return labels


def label_samples(samples, model: ClearCLIPModel, label_field: str = "clearclip", **apply_model_options) -> None:
    """``samples.apply_model(model, label_field)``, and the segmentation field's mask targets set on the dataset."""
    dataset = samples._dataset
    dataset.mask_targets = {**dataset.mask_targets, f"{label_field}_segmentation": model.mask_targets}
    dataset.save()
    samples.apply_model(model, label_field=label_field, **apply_model_options)
