"""The ``clearclip`` command line: segment, label, evaluate, review and export.

Every failure the user can act on is one ``clearclip: error: ...`` line: exit status 2 for bad input,
1 for the environment (full disk, a busy run folder), 130 for Ctrl-C.
"""

from __future__ import annotations

import argparse
import errno
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .errors import ClearCLIPError
from .job import FILTERING, MODEL, SEGMENTATION, THROUGHPUT, add_job_options


class Parser(argparse.ArgumentParser):
    """argparse with usage errors as one ``clearclip: error:`` line (exit 2) that points at ``--help``."""

    def error(self, message: str):
        self.exit(2, f"clearclip: error: {message} (see {self.prog} --help)\n")


def add_vocabulary_options(parser: argparse.ArgumentParser) -> None:
    """--classes-file or repeated --class."""
    group = parser.add_argument_group("classes")
    group.add_argument("--classes-file", type=Path,
                       help="one class a line (UTF-8), synonyms comma-separated; a first line 'background' makes "
                            "class 0 background; every name must be unique")
    group.add_argument("--class", dest="classes", action="append", metavar="NAME",
                       help="a class (repeatable; 'person, man' gives synonyms); used when no --classes-file is given")


def classes_from_args(args: argparse.Namespace) -> str | list[str]:
    """The --classes-file path, else the --class strings."""
    if args.classes_file is not None:
        return str(args.classes_file)
    if not args.classes:
        raise ClearCLIPError("no classes given; pass --classes-file FILE or --class NAME (repeatable)")
    return list(args.classes)


def job_from_args(args: argparse.Namespace):
    """The LabelJob the options describe; raises ClearCLIPError for bad classes or thresholds."""
    from .job import LabelJob

    return LabelJob.from_args(args, classes_from_args(args))


# ------------------------------------------------------------------------------------------------ segment
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
    add_job_options(parser, (MODEL, SEGMENTATION))
    parser.add_argument("--out", type=Path, default=Path("workspace/runs/segment"),
                        help="output folder (default: workspace/runs/segment)")
    parser.set_defaults(run=run_segment)


def run_segment(args: argparse.Namespace) -> int:
    from .images import ImageLoadError, load_image
    from .predictor import class_pixel_shares
    from .visualize import save_label_png, save_overlay

    job = job_from_args(args)
    config = job.label_config()
    missing = [str(p) for p in args.images if not p.is_file()]
    if len(missing) == len(args.images):
        raise ClearCLIPError(f"no such image file: {', '.join(missing)}")
    cc = job.load_model()
    names = output_names(args.images)
    failures = 0
    for path in args.images:
        try:
            image = load_image(path)
        except ImageLoadError as error:
            print(f"clearclip: skipped {error}", file=sys.stderr)
            failures += 1
            continue
        seg = cc.segment_prepared([cc.prepare(image)], config.vocabulary, config.settings)[0]
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


# ------------------------------------------------------------------------------------------------ label
def add_label_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "label",
        help="label a folder of images into COCO pseudo-annotations",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Label every image under DATASET_DIR into RUN_DIR: annotations.json (COCO, compressed RLE "
                    "masks with scores),\nlabels/<file>.png (pixel value = category id, 0 = background/unlabeled) "
                    "and run.json.\n\n"
                    "Finding images: recursively, jpg/jpeg/png/bmp/webp/tif in any case; hidden files and folders "
                    "and clearclip\nrun folders are skipped; symlinked folders are followed when they resolve inside "
                    "DATASET_DIR (each real\nfolder once); unreadable folders and files are reported in run.json.\n\n"
                    "Rerunning into the same RUN_DIR resumes: images already labeled are skipped; new, changed "
                    "(size or\nmodification time), failed and unfinished images are labeled; images no longer in "
                    "DATASET_DIR are\ndropped from the results. A RUN_DIR takes one set of settings.",
    )
    parser.add_argument("dataset_dir", type=Path, metavar="DATASET_DIR", help="folder of images")
    parser.add_argument("--out", type=Path, default=None, metavar="RUN_DIR",
                        help="run folder (default: workspace/runs/<dataset folder name>)")
    add_vocabulary_options(parser)
    add_job_options(parser, (MODEL, SEGMENTATION, FILTERING, THROUGHPUT))
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_label)


