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


def add_vocabulary_options(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """--classes-file or repeated --class."""
    group = parser.add_argument_group("classes")
    group.add_argument("--classes-file", type=Path,
                       help="one class a line, synonyms comma-separated; a first line 'background' makes class 0 background")
    group.add_argument("--class", dest="classes", action="append", metavar="NAME",
                       help="a class (repeatable; 'person, man' gives synonyms); used when no --classes-file is given")


def vocabulary_from_args(args: argparse.Namespace):
    """The Vocabulary named by --classes-file or --class."""
    from .vocabulary import Vocabulary

    if args.classes_file is not None:
        return Vocabulary.from_file(args.classes_file)
    if not args.classes:
        raise ClearCLIPError("no classes given; pass --classes-file FILE or --class NAME (repeatable)")
    return Vocabulary.from_strings(args.classes)


def model_from_args(args: argparse.Namespace, **kwargs):
    """A ClearCLIP built from the model options."""
    from .model import resolve_device
    from .predictor import ClearCLIP

    pretrained = None if str(args.pretrained).lower() == "none" else args.pretrained
    device = resolve_device(args.device)
    precision = args.precision
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
    return ClearCLIP.from_pretrained(args.model, pretrained, device=device, precision=precision, variant=args.variant, **kwargs)


def add_segment_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment images and write label maps and overlays",
        description="Segment images with ClearCLIP. Writes <name>_labels.png (pixel value = class index) and "
                    "<name>_overlay.png (colours and a legend) per image, and prints each class's pixel share.",
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    add_vocabulary_options(parser)
    add_model_options(parser)
    group = parser.add_argument_group("segmentation (defaults are the paper's settings)")
    group.add_argument("--background-threshold", type=float, default=0.0,
                       help="pixels whose score is below this get class 0 (default: 0 = off)")
    group.add_argument("--short-side", type=int, default=448, help="resize the short side to this (default: 448)")
    group.add_argument("--max-long-side", type=int, default=2048, help="but keep the long side at most this (default: 2048)")
    group.add_argument("--crop", type=int, default=448, help="sliding-window size (default: 448)")
    group.add_argument("--stride", type=int, default=224, help="sliding-window stride (default: 224)")
    group.add_argument("--logit-scale", type=float, default=50.0, help="softmax temperature factor (default: 50)")
    parser.add_argument("--out", type=Path, default=Path("workspace/runs/segment"),
                        help="output folder (default: workspace/runs/segment)")
    parser.set_defaults(run=run_segment)


def run_segment(args: argparse.Namespace) -> int:
    from .images import ImageLoadError, load_image
    from .predictor import class_pixel_shares
    from .visualize import save_label_png, save_overlay

    vocabulary = vocabulary_from_args(args)
    missing = [str(p) for p in args.images if not p.is_file()]
    if len(missing) == len(args.images):
        raise ClearCLIPError(f"no such image file: {', '.join(missing)}")
    cc = model_from_args(args)
    failures = 0
    for path in args.images:
        try:
            image = load_image(path)
        except ImageLoadError as error:
            print(f"clearclip: skipped {error}", file=sys.stderr)
            failures += 1
            continue
        seg = cc.segment(
            image, vocabulary, background_threshold=args.background_threshold, short_side=args.short_side,
            max_long_side=args.max_long_side, crop=args.crop, stride=args.stride, logit_scale=args.logit_scale,
        )
        save_label_png(seg.labels, args.out / f"{path.stem}_labels.png")
        save_overlay(image, seg.labels, seg.classes, args.out / f"{path.stem}_overlay.png")
        print(f"\n{path} ({image.shape[1]}x{image.shape[0]}) -> {args.out / (path.stem + '_overlay.png')}")
        print(f"  {'class':<30} {'pixels':>8}")
        for name, share in class_pixel_shares(seg):
            print(f"  {name:<30} {100 * share:>7.1f}%")
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clearclip",
        description="Open-vocabulary segmentation labels for image folders with ClearCLIP (ECCV'24), training-free.",
    )
    parser.add_argument("--version", action="version", version=f"clearclip {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_segment_parser(subparsers)
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
