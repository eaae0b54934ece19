"""The ``clearclip`` command line: segment, label, evaluate, review and export."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .decomposition import VARIANTS
from .errors import ClearCLIPError

DEFAULT_MODEL = "ViT-B-16"
DEFAULT_PRETRAINED = "openai"


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model, --pretrained, --variant, --device, --precision."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=DEFAULT_MODEL,
                       help="open_clip model name (ViT-B-16, ViT-L-14, ...), or local-dir:/folder, or hf-hub:org/repo "
                            f"(default: {DEFAULT_MODEL})")
    group.add_argument("--pretrained", default=DEFAULT_PRETRAINED,
                       help="pretrained tag (openai, laion2b_s34b_b88k, metaclip_fullcc, ...) or a weight file; "
                            "'none' for random weights (tests and benchmarks only); ignored for local-dir:/hf-hub: "
                            f"(default: {DEFAULT_PRETRAINED})")
    group.add_argument("--variant", default="clearclip", metavar="{" + ",".join(VARIANTS) + "}",
                       help="last-block decomposition: clearclip (q-q attention, no residual, no FFN; default), "
                            "vanilla (unmodified CLIP), maskclip, sclip")
    group.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ... (default: auto)")
    group.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                       help="auto is fp16 autocast on CUDA and fp32 on the CPU (default: auto)")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the vision forward (faster on GPUs after a warm-up per window size)")


def add_vocabulary_options(parser: argparse.ArgumentParser) -> None:
    """--classes-file or repeated --class."""
    group = parser.add_argument_group("classes")
    group.add_argument("--classes-file", type=Path,
                       help="one class a line, synonyms comma-separated; a first line 'background' makes class 0 background")
    group.add_argument("--class", dest="classes", action="append", metavar="NAME",
                       help="a class (repeatable; 'person, man' gives synonyms); used when no --classes-file is given")


def classes_from_args(args: argparse.Namespace) -> str | list[str]:
    """The --classes-file path, else the --class strings."""
    if args.classes_file is not None:
        return str(args.classes_file)
    if not args.classes:
        raise ClearCLIPError("no classes given; pass --classes-file FILE or --class NAME (repeatable)")
    return list(args.classes)


def pretrained_from_args(args: argparse.Namespace) -> str | None:
    """--pretrained, with 'none' meaning random weights."""
    return None if str(args.pretrained).lower() == "none" else args.pretrained


def model_from_args(args: argparse.Namespace):
    """A ClearCLIP built from the model options."""
    from .predictor import ClearCLIP

    return ClearCLIP.from_pretrained(args.model, pretrained_from_args(args), device=args.device,
                                     precision=args.precision, variant=args.variant, compile=args.compile)


def add_segment_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment images and write label maps and overlays",
        description="Segment images with ClearCLIP. Writes <name>_labels.png (pixel value = class index) and "
                    "<name>_overlay.png (colours and a legend) per image, and prints each class's pixel share. <name> is "
                    "the file's stem; images whose stem is already taken get <stem>-2, <stem>-3, ...",
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    add_vocabulary_options(parser)
    add_model_options(parser)
    add_segment_settings(parser)
    parser.add_argument("--out", type=Path, default=Path("workspace/runs/segment"),
                        help="output folder (default: workspace/runs/segment)")
    parser.set_defaults(run=run_segment)


def run_segment(args: argparse.Namespace) -> int:
    from .images import ImageLoadError, load_image
    from .predictor import class_pixel_shares
    from .visualize import save_label_png, save_overlay

    from .vocabulary import Vocabulary

    vocabulary = Vocabulary.load(classes_from_args(args))
    missing = [str(p) for p in args.images if not p.is_file()]
    if len(missing) == len(args.images):
        raise ClearCLIPError(f"no such image file: {', '.join(missing)}")
    settings = settings_from_args(args)
    cc = model_from_args(args)
    names = output_names(args.images)
    failures = 0
    for path in args.images:
        try:
            image = load_image(path)
        except ImageLoadError as error:
            print(f"clearclip: skipped {error}", file=sys.stderr)
            failures += 1
            continue
        seg = cc.segment_prepared([cc.prepare(image, settings)], vocabulary, settings)[0]
        name = names[path]
        save_label_png(seg.labels, args.out / f"{name}_labels.png")
        save_overlay(image, seg.labels, seg.classes, args.out / f"{name}_overlay.png")
        print(f"\n{path} ({image.shape[1]}x{image.shape[0]}) -> {args.out / (name + '_overlay.png')}")
        print(f"  {'class':<30} {'pixels':>8}")
        for class_name, share in class_pixel_shares(seg):
            print(f"  {class_name:<30} {100 * share:>7.1f}%")
    return 1 if failures else 0


def output_names(paths: list[Path]) -> dict[Path, str]:
    """Each image's output name: its stem, with -2, -3, ... for later images whose stem is taken."""
    names: dict[Path, str] = {}
    taken: set[str] = set()
    for path in paths:
        if path in names:
            continue
        name, number = path.stem, 1
        while name in taken:
            number += 1
            name = f"{path.stem}-{number}"
        names[path] = name
        taken.add(name)
    return names


