"""Flow parameters from the job: every ``LabelJob`` field becomes a parameter Prefect shows and validates."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import MISSING, fields

from clearclip.run.job import LabelJob


def with_job_parameters(function: Callable) -> Callable:
    """Give a flow function ``(..., **job)`` the signature ``(..., <every LabelJob field>)``, so that Prefect
    shows, validates and passes each job parameter by name."""
    signature = inspect.signature(function)
    own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    types = typing.get_type_hints(LabelJob)
    for f in fields(LabelJob):
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else inspect.Parameter.empty)
        own.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=types[f.name]))
    function.__signature__ = signature.replace(parameters=own)
    return function

