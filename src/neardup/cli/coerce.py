"""Option values converted without pydantic: typer >= 0.29 coerces every value that is not None and
not a bool through a pydantic ``TypeAdapter`` (importing pydantic costs ~0.08 s of CPU, more than
half of what ``neardup runs`` may take). neardup's options are plain ``str``, ``int``, ``float``,
``bool``, ``Path`` and ``list[Path]``; for those this module gives each parameter a converter with
the same results and the same messages for well-formed input (tests/test_cli_coerce.py checks it
against typer's own pydantic coercion), and hands anything else to typer.

Hooked in by :func:`install` on each parameter of a command (``cli/typer_app.py``); on a typer without
the per-parameter runtime (before 0.29, which needed no pydantic) it does nothing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, get_args, get_origin

#: pydantic's messages (typer shows the first error's message)
INT_MESSAGE = "Input should be a valid integer, unable to parse string as an integer"
FLOAT_MESSAGE = "Input should be a valid number, unable to parse string as a number"

# pydantic's lax str -> int: digits with single underscores between them, and a fraction of zeros
_INT = re.compile(r"[+-]?[0-9]+(?:_[0-9]+)*(?:\.0+)?")


class _Unhandled(Exception):
    """A value this module does not convert (typer's own coercion takes it)."""


def _int(value: Any) -> int:
    if type(value) is int:
        return value
    if not isinstance(value, str):
        raise _Unhandled
    s = value.strip()
    if not s.isascii() or _INT.fullmatch(s) is None:
        raise ValueError(INT_MESSAGE)
    try:
        return int(s.split(".", 1)[0])
    except ValueError:  # more digits than int() parses: an error there too
        raise ValueError(INT_MESSAGE) from None


def _float(value: Any) -> float:
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    if not isinstance(value, str):
        raise _Unhandled
    s = value.strip()
    try:
        if not s.isascii() or ("_" in s and s != value):  # pydantic: spaces around a number, not around 1_0
            raise ValueError
        return float(s)
    except ValueError:
        raise ValueError(FLOAT_MESSAGE) from None


def _str(value: Any) -> str:
    if isinstance(value, bytes):
        raise _Unhandled  # typer decodes bytes with the argv encoding
    return str(value)


def _bool(value: Any) -> bool:
    if type(value) is bool:
        return value
    raise _Unhandled  # "yes", "0", ... from an environment variable: typer's parsing


def _ranged(convert: Callable[[Any], Any], lo: Any, hi: Any) -> Callable[[Any], Any]:
    if lo is None and hi is None:
        return convert

    def ranged(value: Any) -> Any:
        v = convert(value)
        if lo is not None and not v >= lo:  # NaN fails both, as in pydantic
            raise ValueError(f"Input should be greater than or equal to {lo}")
        if hi is not None and not v <= hi:
            raise ValueError(f"Input should be less than or equal to {hi}")
        return v

    return ranged


def _leaf(annotation: Any, info: Any) -> Callable[..., Any] | None:
    """The converter of one value ``(value, param, ctx) -> value``, or None where typer's own must run."""
    if getattr(info, "parser", None) is not None or getattr(info, "click_type", None) is not None:
        return None
    if annotation is str:
        convert: Callable[[Any], Any] = _str
    elif annotation is bool:
        convert = _bool
    elif annotation is int or annotation is float:
        if getattr(info, "clamp", False):
            return None
        convert = _ranged(_int if annotation is int else _float, getattr(info, "min", None), getattr(info, "max", None))
    elif annotation is Path and getattr(info, "path_type", None) is None:
        from typer._param_types import coerce_cli_path  # typer's checks (exists, readable, ...); no pydantic for a Path

        def path(value: Any, param: Any, ctx: Any) -> Any:
            if isinstance(value, str):
                value = Path(value)
            elif not isinstance(value, Path):
                raise _Unhandled
            return coerce_cli_path(value, info, path_type=Path, param=param, ctx=ctx)

        return path
    else:
        return None
    return lambda value, param, ctx: convert(value)


class PlainCoercion:
    """Stands in for typer's per-parameter runtime (``RuntimeParam``): the same ``coerce`` contract."""

    def __init__(self, convert: Callable[..., Any], many: bool) -> None:
        self._convert = convert
        self._many = many

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        """The value converted, or typer's ``BadParameter`` with pydantic's message."""
        from typer import BadParameter

        multi = param.multiple or param.nargs == -1
        if value is None:
            return () if multi else None
        if multi and isinstance(value, str):
            raise BadParameter("Value must be an iterable.", ctx=ctx, param=param)
        try:
            if self._many:
                items = value if isinstance(value, (list, tuple)) else [value]
                return [self._convert(v, param, ctx) for v in items]
            return self._convert(value, param, ctx)
        except _Unhandled:
            from typer._coercion import build_runtime_param

            return build_runtime_param(param.type_descriptor).coerce(value, param=param, ctx=ctx)
        except ValueError as exc:
            raise BadParameter(str(exc), ctx=ctx, param=param) from None


def plain_coercion(param: Any) -> PlainCoercion | None:
    """The pydantic-free converter for ``param`` (a typer parameter), or None where typer's own must run."""
    desc = getattr(param, "type_descriptor", None)
    if desc is None:
        return None
    annotation, info = desc.annotation, desc.parameter_info
    many = get_origin(annotation) is list
    if many:
        (annotation,) = get_args(annotation)
    convert = _leaf(annotation, info)
    return None if convert is None else PlainCoercion(convert, many)


def install(params: list[Any]) -> None:
    """Give each of a command's typer parameters the pydantic-free converter where one applies."""
    for param in params:
        if getattr(param, "_runtime_param", False) is None:  # typer >= 0.29, not yet built
            runtime = plain_coercion(param)
            if runtime is not None:
                param._runtime_param = runtime