def add_segment_settings(parser: argparse.ArgumentParser) -> None:
    """The paper's segmentation settings, each overridable."""
    group = parser.add_argument_group("segmentation (defaults are the paper's settings)")
    group.add_argument("--background-threshold", type=float, default=0.0,
                       help="pixels whose score is below this get class 0 (needs 'background' as class 0 "
                            "for label; paper: VOC 0.5, Context60 0.15, COCO-Object 0.4; default: 0 = off)")
    group.add_argument("--short-side", type=int, default=448, help="resize the short side to this (default: 448)")
    group.add_argument("--max-long-side", type=int, default=2048, help="but keep the long side at most this (default: 2048)")
    group.add_argument("--crop", type=int, default=448, help="sliding-window size (default: 448)")
    group.add_argument("--stride", type=int, default=224, help="sliding-window stride (default: 224)")
    group.add_argument("--logit-scale", type=float, default=50.0, help="softmax temperature factor (default: 50)")


SEGMENT_OPTIONS = ("short_side", "max_long_side", "crop", "stride", "logit_scale")


def settings_from_args(args: argparse.Namespace):
    """SegmentSettings from the segmentation options."""
    from .segmentation import SegmentSettings

    return SegmentSettings(background_threshold=args.background_threshold,
                           **{name: getattr(args, name) for name in SEGMENT_OPTIONS})