def run_label(args: argparse.Namespace) -> int:
    from .labeling import label_folder
    from .merge import summary_table

    if not args.dataset_dir.is_dir():
        raise ClearCLIPError(f"dataset folder {args.dataset_dir} does not exist or is not a folder")
    job = job_from_args(args)
    config = job.label_config()
    info = job.info(config)
    run_dir = args.out or Path("workspace/runs") / args.dataset_dir.resolve().name
    summary = label_folder(job.load_model, args.dataset_dir, run_dir, config, info, progress=not args.quiet)
    print(summary_table(summary))
    print(f"\nwrote {run_dir / 'annotations.json'}")
    return 0 if not summary["missing"] else 1


# ------------------------------------------------------------------------------------------------ evaluation
def add_eval_miou_parser(subparsers) -> None:
    from .evaluation import BENCHMARKS

    parser = subparsers.add_parser(
        "eval-miou",
        help="mIoU of label maps against ground truth, or of the model on a paper benchmark",
        description="Two modes. (1) --pred DIR --gt DIR: compare label-map PNGs matched by relative path "
                    "(gt files may carry --gt-suffix); classes from --benchmark, --num-classes, or the run folder "
                    "that holds --pred. (2) --benchmark NAME --data-root DIR: segment the benchmark's validation "
                    "split (mmsegmentation's prepared layout) with the paper's settings for it and evaluate, "
                    "which reproduces the paper's table given the same weights.",
    )
    parser.add_argument("--benchmark", choices=sorted(BENCHMARKS),
                        help="preset: class list, background threshold, crop/stride, reduce-zero-label, layout")
    parser.add_argument("--data-root", type=Path, help="mode 2: the dataset root as prepared for mmsegmentation")
    parser.add_argument("--limit", type=int, default=0, help="mode 2: evaluate the first N images only (0 = all)")
    parser.add_argument("--pred", type=Path, help="mode 1: folder of predicted label maps (*.png)")
    parser.add_argument("--pred-ids", choices=["auto", "class", "category"], default="auto",
                        help="mode 1: what predicted pixel values are: class (class index 0..K-1, as clearclip segment "
                             "writes), category (a run's labels/: 0 = background class or unlabeled, 1..K the classes "
                             "after background); auto: category when --pred is a run's labels/ folder, else class")
    parser.add_argument("--gt", type=Path, help="mode 1: folder of ground-truth label maps")
    parser.add_argument("--gt-suffix", default=".png", help="mode 1: ground-truth file suffix (default: .png)")
    parser.add_argument("--num-classes", type=int, help="mode 1: number of classes when no --benchmark or run gives them")
    parser.add_argument("--reduce-zero-label", action="store_true",
                        help="mode 1: ground truth 0 is ignored and labels shift down by one (ADE20K, VOC20, Context59)")
    parser.add_argument("--ignore-index", type=int, default=255, help="ground-truth value to ignore (default: 255)")
    add_job_options(parser, (MODEL,))
    parser.set_defaults(run=run_eval_miou)


def _pred_vocabulary(args, benchmark):
    """(class names, whether class 0 is background, id kind) for mode 1."""
    from .run_folder import RunFolder
    from .vocabulary import Vocabulary

    run = RunFolder(args.pred.parent) if args.pred.name == "labels" else None
    config = run.read_config() if run is not None else None
    ids = args.pred_ids if args.pred_ids != "auto" else ("category" if config else "class")
    if benchmark is not None:
        vocabulary = benchmark.vocabulary()
    elif config is not None:
        vocabulary = Vocabulary.from_strings(config["vocabulary"])
    elif args.num_classes:
        return [str(i) for i in range(args.num_classes)], False, ids
    else:
        raise ClearCLIPError("give --benchmark or --num-classes (or --pred RUN_DIR/labels of a clearclip run)")
    return vocabulary.names, vocabulary.has_background, ids


