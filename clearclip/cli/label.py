"""``clearclip label``: a folder of images into a run folder of COCO pseudo-annotations."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ClearCLIPError
from ..run.job import FILTERING, MODEL, SEGMENTATION, THROUGHPUT
from .options import add_job_options, add_vocabulary_options, job_from_args


def add_parser(subparsers) -> None:
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
    from ..run.merge import summary_table
    from ..run.plan import label_folder

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