def add_label_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "label",
        help="label a folder of images into COCO pseudo-annotations",
        description="Label every image under DATASET_DIR (recursively; jpg, jpeg, png, bmp, webp, tif in any case) "
                    "into RUN_DIR: annotations.json (COCO, compressed RLE masks with scores), labels/<file>.png "
                    "(pixel value = category id, 0 = background/unlabeled) and run.json. Rerunning into the same "
                    "RUN_DIR resumes: finished images are skipped. Unreadable files are reported and skipped.",
    )
    parser.add_argument("dataset_dir", type=Path, metavar="DATASET_DIR", help="folder of images")
    parser.add_argument("--out", type=Path, default=None, metavar="RUN_DIR",
                        help="run folder (default: workspace/runs/<dataset folder name>)")
    add_vocabulary_options(parser)
    add_model_options(parser)
    add_segment_settings(parser)
    group = parser.add_argument_group("confidence filtering")
    group.add_argument("--pixel-threshold", type=float, default=0.0,
                       help="pixels whose score is below this are unlabeled (default: 0)")
    group.add_argument("--min-score", type=float, default=0.0,
                       help="drop regions whose mean pixel score is below this (default: 0)")
    group.add_argument("--min-area", type=int, default=0, help="drop regions smaller than this many pixels (default: 0)")
    group.add_argument("--class-thresholds", type=Path, metavar="FILE",
                       help='per-class overrides, JSON or YAML: {"person": {"min_score": 0.5, "min_area": 100}}')
    group.add_argument("--instances", default="components", choices=["components", "semantic"],
                       help="components: one annotation per connected region of a class (default); "
                            "semantic: one annotation per class per image")
    group = parser.add_argument_group("throughput")
    group.add_argument("--batch-size", type=int, default=4, help="images whose windows share forward passes (default: 4)")
    group.add_argument("--workers", type=int, default=-1,
                       help="image decoding processes (default: -1 = one per spare core, up to 4; 0 = in-process)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_label)


def job_from_args(args: argparse.Namespace):
    """The LabelJob the label options describe."""
    from .jobs import LabelJob

    segment = {name: getattr(args, name) for name in SEGMENT_OPTIONS}
    return LabelJob(
        classes_from_args(args), model=args.model, pretrained=pretrained_from_args(args),
        variant=args.variant, device=args.device, precision=args.precision,
        background_threshold=args.background_threshold, pixel_threshold=args.pixel_threshold,
        min_score=args.min_score, min_area=args.min_area,
        class_thresholds=str(args.class_thresholds) if args.class_thresholds else None, instances=args.instances,
        batch_size=args.batch_size, num_workers=args.workers, segment=segment,
    )


def run_label(args: argparse.Namespace) -> int:
    from .labeling import label_folder, summary_table

    if not args.dataset_dir.is_dir():
        raise ClearCLIPError(f"dataset folder {args.dataset_dir} does not exist or is not a folder")
    job = job_from_args(args)
    config = job.label_config()
    info = job.info(config)
    run_dir = args.out or Path("workspace/runs") / args.dataset_dir.resolve().name
    cc = model_from_args(args)
    summary = label_folder(cc, args.dataset_dir, run_dir, config, info, progress=not args.quiet)
    print(summary_table(summary))
    print(f"\nwrote {run_dir / 'annotations.json'}")
    return 0 if not summary["missing"] else 1


def add_eval_miou_parser(subparsers) -> None:
    from .evaluation import BENCHMARKS

    parser = subparsers.add_parser(
        "eval-miou",
        help="mIoU of label maps against ground truth, or of the model on a paper benchmark",
        description="Two modes. (1) --pred DIR --gt DIR: compare label-map PNGs matched by relative path "
                    "(gt files may carry --gt-suffix); classes from --benchmark or --num-classes. "
                    "(2) --benchmark NAME --data-root DIR: segment the benchmark's validation split "
                    "(mmsegmentation's prepared layout) with the paper's settings for it and evaluate, "
                    "which reproduces the paper's table given the same weights.",
    )
    parser.add_argument("--benchmark", choices=sorted(BENCHMARKS),
                        help="preset: class list, background threshold, crop/stride, reduce-zero-label, layout")
    parser.add_argument("--data-root", type=Path, help="mode 2: the dataset root as prepared for mmsegmentation")
    parser.add_argument("--limit", type=int, default=0, help="mode 2: evaluate the first N images only (0 = all)")
    parser.add_argument("--pred", type=Path, help="mode 1: folder of predicted label maps (*.png)")
    parser.add_argument("--gt", type=Path, help="mode 1: folder of ground-truth label maps")
    parser.add_argument("--gt-suffix", default=".png", help="mode 1: ground-truth file suffix (default: .png)")
    parser.add_argument("--num-classes", type=int, help="mode 1: number of classes when no --benchmark is given")
    parser.add_argument("--reduce-zero-label", action="store_true",
                        help="mode 1: ground truth 0 is ignored and labels shift down by one (ADE20K, VOC20, Context59)")
    parser.add_argument("--ignore-index", type=int, default=255, help="ground-truth value to ignore (default: 255)")
    add_model_options(parser)
    parser.set_defaults(run=run_eval_miou)


def run_eval_miou(args: argparse.Namespace) -> int:
    import numpy as np

    from .evaluation import BENCHMARKS, confusion_matrix, iou_metrics, miou_table, read_label_map

    benchmark = BENCHMARKS[args.benchmark] if args.benchmark else None
    if args.pred is not None or args.gt is not None:
        if args.pred is None or args.gt is None:
            raise ClearCLIPError("mode 1 needs both --pred and --gt")
        if benchmark is None and not args.num_classes:
            raise ClearCLIPError("give --benchmark or --num-classes")
        names = benchmark.vocabulary().names if benchmark else [str(i) for i in range(args.num_classes)]
        reduce_zero = benchmark.reduce_zero_label if benchmark else args.reduce_zero_label
        gt_suffix = benchmark.gt_suffix if benchmark and args.gt_suffix == ".png" else args.gt_suffix
        preds = sorted(args.pred.rglob("*.png"))
        if not preds:
            raise ClearCLIPError(f"no .png label maps under {args.pred}")
        confusion = np.zeros((len(names), len(names)), np.int64)
        for pred_path in preds:
            stem = pred_path.relative_to(args.pred).with_suffix("").as_posix()
            gt_path = args.gt / f"{stem}{gt_suffix}"
            if not gt_path.is_file():
                raise ClearCLIPError(f"no ground truth {gt_path} for {pred_path}")
            confusion += confusion_matrix(read_label_map(pred_path), read_label_map(gt_path), len(names), reduce_zero,
                                          args.ignore_index)
        print(miou_table(iou_metrics(confusion), names))
        return 0
    if benchmark is None or args.data_root is None:
        raise ClearCLIPError("give --pred and --gt, or --benchmark and --data-root")
    from tqdm import tqdm

    from .evaluation import benchmark_pairs
    from .images import load_image
    from .segmentation import SegmentSettings

    vocabulary = benchmark.vocabulary()
    settings = SegmentSettings(crop=benchmark.crop, stride=benchmark.stride, background_threshold=benchmark.background_threshold)
    pairs = benchmark_pairs(benchmark, args.data_root)
    pairs = pairs[: args.limit] if args.limit else pairs
    cc = model_from_args(args)
    confusion = np.zeros((len(vocabulary), len(vocabulary)), np.int64)
    for image_path, gt_path in tqdm(pairs, unit="img", desc=args.benchmark):
        seg = cc.segment_prepared([cc.prepare(load_image(image_path), settings)], vocabulary, settings)[0]
        confusion += confusion_matrix(seg.labels, read_label_map(gt_path), len(vocabulary), benchmark.reduce_zero_label,
                                      args.ignore_index)
    print(miou_table(iou_metrics(confusion), vocabulary.names))
    return 0


def add_eval_coco_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval-coco",
        help="COCO segm AP of annotations.json against ground truth",
        description="Run pycocotools' COCOeval (iouType segm). Images are matched by file_name and "
                    "categories by name when PREDICTIONS is a full COCO document such as annotations.json.",
    )
    parser.add_argument("predictions", type=Path, metavar="PREDICTIONS", help="annotations.json of a run, or a results list")
    parser.add_argument("--gt", type=Path, required=True, help="ground-truth COCO JSON with segmentations")
    parser.set_defaults(run=run_eval_coco)


