"""``clearclip segment``: label maps and overlays of a few images, with the pixel share of each class."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ClearCLIPError
from ..run.job import MODEL, SEGMENTATION
from .options import add_job_options, add_vocabulary_options, job_from_args


def add_parser(subparsers) -> None:
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
    job = job_from_args(args)
    config = job.label_config()
    missing = [str(p) for p in args.images if not p.is_file()]
    if len(missing) == len(args.images):
        raise ClearCLIPError(f"no such image file: {', '.join(missing)}")
    from ..inference.predictor import class_pixel_shares
    from ..io.images import ImageLoadError, load_image
    from ..io.label_png import save_label_png
    from ..io.pictures import save_overlay

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
