"""The Jinja environment shared by the web app and the static report (autoescape always on)."""

from __future__ import annotations

import math
import urllib.parse
from pathlib import Path
from typing import Any, Callable

from jinja2 import Environment, FileSystemLoader, select_autoescape

TEMPLATES = Path(__file__).parent / "templates"


def _num(v: Any) -> str:
    if v is None:
        return "–"
    try:
        return f"{int(v):,}"
    except (TypeError, ValueError):
        return str(v)


def _sim(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "–"
    if math.isnan(f):
        return "–"
    return f"{f:.{digits}f}"


def _pct(part: Any, whole: Any) -> str:
    try:
        return f"{100.0 * float(part) / float(whole):.1f}%" if whole else "–"
    except (TypeError, ValueError):
        return "–"


def _qs(params: dict[str, Any]) -> str:
    """A URL query string (values URL-encoded; the result is then HTML-escaped by autoescape)."""
    return urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})


def _when(v: Any) -> str:
    if v is None:
        return "–"
    try:
        return v.strftime("%Y-%m-%d %H:%M")
    except AttributeError:
        return str(v)


def make_env(*, thumb_url: Callable[..., str | None], static: bool) -> Environment:
    """A Jinja environment with autoescape for every template and the filters the pages use."""
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=_num, sim=_sim, qs=_qs, when=_when,
                       combine_page=lambda params, page: _qs({**params, "page": page}))
    env.globals.update(thumb_url=thumb_url, pct=_pct, static=static)
    return env