def run_eval_miou(args: argparse.Namespace) -> int:
    import numpy as np

    from .evaluation import BENCHMARKS, class_indices, confusion_matrix, iou_metrics, miou_table, read_label_map

    benchmark = BENCHMARKS[args.benchmark] if args.benchmark else None
    if args.pred is not None or args.gt is not None:
        if args.pred is None or args.gt is None:
            raise ClearCLIPError("mode 1 needs both --pred and --gt")
        names, has_background, ids = _pred_vocabulary(args, benchmark)
        reduce_zero = benchmark.reduce_zero_label if benchmark else args.reduce_zero_label
        gt_suffix = benchmark.gt_suffix if benchmark and args.gt_suffix == ".png" else args.gt_suffix
        preds = sorted(args.pred.rglob("*.png"))
        if not preds:
            raise ClearCLIPError(f"no .png label maps under {args.pred}")
        confusion = np.zeros((len(names), len(names) + 1), np.int64)
        for pred_path in preds:
            stem = pred_path.relative_to(args.pred).with_suffix("").as_posix()
            gt_path = args.gt / f"{stem}{gt_suffix}"
            if not gt_path.is_file():
                raise ClearCLIPError(f"no ground truth {gt_path} for {pred_path}")
            try:
                pred = class_indices(read_label_map(pred_path), len(names), ids, has_background)
                confusion += confusion_matrix(pred, read_label_map(gt_path), len(names), reduce_zero, args.ignore_index)
            except ValueError as error:
                raise ClearCLIPError(f"{pred_path} against {gt_path}: {error}") from error
        print(miou_table(iou_metrics(confusion), names))
        return 0
    if benchmark is None or args.data_root is None:
        raise ClearCLIPError("give --pred and --gt, or --benchmark and --data-root")
    from tqdm import tqdm

    from .evaluation import benchmark_pairs
    from .images import load_image
    from .job import LabelJob

    job = LabelJob.from_args(args, benchmark.vocabulary().to_strings())
    job = LabelJob(**{**job.to_dict(), "crop": benchmark.crop, "stride": benchmark.stride,
                      "background_threshold": benchmark.background_threshold})
    config = job.label_config()
    pairs = benchmark_pairs(benchmark, args.data_root)
    pairs = pairs[: args.limit] if args.limit else pairs
    cc = job.load_model()
    classes = len(config.vocabulary)
    confusion = np.zeros((classes, classes + 1), np.int64)
    for image_path, gt_path in tqdm(pairs, unit="img", desc=args.benchmark):
        seg = cc.segment_prepared([cc.prepare(load_image(image_path))], config.vocabulary,
                                  config.settings)[0]
        confusion += confusion_matrix(seg.labels, read_label_map(gt_path), classes, benchmark.reduce_zero_label,
                                      args.ignore_index)
    print(miou_table(iou_metrics(confusion), config.vocabulary.names))
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
    evaluation = coco_segm_eval(args.predictions, args.gt)
    print(evaluation.table)
    counts = evaluation.counts()
    print(f"At IoU 0.5: TP {counts['TP']}, FP {counts['FP']}, FN {counts['FN']}, matched a crowd region (ignored) "
          f"{counts['crowd']}")
    return 0


