"""The one place that decides which threshold a run uses when the user gives none.

Order: this catalog's calibrated threshold for the model (``neardup calibrate``), else the
model's own default (see ``neardup models``), else the seed's CLIP threshold 0.98 for imported
vectors of an unknown model. Every command that defaults a threshold asks here, so they agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .catalog import Catalog

#: Threshold for imported vectors of a model neardup does not know (the seed's CLIP choice).
FALLBACK_THRESHOLD = 0.98


@dataclass(frozen=True)
class ThresholdChoice:
    """A default threshold and where it came from (``calibrated``, ``model`` or ``fallback``)."""

    value: float
    source: str
    model: str
    detail: str

    def describe(self) -> str:
        """One line saying which threshold is used and why."""
        return f"threshold {self.value:.4g}: {self.detail}"


def model_default(model: str) -> float | None:
    """A registered model's own default threshold, or None for a model neardup does not know."""
    from .embed import default_threshold as registry_default

    return registry_default(model)


def choose_threshold(catalog: "Catalog", model: str | None = None) -> ThresholdChoice:
    """The threshold a run on ``model`` uses when none is given, and the reason for it."""
    name = model or catalog.default_model()
    calibrated = _calibrated(catalog, name)
    if calibrated is not None:
        return calibrated
    t = model_default(name)
    if t is not None:
        return ThresholdChoice(float(t), "model", name, f"the {name} model's default (see `neardup models`)")
    return ThresholdChoice(FALLBACK_THRESHOLD, "fallback", name,
                           f"no default known for imported model {name!r}; the seed's CLIP threshold")


def default_threshold(catalog: "Catalog", model: str | None = None) -> float:
    """The threshold a run on ``model`` uses when none is given (see :func:`choose_threshold`)."""
    return choose_threshold(catalog, model).value


def _calibrated(catalog: "Catalog", model: str) -> ThresholdChoice | None:
    """The catalog's latest calibration for ``model`` (none until ``neardup calibrate`` has fitted one)."""
    from .calibration import latest_calibration

    c = latest_calibration(catalog, model)
    if c is None:
        return None
    when = str(c["created_at"])[:16]
    return ThresholdChoice(float(c["threshold"]), "calibrated", model,
                           f"this catalog's calibration for {model} from {c['judgments']} judgments "
                           f"(95% interval {c['low']:.4g}-{c['high']:.4g}, target {c['objective']} "
                           f"{c['target']:g}; {when} UTC)")
