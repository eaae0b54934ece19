"""``clearclip label``: a folder of images into a run folder of COCO pseudo-annotations."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ClearCLIPError
from ..io.storage import is_url, local_path
from ..run.job import FILTERING, MODEL, SEGMENTATION, STORAGE, THROUGHPUT
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
    parser.add_argument("dataset_dir", metavar="DATASET_DIR",
                        help="folder of images, or an object-storage URL (s3://bucket/prefix, gs://..., az://...)")
    parser.add_argument("--out", default=None, metavar="RUN_DIR",
                        help="run folder or object-storage URL (default: workspace/runs/<dataset folder name>)")
    add_vocabulary_options(parser)
    add_job_options(parser, (MODEL, SEGMENTATION, FILTERING, THROUGHPUT, STORAGE))
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_label)


def _dataset_name(dataset: Path | str) -> str:
    return dataset.rstrip("/").rsplit("/", 1)[-1] if isinstance(dataset, str) else dataset.resolve().name


def run_label(args: argparse.Namespace) -> int:
    from ..run.folder import RunFolder
    from ..run.merge import summary_table
    from ..run.plan import label_folder

    dataset = args.dataset_dir if is_url(args.dataset_dir) else local_path(args.dataset_dir)
    if not is_url(dataset) and not dataset.is_dir():
        raise ClearCLIPError(f"dataset folder {dataset} does not exist or is not a folder")
    job = job_from_args(args)
    config = job.label_config()
    info = job.info(config)
    run_dir = args.out or Path("workspace/runs") / _dataset_name(dataset)
    summary = label_folder(job.load_model, dataset, run_dir, config, info, progress=not args.quiet)
    print(summary_table(summary))
    print(f"\nwrote {RunFolder(run_dir, config.storage_options).annotations_path}")
    return 0 if not summary["missing"] else 1
