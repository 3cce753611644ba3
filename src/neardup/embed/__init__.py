"""Embedding models behind one small interface, and a registry by name.

>>> from neardup.embed import get_model, list_models
>>> get_model("sscd").dim
512

A new model is one module with an :class:`EmbeddingModel` subclass plus one line in
``_FACTORIES`` below.
"""

from __future__ import annotations

from typing import Callable

from ..errors import InputError
from .base import Availability, EmbeddingModel, l2_normalise, load_rgb, open_upright, to_rgb

#: The model `scan`/`embed`/`find`/`demo` use when none is named: bundled, offline.
DEFAULT_MODEL = "sscd"


def _sscd(name: str) -> Callable[[], EmbeddingModel]:
    def make() -> EmbeddingModel:
        from .sscd import SSCDModel

        return SSCDModel(name)

    return make


def _clip() -> EmbeddingModel:
    from .clip import ClipModel

    return ClipModel()


_FACTORIES: dict[str, Callable[[], EmbeddingModel]] = {
    "sscd": _sscd("sscd"),
    "sscd-distilled": _sscd("sscd-distilled"),
    "clip-vit-b-32": _clip,
}
_ALIASES = {"sscd_distilled": "sscd-distilled", "clip": "clip-vit-b-32", "clip-vit-b32": "clip-vit-b-32"}
_CACHE: dict[str, EmbeddingModel] = {}


def canonical_name(name: str) -> str:
    """The registry name for ``name`` (aliases and case folded); InputError if unknown."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _FACTORIES:
        raise InputError(f"unknown model {name!r}: choose one of {', '.join(_FACTORIES)} (see `neardup models`)")
    return key


def get_model(name: str | None = None) -> EmbeddingModel:
    """The model called ``name`` (default :data:`DEFAULT_MODEL`); one instance per process."""
    key = canonical_name(name or DEFAULT_MODEL)
    if key not in _CACHE:
        _CACHE[key] = _FACTORIES[key]()
    return _CACHE[key]


def list_models() -> list[EmbeddingModel]:
    """Every registered model (constructing one never loads weights or touches the network)."""
    return [get_model(k) for k in _FACTORIES]


def default_threshold(name: str) -> float | None:
    """A registered model's calibrated default threshold, or None for a name we don't know (imported vectors)."""
    try:
        return get_model(name).default_threshold
    except InputError:
        return None


def registered_grouping(name: str) -> tuple[str, float | None]:
    """A registered model's default grouping mode and bound; ``("components", None)`` for unknown (imported) models."""
    try:
        m = get_model(name)
    except InputError:
        return "components", None
    return m.default_mode, m.default_bound


def registered_window(name: str) -> tuple[float | None, float | None]:
    """A registered model's default capture-time window ``(seconds, link similarity)``; ``(None, None)`` if none."""
    try:
        m = get_model(name)
    except InputError:
        return None, None
    return m.default_window if m.default_window else (None, None)


__all__ = ["Availability", "DEFAULT_MODEL", "EmbeddingModel", "canonical_name", "default_threshold", "get_model",
           "l2_normalise", "list_models", "load_rgb", "open_upright", "registered_grouping", "registered_window", "to_rgb"]
