"""The ``clearclip`` command line: segment, label, evaluate, review and export; one module per command group.

Every failure the user can act on is one ``clearclip: error: ...`` line: exit status 2 for bad input,
1 for the environment (full disk, a busy run folder), 130 for Ctrl-C.
"""

from __future__ import annotations

import argparse
import errno
import sys
import warnings
from collections.abc import Sequence

from .. import __version__
from ..errors import ClearCLIPError, one_line
from . import evaluate, label, review, segment


class Parser(argparse.ArgumentParser):
    """argparse with usage errors as one ``clearclip: error:`` line (exit 2) that points at ``--help``."""

    def error(self, message: str):
        self.exit(2, f"clearclip: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="clearclip",
        description="Open-vocabulary segmentation labels for image folders with ClearCLIP (ECCV'24), training-free.",
    )
    parser.add_argument("--version", action="version", version=f"clearclip {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    segment.add_parser(subparsers)
    label.add_parser(subparsers)
    evaluate.add_miou_parser(subparsers)
    evaluate.add_coco_parser(subparsers)
    review.add_review_parser(subparsers)
    review.add_export_parser(subparsers)
    review.add_calibrate_parser(subparsers)
    review.add_refilter_parser(subparsers)
    return parser


def _os_error_line(error: OSError) -> tuple[str, int]:
    where = f" ({error.filename})" if error.filename else ""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device{where}; free space and rerun the same command to resume", 1
    return f"{error.strerror or error}{where}", 1


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"clearclip: warning: {one_line(message)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; errors print one line on stderr (exit 2 bad input, 1 environment, 130 interrupted)."""
    warnings.showwarning = _show_warning
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except ClearCLIPError as error:
        print(f"clearclip: error: {one_line(error)}", file=sys.stderr)
        return error.exit_code
    except OSError as error:
        message, code = _os_error_line(error)
        print(f"clearclip: error: {one_line(message)}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("clearclip: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
