"""``clearclip review``, ``export``, ``calibrate`` and ``refilter``: the reviewer's commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ClearCLIPError
from ..io.storage import is_url
from .options import add_storage_option, storage_options
from ..review.fields import EXCLUDED_TAGS, PRED_FIELD, REVIEWED_TAG, RUN_FIELD


def add_review_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "review",
        help="load a run into FiftyOne and open the App",
        description="Create or update a persistent FiftyOne dataset with the run's images and pseudo-labels, then "
                    f"serve the FiftyOne App until interrupted. Reviewers edit '{PRED_FIELD}' (delete, relabel, "
                    f"tag samples '{EXCLUDED_TAGS[0]}'); '{RUN_FIELD}' keeps the run's originals. Running review again "
                    "adds images new to the run and never overwrites a reviewer's edits.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="a finished clearclip label run: a folder, or an object-storage URL (its files and "
                             "images are fetched into the media cache, $CLEARCLIP_CACHE_DIR/runs, and reused)")
    parser.add_argument("--name", help="dataset name (default: clearclip-<run folder name>-<hash of its path>)")
    parser.add_argument("--gt",
                        help="ground truth: a COCO JSON (polygons or RLE, iscrowd honoured; matched by file_name; adds "
                             "ground_truth, and each prediction's outcome as eval, matched with pycocotools as "
                             "eval-coco matches) or a folder of label maps named like labels/ (adds "
                             "evaluate_segmentations as eval_seg); a path or an object-storage URL")
    parser.add_argument("--port", type=int, default=5151, help="App port (default: 5151)")
    parser.add_argument("--address", default="127.0.0.1", help="App address (default: 127.0.0.1, this machine only)")
    parser.add_argument("--no-launch", action="store_true", help="load the dataset only, do not start the App")
    add_storage_option(parser)
    parser.set_defaults(run=run_review)


def run_review(args: argparse.Namespace) -> int:
    from ..review.app import app_environment

    app_environment()
    from ..review.app import check_port_free, launch
    from ..review.sync import keep_decisions, load_any_run

    gt = args.gt
    if gt is not None and is_url(gt):
        from ..run.copies import fetched

        gt = fetched(gt, storage_options(args))
    elif gt is not None and not Path(gt).exists():
        raise ClearCLIPError(f"no such ground truth: {gt}")
    if not args.no_launch:
        check_port_free(args.port, args.address)  # before the load, not after it
    run_dir, options = args.run_dir, storage_options(args)
    dataset, report, local = load_any_run(run_dir, options, args.name, gt)
    print(report)
    if not args.no_launch:
        try:
            launch(dataset, port=args.port, address=args.address)
        finally:  # Ctrl-C ends a session: what the reviewers did goes into the run folder
            print(keep_decisions(dataset, run_dir, local, options))
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
                    "polygons), data.yaml\n         with train and val (--val-fraction)\n"
                    "  cvat   a folder: labels.xml (CVAT for images 1.1, polygons) and data/\n"
                    "  masks  a folder: data/, labels/*.png (pixel value = class index + 1), classes.txt\n\n"
                    "Polygons are exact pixel contours; every part of a mask is its own polygon and holes are kept "
                    "(joined to\nthe outline by a zero-width cut), so no instance is dropped or filled in. Images "
                    "are linked, not copied.",
    )
    parser.add_argument("dataset", metavar="DATASET", help="FiftyOne dataset name (see clearclip review)")
    parser.add_argument("--format", default="coco", choices=["coco", "yolo", "cvat", "masks"],
                        help="output format (default: coco)")
    parser.add_argument("--out", required=True, metavar="PATH",
                        help="the JSON file (coco) or a new folder (the others); or an object-storage URL, written "
                             "locally first and uploaded whole")
    parser.add_argument("--field", default=PRED_FIELD, help=f"Detections field to export (default: {PRED_FIELD})")
    parser.add_argument("--tags", nargs="+", metavar="T", help="only samples with one of these tags")
    parser.add_argument("--exclude-tags", nargs="*", default=list(EXCLUDED_TAGS), metavar="T",
                        help=f"leave out samples with any of these tags (default: {' '.join(EXCLUDED_TAGS)})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing COCO output file")
    parser.add_argument("--val-fraction", type=float, default=0.0, metavar="F",
                        help="yolo: this fraction of the images (chosen by a hash of the path, so stable) forms the "
                             "val split (default: 0, val is the training images)")
    add_storage_option(parser)
    parser.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    from ..review.formats import export_dataset

    def export(out: Path) -> int:
        return export_dataset(args.dataset, out, args.format, args.field, args.tags, args.exclude_tags,
                              args.overwrite, args.val_fraction)

    if is_url(args.out):
        from ..run.copies import occupied, published

        options = storage_options(args)
        if occupied(args.out, options) and not (args.overwrite and args.format == "coco"):
            raise ClearCLIPError(f"{args.out} exists; choose a new --out" + (" or pass --overwrite" if args.format
                                                                              == "coco" else ""))
        with published(args.out, options) as local:
            images = export(local)
    else:
        images = export(Path(args.out))
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
    parser.add_argument("--reviewed-tag", default=REVIEWED_TAG,
                        help=f"tag of the reviewed samples (default: {REVIEWED_TAG})")
    parser.add_argument("--min-reviewed", type=int, default=20,
                        help="reviewed pseudo-labels a class needs to be calibrated (default: 20)")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE.yaml", help="the thresholds file to write")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="also save precision-recall curves per class")
    parser.set_defaults(run=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    import fiftyone as fo

    from ..io.atomic import write_text
    from ..review.calibrate import (
        calibration_table,
        check_plot_path,
        choose_thresholds,
        collect_evidence,
        plot_curves,
        thresholds_yaml,
    )

    if args.plot:
        check_plot_path(args.plot)  # before any work: a bad suffix should not cost the calibration

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
    parser.add_argument("run_dir", metavar="RUN", help="a finished clearclip label run (a folder or a URL)")
    parser.add_argument("--out", required=True, metavar="NEW_RUN",
                        help="the new run folder or URL (must not exist)")
    parser.add_argument("--class-thresholds", type=Path, metavar="FILE",
                        help="per-class thresholds, JSON or YAML (e.g. from clearclip calibrate)")
    parser.add_argument("--min-score", type=float, help="new default minimum mean score of a region")
    parser.add_argument("--min-area", type=int, help="new default minimum area in pixels")
    parser.add_argument("--min-area-fraction", type=float, help="new default minimum area as a fraction of the image")
    add_storage_option(parser)
    parser.set_defaults(run=run_refilter)


def run_refilter(args: argparse.Namespace) -> int:
    """A run on object storage is refiltered from its local copy (no images fetched); a URL --out is written
    locally and uploaded."""
    from contextlib import nullcontext

    from ..run.copies import local_copy, occupied, published
    from ..run.merge import summary_table
    from ..run.refilter import refilter_run

    options = storage_options(args)
    source = local_copy(args.run_dir, options, images=False).path / "run" if is_url(args.run_dir) else args.run_dir
    if is_url(args.out) and occupied(args.out, options):
        raise ClearCLIPError(f"{args.out} is not empty; choose a new --out")
    with published(args.out, options) if is_url(args.out) else nullcontext(Path(args.out)) as out:
        summary = refilter_run(source, out, args.class_thresholds, args.min_score, args.min_area,
                               args.min_area_fraction)
    print(summary_table({**summary, "failures": summary.get("failures", [])}))
    print(f"\nwrote {args.out.rstrip('/')}/annotations.json")
    return 0
