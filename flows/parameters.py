"""Flow parameters from the job: every ``LabelJob`` field becomes a parameter Prefect shows, describes and
validates. Ranges and choices are part of the parameter schema, so a deployment run with a bad value is
refused when it is submitted (Prefect enforces the schema), not after the flow has started."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field, fields
from typing import Annotated, Literal

import pydantic

from clearclip.run.job import LabelJob


def _job_annotation(f: Field, annotation):
    """The field's type, narrowed to its choices, with its check's bounds (``ge``, ``gt``, ``le``)."""
    check = f.metadata["check"]
    if choices := getattr(check, "choices", None):
        annotation = Literal[tuple(choices)]
    bounds = getattr(check, "bounds", None)
    return Annotated[annotation, pydantic.Field(**bounds)] if bounds else annotation


def with_job_parameters(function: Callable) -> Callable:
    """Give a flow function ``(..., **job)`` the signature ``(..., <every LabelJob field>)``, so that Prefect
    shows, validates and passes each job parameter by name. Prefect reads parameter descriptions from the
    docstring's ``Args:`` section, so each job field's help is appended there (the function's docstring
    ends with an ``Args:`` section of its own parameters)."""
    signature = inspect.signature(function)
    function.__doc__ = inspect.cleandoc(function.__doc__ or "") + "".join(
        f"\n    {f.name}: {f.metadata['help']}" for f in fields(LabelJob))
    hints = typing.get_type_hints(function, include_extras=True)  # real types, bounds kept, for the schema
    own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()
           if p.kind is not inspect.Parameter.VAR_KEYWORD]
    types = typing.get_type_hints(LabelJob)
    for f in fields(LabelJob):
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else inspect.Parameter.empty)
        own.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                     annotation=_job_annotation(f, types[f.name])))
    function.__signature__ = signature.replace(parameters=own)
    return function
