"""The paper's eight benchmarks as mmsegmentation prepares them: class lists, layouts and settings."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import ClearCLIPError
from ..vocabulary import Vocabulary


@dataclass(frozen=True)
class Benchmark:
    """A benchmark as prepared by mmsegmentation: where images and ground truth live, and the paper's settings."""

    class_file: str
    image_dir: str
    gt_dir: str
    image_suffix: str
    gt_suffix: str
    split_file: str | None = None
    reduce_zero_label: bool = False
    background_threshold: float = 0.0
    crop: int = 448
    stride: int = 224

    def vocabulary(self) -> Vocabulary:
        text = resources.files("clearclip.evaluation").joinpath("classes").joinpath(self.class_file).read_text(encoding="utf-8")
        return Vocabulary.from_strings([line for line in text.splitlines() if line.strip()])


BENCHMARKS: dict[str, Benchmark] = {
    "voc21": Benchmark("voc21.txt", "VOC2012/JPEGImages", "VOC2012/SegmentationClass", ".jpg", ".png",
                       "VOC2012/ImageSets/Segmentation/val.txt", background_threshold=0.5),
    "voc20": Benchmark("voc20.txt", "VOC2012/JPEGImages", "VOC2012/SegmentationClass", ".jpg", ".png",
                       "VOC2012/ImageSets/Segmentation/val.txt", reduce_zero_label=True),
    "context60": Benchmark("context60.txt", "VOC2010/JPEGImages", "VOC2010/SegmentationClassContext", ".jpg", ".png",
                           "VOC2010/ImageSets/SegmentationContext/val.txt", background_threshold=0.15),
    "context59": Benchmark("context59.txt", "VOC2010/JPEGImages", "VOC2010/SegmentationClassContext", ".jpg", ".png",
                           "VOC2010/ImageSets/SegmentationContext/val.txt", reduce_zero_label=True),
    "coco_object": Benchmark("coco_object.txt", "images/val2017", "annotations/val2017", ".jpg",
                             "_instanceTrainIds.png", background_threshold=0.4),
    "coco_stuff": Benchmark("coco_stuff.txt", "images/val2017", "annotations/val2017", ".jpg", "_labelTrainIds.png"),
    "cityscapes": Benchmark("city_scapes.txt", "leftImg8bit/val", "gtFine/val", "_leftImg8bit.png",
                            "_gtFine_labelTrainIds.png", crop=224, stride=224),
    "ade20k": Benchmark("ade20k.txt", "images/validation", "annotations/validation", ".jpg", ".png",
                        reduce_zero_label=True),
}


def benchmark_pairs(benchmark: Benchmark, data_root: str | Path) -> list[tuple[Path, Path]]:
    """(image, ground truth) paths of a benchmark's validation split under ``data_root``."""
    root = Path(data_root)
    image_dir, gt_dir = root / benchmark.image_dir, root / benchmark.gt_dir
    if not image_dir.is_dir() or not gt_dir.is_dir():
        raise ClearCLIPError(f"expected {image_dir} and {gt_dir} (mmsegmentation's layout) under {root}")
    if benchmark.split_file:
        names = (root / benchmark.split_file).read_text().split()
    else:
        names = sorted(str(p.relative_to(gt_dir))[: -len(benchmark.gt_suffix)] for p in gt_dir.rglob(f"*{benchmark.gt_suffix}"))
    pairs = [(image_dir / f"{n}{benchmark.image_suffix}", gt_dir / f"{n}{benchmark.gt_suffix}") for n in names]
    missing = [str(image) for image, _ in pairs if not image.is_file()]
    if missing:
        raise ClearCLIPError(f"{len(missing)} images of the split are missing, e.g. {missing[0]}")
    return pairs