def run_eval_coco(args: argparse.Namespace) -> int:
    from .evaluation import coco_segm_eval

    for path in (args.predictions, args.gt):
        if not path.is_file():
            raise ClearCLIPError(f"no such file: {path}")
    _, table = coco_segm_eval(args.predictions, args.gt)
    print(table)
    return 0


def add_review_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "review",
        help="load a run into FiftyOne and open the App",
        description="Create or update a persistent FiftyOne dataset with the run's images, instance pseudo-labels "
                    "(pseudo_labels), label maps (pseudo_segmentation) and per-sample confidences, with a saved "
                    "view 'least-confident-first'; then serve the FiftyOne App until interrupted.",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished clearclip label run")
    parser.add_argument("--name", help="dataset name (default: clearclip-<run folder name>)")
    parser.add_argument("--gt", type=Path,
                        help="ground truth: a COCO JSON (matched by file_name; adds ground_truth and evaluate_detections "
                             "as eval) or a folder of label maps named like labels/ (adds evaluate_segmentations as eval_seg)")
    parser.add_argument("--port", type=int, default=5151, help="App port (default: 5151)")
    parser.add_argument("--address", default="127.0.0.1", help="App address (default: 127.0.0.1, this machine only)")
    parser.add_argument("--no-launch", action="store_true", help="load the dataset only, do not start the App")
    parser.set_defaults(run=run_review)


def run_review(args: argparse.Namespace) -> int:
    from .review import launch, load_run

    if args.gt is not None and not args.gt.exists():
        raise ClearCLIPError(f"no such ground truth: {args.gt}")
    dataset = load_run(args.run_dir, args.name, args.gt)
    print(f"FiftyOne dataset '{dataset.name}': {len(dataset)} samples, "
          f"{dataset.count('pseudo_labels.detections')} pseudo-labels")
    if not args.no_launch:
        launch(dataset, port=args.port, address=args.address)
    return 0


def add_export_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export reviewed labels from FiftyOne as COCO JSON",
        description="Write a FiftyOne dataset's labels as COCO JSON with the run's categories and compressed RLE "
                    "masks. Deleted detections are gone, relabeled ones carry their new category, and samples "
                    "tagged 'rejected' are left out.",
    )
    parser.add_argument("dataset", metavar="DATASET", help="FiftyOne dataset name (see clearclip review)")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE.json", help="output COCO JSON")
    parser.add_argument("--field", default="pseudo_labels", help="Detections field to export (default: pseudo_labels)")
    parser.add_argument("--tags", nargs="+", metavar="T", help="only samples with one of these tags")
    parser.add_argument("--exclude-tags", nargs="*", default=["rejected"], metavar="T",
                        help="leave out samples with any of these tags (default: rejected)")
    parser.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    from .export import export_coco

    document = export_coco(args.dataset, args.out, args.field, args.tags, args.exclude_tags)
    print(f"wrote {args.out}: {len(document['images'])} images, {len(document['annotations'])} annotations")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clearclip",
        description="Open-vocabulary segmentation labels for image folders with ClearCLIP (ECCV'24), training-free.",
    )
    parser.add_argument("--version", action="version", version=f"clearclip {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_segment_parser(subparsers)
    add_label_parser(subparsers)
    add_eval_miou_parser(subparsers)
    add_eval_coco_parser(subparsers)
    add_review_parser(subparsers)
    add_export_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user errors print one line on stderr and exit with status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ClearCLIPError as error:
        print(f"clearclip: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clearclip: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
