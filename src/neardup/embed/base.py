"""The small interface every embedding model implements, and the shared image decoding.

A model splits its work in two so that decoding can run in a thread pool while the model
runs on the main thread: :meth:`EmbeddingModel.prepare` (thread-safe, cheap: a decoded
``PIL.Image`` in, whatever the model eats out) and :meth:`EmbeddingModel.embed_prepared`
(a batch of prepared inputs in, unit-norm float32 vectors out).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import InputError

if TYPE_CHECKING:  # numpy and Pillow load where images are decoded or embedded, not on import
    import numpy as np
    from PIL import Image


@dataclass(frozen=True)
class Availability:
    """Whether a model can run here without a network, and why (or why not)."""

    usable: bool
    detail: str


class EmbeddingModel(ABC):
    """One embedding model: a name, a dimension, its own default threshold."""

    #: registry name, e.g. ``"sscd"``
    name: str = ""
    #: output dimension
    dim: int = 0
    #: cosine-similarity threshold calibrated for this model (see docs/models.md)
    default_threshold: float = 0.0
    #: grouping mode and bound (mode ``bounded`` only) measured for this model (see docs/models.md)
    default_mode: str = "components"
    default_bound: float | None = None
    #: capture-time window (seconds, link similarity across it) of mode ``bounded``; None: none
    default_window: tuple[float, float] | None = None
    #: one-line description for ``neardup models``
    description: str = ""
    #: square side the model wants; decoding uses it to decode JPEGs at reduced size
    input_size: int = 224
    #: thresholds worth showing in a sweep table for this model's similarity scale
    sweep_thresholds: tuple[float, ...] = (0.99, 0.98, 0.97, 0.95, 0.9)

    @abstractmethod
    def availability(self) -> Availability:
        """Can this model run offline right now? Never touches the network."""

    def check_usable(self) -> None:
        """Raise a one-line :class:`InputError` when the model cannot be loaded here."""
        av = self.availability()
        if not av.usable:
            raise InputError(f"model {self.name}: {av.detail}")

    @abstractmethod
    def prepare(self, image: Image.Image) -> Any:
        """Turn an upright RGB image into this model's input (thread-safe)."""

    @abstractmethod
    def embed_prepared(self, batch: Sequence[Any]) -> np.ndarray:
        """Embed prepared inputs: ``(len(batch), dim)`` float32, each row unit-norm."""

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed decoded images (any mode, EXIF orientation already applied): unit-norm float32."""
        import numpy as np

        if len(images) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        return self.embed_prepared([self.prepare(to_rgb(im)) for im in images])

    def embed_files(self, paths: Sequence[str]) -> np.ndarray:
        """Decode files (EXIF orientation applied) and embed them."""
        return self.embed_prepared([self.prepare(load_rgb(p, self.input_size)) for p in paths])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} dim={self.dim} t={self.default_threshold}>"


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); a zero row is an error, not a silent NaN."""
    import numpy as np

    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.all(np.isfinite(x)) or np.any(n == 0):
        raise InputError("the model produced a zero or non-finite embedding")
    return np.ascontiguousarray(x / n, dtype=np.float32)


def to_rgb(im: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: alpha composited on white, 16-bit/32-bit scaled, CMYK converted."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        import numpy as np
        from PIL import Image

        a = np.asarray(im, dtype=np.float64)
        if mode == "F":
            lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
            a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        else:
            # 16-bit data (the common case, also when Pillow reports mode "I"): scale 0..65535 to 0..255
            a = a / 257.0 if a.max(initial=0) > 255 or mode.startswith("I;16") else a
        g = np.clip(np.nan_to_num(a), 0, 255).astype(np.uint8)
        return Image.fromarray(g, "L").convert("RGB")
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        from PIL import Image

        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1–8); 1 when absent or unreadable."""
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:
        return 1


def draft_at_least(im: Image.Image, short_side: int) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale while its short side stays ≥ ``short_side``
    (no-op for other formats, or when the image is that small already)."""
    if im.format != "JPEG":
        return
    w, h = im.size
    s = short_side / max(1, min(w, h))
    if s < 1:
        im.draft("RGB", (int(w * s) + 1, int(h * s) + 1))


def upright(im: Image.Image, orientation: int) -> Image.Image:
    """``im`` with its EXIF ``orientation`` undone; ``im`` itself when upright already
    (``exif_transpose`` would copy it)."""
    from PIL import ImageOps

    return ImageOps.exif_transpose(im) if orientation in (2, 3, 4, 5, 6, 7, 8) else im


def open_upright(path: str, draft_size: int | None = None) -> Image.Image:
    """Open and fully decode an image with EXIF orientation applied.

    ``draft_size`` lets JPEG decoding scale down by 2/4/8 while staying ≥ that size on the
    short side — the big cost saver for camera photos that are resized to ~300 px anyway.
    """
    from PIL import Image

    im = Image.open(path)
    if draft_size:
        draft_at_least(im, draft_size)
    orientation = exif_orientation(im)
    im.load()
    return upright(im, orientation)


def load_rgb(path: str, draft_size: int | None = None) -> Image.Image:
    """:func:`open_upright` then :func:`to_rgb`."""
    return to_rgb(open_upright(path, draft_size))