# ------------------------------------------------------------------------------------------------ review, export
def add_review_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "review",
        help="load a run into FiftyOne and open the App",
        description="Create or update a persistent FiftyOne dataset with the run's images and pseudo-labels, then "
                    "serve the FiftyOne App until interrupted. Reviewers edit 'pseudo_labels' (delete, relabel, "
                    "tag samples 'rejected'); 'pseudo_labels_run' keeps the run's originals. Running review again "
                    "adds images new to the run and never overwrites a reviewer's edits.",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished clearclip label run")
    parser.add_argument("--name", help="dataset name (default: clearclip-<run folder name>-<hash of its path>)")
    parser.add_argument("--gt", type=Path,
                        help="ground truth: a COCO JSON (polygons or RLE, iscrowd honoured; matched by file_name; adds "
                             "ground_truth and evaluate_detections as eval) or a folder of label maps named like "
                             "labels/ (adds evaluate_segmentations as eval_seg)")
    parser.add_argument("--port", type=int, default=5151, help="App port (default: 5151)")
    parser.add_argument("--address", default="127.0.0.1", help="App address (default: 127.0.0.1, this machine only)")
    parser.add_argument("--no-launch", action="store_true", help="load the dataset only, do not start the App")
    parser.set_defaults(run=run_review)


def run_review(args: argparse.Namespace) -> int:
    from .review import app_environment

    app_environment()
    from .review import launch, load_run

    if args.gt is not None and not args.gt.exists():
        raise ClearCLIPError(f"no such ground truth: {args.gt}")
    dataset, report = load_run(args.run_dir, args.name, args.gt)
    print(report)
    if not args.no_launch:
        launch(dataset, port=args.port, address=args.address)
    return 0


def add_export_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export reviewed labels from FiftyOne: COCO, YOLO, CVAT or PNG label maps",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write a FiftyOne dataset's labels. Deleted detections are gone, relabeled ones carry their new "
                    "category, and samples\ntagged 'rejected' (or 'not-in-run': their image left the run) are left "
                    "out.\n\n"
                    "  coco   one JSON file: the run's categories and image ids, compressed RLE masks\n"
                    "  yolo   a folder in Ultralytics' segmentation layout: images/, labels/*.txt (normalised "
                    "polygons), data.yaml\n"
                    "  cvat   a folder: labels.xml (CVAT for images 1.1, polygons) and data/\n"
                    "  masks  a folder: data/, labels/*.png (pixel value = class index + 1), classes.txt\n\n"
                    "Polygons are exact pixel contours; every part of a mask is its own polygon and holes are kept "
                    "(joined to\nthe outline by a zero-width cut), so no instance is dropped or filled in. Images "
                    "are linked, not copied.",
    )
    parser.add_argument("dataset", metavar="DATASET", help="FiftyOne dataset name (see clearclip review)")
    parser.add_argument("--format", default="coco", choices=["coco", "yolo", "cvat", "masks"],
                        help="output format (default: coco)")
    parser.add_argument("--out", type=Path, required=True, metavar="PATH",
                        help="the JSON file (coco) or a new folder (the others)")
    parser.add_argument("--field", default="pseudo_labels", help="Detections field to export (default: pseudo_labels)")
    parser.add_argument("--tags", nargs="+", metavar="T", help="only samples with one of these tags")
    parser.add_argument("--exclude-tags", nargs="*", default=["rejected", "not-in-run"], metavar="T",
                        help="leave out samples with any of these tags (default: rejected not-in-run)")
    parser.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    from .formats import export_dataset

    images = export_dataset(args.dataset, args.out, args.format, args.field, args.tags, args.exclude_tags)
    print(f"wrote {args.out} ({args.format}): {images} images")
    return 0


