"""The command line's shared options: the classes, and the ``LabelJob`` fields as argparse options."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import MISSING, fields

from ..errors import ClearCLIPError
from ..run.job import LabelJob, storage_options_check


def add_vocabulary_options(parser: argparse.ArgumentParser) -> None:
    """--classes-file or repeated --class."""
    group = parser.add_argument_group("classes")
    group.add_argument("--classes-file", metavar="FILE",
                       help="one class a line (UTF-8), synonyms comma-separated; a first line 'background' makes "
                            "class 0 background; every name must be unique (a path or an object-storage URL)")
    group.add_argument("--class", dest="classes", action="append", metavar="NAME",
                       help="a class (repeatable; 'person, man' gives synonyms); used when no --classes-file is given")


def classes_from_args(args: argparse.Namespace) -> str | list[str]:
    """The --classes-file path, else the --class strings."""
    if args.classes_file is not None:
        return str(args.classes_file)
    if not args.classes:
        raise ClearCLIPError("no classes given; pass --classes-file FILE or --class NAME (repeatable)")
    return list(args.classes)


def job_from_args(args: argparse.Namespace, classes: str | list[str] | None = None) -> LabelJob:
    """The LabelJob the options describe (options the parser did not define keep their defaults); ``classes``
    replaces the class options. Raises ClearCLIPError for bad values."""
    values = {f.name: getattr(args, f.name) for f in fields(LabelJob) if f.name != "classes" and hasattr(args, f.name)}
    return LabelJob(classes if classes is not None else classes_from_args(args), **values)


def add_storage_option(parser: argparse.ArgumentParser) -> None:
    """``--storage-option KEY=VALUE`` (repeatable), as ``clearclip label`` has it, for commands that take URLs."""
    f = next(f for f in fields(LabelJob) if f.name == "storage_options")
    parser.add_argument(f.metadata["flag"], dest="storage_options", action="append", metavar=f.metadata["metavar"],
                        help=f.metadata["help"])


def storage_options(args: argparse.Namespace) -> dict:
    """The parsed ``--storage-option`` values (credentials refused, as in a job)."""
    try:
        return storage_options_check(getattr(args, "storage_options", None))
    except ValueError as error:
        raise ClearCLIPError(f"--storage-option {error}") from None


def argparse_type(name: str, check: Callable) -> Callable:
    def convert(text_value: str):
        try:
            return check(_parse_number(text_value) if getattr(check, "numeric", False) else text_value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{error} (got {text_value!r})") from None

    convert.__name__ = name
    return convert


def _parse_number(text_value: str):
    try:
        return int(text_value)
    except ValueError:
        try:
            return float(text_value)  # "nan" parses, and the check refuses it
        except ValueError:
            return text_value  # the check refuses it with the valid range


def add_job_options(parser: argparse.ArgumentParser, groups: tuple[str, ...]) -> None:
    """Add the options of ``LabelJob`` in ``groups`` (MODEL, SEGMENTATION, FILTERING, THROUGHPUT) to a parser."""
    containers = {}
    for f in fields(LabelJob):
        group = f.metadata.get("group")
        if group not in groups:
            continue
        container = containers.setdefault(group, parser.add_argument_group(group))
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        if f.default_factory is not MISSING:  # a list
            default = f.default_factory()
        check = f.metadata["check"]
        shown_value = " ".join(map(str, default)) if isinstance(default, list) else default
        shown = "" if default in (None, False) else f" (default: {shown_value})"
        help_text = f.metadata["help"].replace("%", "%%")  # argparse %-formats help strings
        if check is bool:
            container.add_argument(flag, dest=f.name, action="store_true", help=help_text)
        elif f.name == "templates":
            container.add_argument(flag, dest=f.name, action="append", metavar="TEMPLATE", help=help_text)
        elif f.name == "storage_options":
            container.add_argument(flag, dest=f.name, action="append", metavar=f.metadata["metavar"], help=help_text)
        elif f.metadata.get("nargs"):
            container.add_argument(flag, dest=f.name, nargs=f.metadata["nargs"], type=int, metavar=f.metadata["metavar"],
                                   default=default, help=help_text + shown)
        elif f.name == "pretrained":
            container.add_argument(flag, dest=f.name, default=default, help=help_text + shown)
        else:
            choices = getattr(check, "choices", None)
            container.add_argument(flag, dest=f.name, default=default, choices=choices,
                                   type=None if choices else argparse_type(f.name, check),
                                   metavar=f.metadata.get("metavar"), help=help_text + shown)
