"""pyswarm.compose: stack files in, typed service specs out.

``load_stack`` reads one or more stack files (the compose format that
``docker stack deploy`` takes), checks them, and returns a :class:`Stack`
whose ``services`` are :class:`pyswarm.models.ServiceSpec` objects ready for
the store. It is pure: it reads the files and the environment you give it,
nothing else, so the CLI can run it before talking to any manager and refuse
a broken file with every problem listed (file, line, column, key path).
``load_config`` loads what ``pyswarm stack config`` shows (no stack name, no
secret data read) and ``render_config`` prints it: the merged, interpolated,
normalised stack; its output loads back to the same. ``Stack.warnings`` lists
what the CLI prints on stderr (``--strict``: every one is an error).

Inside: source (YAML with marks, YAML 1.2 scalars) -> interpolate (${VAR},
.env) -> merge (several files) -> service/container/deployspec/toplevel
(checks, normalisation to long syntax) -> loader (ServiceSpec) -> render.

Errors (all are ``UsageError``: bad input, printed as one line a problem)::

    pyswarm.errors.UsageError
    └── ComposeError              .problems: list[Problem] (mark, path, message)
        ├── StackNameError        the stack name breaks Docker's rules
        ├── StackFileError        missing / unreadable file, invalid YAML
        ├── InterpolationError    bad ${...}, or ${VAR:?msg} with VAR unset
        └── ValidationError       keys and values the format does not allow
"""

from .errors import (
    ComposeError,
    InterpolationError,
    Mark,
    Problem,
    StackFileError,
    StackNameError,
    ValidationError,
)
from .interpolate import parse_env_file, substitute
from .loader import Stack, check_stack_name, load_config, load_stack
from .render import render_config
from .units import format_duration, parse_bytes, parse_duration

__all__ = [
    "ComposeError",
    "InterpolationError",
    "Mark",
    "Problem",
    "Stack",
    "StackFileError",
    "StackNameError",
    "ValidationError",
    "check_stack_name",
    "format_duration",
    "load_config",
    "load_stack",
    "parse_bytes",
    "parse_duration",
    "parse_env_file",
    "render_config",
    "substitute",
]