# ------------------------------------------------------------------------------------------------ calibrate, refilter
def add_calibrate_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="per-class min_score from what reviewers kept, for a target precision",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=("Learn, per class, the lowest min_score at which the pseudo-labels reviewers kept reach a "
                     "target precision, from the\nsamples of a review dataset tagged as reviewed (--reviewed-tag). In "
                     "the FiftyOne App, a reviewer marks the\nsamples they have checked by selecting them and adding "
                     "the tag 'reviewed' (the tag icon above the grid).\nSamples tagged 'rejected' are left out. A "
                     "pseudo-label is correct when it is still in pseudo_labels with its\nlabel, wrong when deleted "
                     "or relabeled; relabeled and drawn detections are misses of their class. Classes with\nfewer "
                     "than --min-reviewed reviewed pseudo-labels keep the run's threshold. Writes a "
                     "--class-thresholds file."),
    )
    parser.add_argument("dataset", metavar="DATASET", help="FiftyOne dataset name (see clearclip review)")
    parser.add_argument("--target-precision", type=float, default=0.9, help="precision to reach per class (default: 0.9)")
    parser.add_argument("--reviewed-tag", default="reviewed", help="tag of the reviewed samples (default: reviewed)")
    parser.add_argument("--min-reviewed", type=int, default=20,
                        help="reviewed pseudo-labels a class needs to be calibrated (default: 20)")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE.yaml", help="the thresholds file to write")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="also save precision-recall curves per class")
    parser.set_defaults(run=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    import fiftyone as fo

    from .atomic import write_text
    from .calibrate import calibration_table, choose_thresholds, collect_evidence, plot_curves, thresholds_yaml

    if not fo.dataset_exists(args.dataset):
        raise ClearCLIPError(f"no FiftyOne dataset named '{args.dataset}'; known: {', '.join(fo.list_datasets())}")
    evidence = collect_evidence(fo.load_dataset(args.dataset), args.reviewed_tag)
    calibrations = choose_thresholds(evidence, args.target_precision, args.min_reviewed)
    print(calibration_table(calibrations, args.target_precision))
    write_text(args.out, thresholds_yaml(calibrations))
    print(f"\nwrote {args.out} (use it with --class-thresholds, or clearclip refilter RUN --class-thresholds)")
    if args.plot:
        plot_curves(evidence, calibrations, args.plot)
        print(f"wrote {args.plot}")
    return 0


def add_refilter_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "refilter",
        help="apply stricter thresholds to a finished run, without the model",
        description="Write a new run folder (annotations.json, labels/, run.json) from RUN with stricter region "
                    "thresholds: the annotations carry their scores and areas, so no image is segmented again. "
                    "Thresholds can only get stricter, and the pixel threshold cannot change.",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN", help="a finished clearclip label run")
    parser.add_argument("--out", type=Path, required=True, metavar="NEW_RUN", help="the new run folder (must not exist)")
    parser.add_argument("--class-thresholds", type=Path, metavar="FILE",
                        help="per-class thresholds, JSON or YAML (e.g. from clearclip calibrate)")
    parser.add_argument("--min-score", type=float, help="new default minimum mean score of a region")
    parser.add_argument("--min-area", type=int, help="new default minimum area in pixels")
    parser.add_argument("--min-area-fraction", type=float, help="new default minimum area as a fraction of the image")
    parser.set_defaults(run=run_refilter)


def run_refilter(args: argparse.Namespace) -> int:
    from .merge import summary_table
    from .refilter import refilter_run

    summary = refilter_run(args.run_dir, args.out, args.class_thresholds, args.min_score, args.min_area,
                           args.min_area_fraction)
    print(summary_table({**summary, "failures": summary.get("failures", [])}))
    print(f"\nwrote {args.out / 'annotations.json'}")
    return 0


# ------------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
    add_calibrate_parser(subparsers)
    add_refilter_parser(subparsers)
    return parser


def _os_error_line(error: OSError) -> tuple[str, int]:
    where = f" ({error.filename})" if error.filename else ""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device{where}; free space and rerun the same command to resume", 1
    return f"{error.strerror or error}{where}", 1


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"clearclip: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; errors print one line on stderr (exit 2 bad input, 1 environment, 130 interrupted)."""
    warnings.showwarning = _show_warning
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except ClearCLIPError as error:
        print(f"clearclip: error: {' '.join(str(error).split())}", file=sys.stderr)
        return error.exit_code
    except OSError as error:
        message, code = _os_error_line(error)
        print(f"clearclip: error: {message}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("clearclip: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
