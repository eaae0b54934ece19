"""``clearclip eval-miou`` and ``clearclip eval-coco``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ClearCLIPError
from ..run.job import MODEL
from ..run.job import whole
from .options import argparse_type, add_job_options, job_from_args


def add_miou_parser(subparsers) -> None:
    from ..evaluation.benchmarks import BENCHMARKS

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
    parser.add_argument("--limit", type=argparse_type("limit", whole(0)), default=0,
                        help="mode 2: evaluate the first N images only (0 = all)")
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
    from ..run.folder import RunFolder
    from ..vocabulary import Vocabulary

    run = RunFolder(args.pred.parent)
    run = run if run.labels_dir.name == args.pred.name else None
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

    from ..evaluation.benchmarks import BENCHMARKS
    from ..evaluation.miou import class_indices, confusion_matrix, iou_metrics, miou_table, read_label_map

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

    from ..evaluation.benchmarks import benchmark_pairs
    from ..io.images import load_image
    from ..run.job import LabelJob

    job = job_from_args(args, benchmark.vocabulary().to_strings())
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


def add_coco_parser(subparsers) -> None:
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
    from ..evaluation.coco_eval import coco_segm_eval

    for path in (args.predictions, args.gt):
        if not path.is_file():
            raise ClearCLIPError(f"no such file: {path}")
    evaluation = coco_segm_eval(args.predictions, args.gt)
    print(evaluation.table)
    counts = evaluation.counts()
    print(f"At IoU 0.5: TP {counts['TP']}, FP {counts['FP']}, FN {counts['FN']}, matched a crowd region (ignored) "
          f"{counts['crowd']}")
    return 0
