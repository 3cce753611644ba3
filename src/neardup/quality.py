"""Per-image quality measures that a keep-decision needs, computed by ``scan`` from what it decodes.

All but :func:`jpeg_quality` work on the scan's thumbnail (≤ 256 px, already made for the
catalog) and its greyscale, so they cost well under a millisecond per image:

- ``sharpness``: variance of the Laplacian of a fixed 128 × 128 greyscale reduction, divided by
  the variance of that reduction — the share of the picture's contrast that sits in its finest
  detail. Blur lowers it; a brightness or contrast change leaves it alone (the raw variance of
  the Laplacian would rank a brightened copy above its original).
- ``jpeg_quality``: the libjpeg quality (1–100) whose scaled standard luminance table best
  matches the file's own (``im.quantization``); 100 for lossless formats (PNG, TIFF, BMP, …),
  None where unknown (e.g. WebP).
- ``border``: the share of the picture's area taken by uniform rows/columns at its edges
  (letterboxing, padding); ``width * height * (1 - border)`` is its content area.
- ``colorfulness``: Hasler & Süsstrunk's colourfulness (0 for greyscale; ~15 for muted, > 50
  for vivid photos); a greyscale copy of a colour photo scores ~0.
- ``clipped``: the share of pixels at the ends of the range (luminance ≤ 3 or ≥ 252): blown
  highlights of a brightened copy, the filled corners of a rotated one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

#: libjpeg's standard luminance quantisation table (quality 50), row-major as Pillow gives it.
_STD_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64)
_Q = np.arange(1, 101)
_SCALE = np.where(_Q < 50, 5000.0 / _Q, 200.0 - 2.0 * _Q)
#: the luminance table libjpeg writes at each quality 1..100
_TABLES = np.clip(np.floor((_STD_LUMA[None, :] * _SCALE[:, None] + 50.0) / 100.0), 1, 255)
LOSSLESS_FORMATS = frozenset({"PNG", "TIFF", "BMP", "PPM", "GIF", "TGA", "DIB", "PCX", "QOI", "SGI"})
SHARPNESS_SIZE = 128
MEASURES = ("sharpness", "jpeg_quality", "border", "colorfulness", "clipped")


def jpeg_quality(im: Image.Image) -> float | None:
    """Estimated JPEG quality 1–100 from the luminance quantisation table; 100 if lossless; None if unknown.

    The table is matched against libjpeg's scaled standard tables (what nearly every encoder
    writes); a camera's own table gets the quality whose table is nearest in log scale.
    """
    fmt = (im.format or "").upper()
    if fmt == "JPEG" or fmt == "MPO":
        q = getattr(im, "quantization", None) or {}
        table = q.get(0)
        if table is None or len(table) != 64:
            return None
        t = np.asarray(table, dtype=np.float64)
        exact = np.flatnonzero((_TABLES == t[None, :]).all(axis=1))
        if len(exact):
            return float(_Q[exact[-1]])
        err = np.abs(np.log(_TABLES) - np.log(np.maximum(t, 1.0))[None, :]).sum(axis=1)
        return float(_Q[int(np.argmin(err))])
    if fmt in LOSSLESS_FORMATS:
        return 100.0
    if fmt == "WEBP" and getattr(im, "info", {}).get("lossless"):
        return 100.0
    return None


def _grey_fixed(lum: np.ndarray) -> np.ndarray:
    """``lum`` reduced (or enlarged) to SHARPNESS_SIZE × SHARPNESS_SIZE, as int32."""
    g = Image.fromarray(lum)
    if g.size != (SHARPNESS_SIZE, SHARPNESS_SIZE):
        g = g.resize((SHARPNESS_SIZE, SHARPNESS_SIZE), Image.BILINEAR)
    return np.asarray(g, dtype=np.int32)


def sharpness(lum: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian over the variance of the image, at a fixed 128 × 128."""
    g = _grey_fixed(lum)
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]   # exact in int32
    v = float(g.var())
    return float(lap.var() / v) if v > 1e-6 else 0.0


def border_fraction(rgb: np.ndarray, tol: int = 10) -> float:
    """Share of the area in uniform rows/columns at opposite edges (each line: every pixel within
    ``tol`` of the line's median colour and of the first line's; the two opposite strips of one
    colour), counting one more line per bordered edge."""
    h, w = rgb.shape[:2]
    if h < 4 or w < 4:
        return 0.0
    a = rgb.astype(np.int16)

    def run(lines: np.ndarray) -> tuple[int, np.ndarray | None]:
        """How many leading lines (axis 0) are uniform, and their colour."""
        n, colour = 0, None
        for line in lines:
            med = np.median(line, axis=0)
            if np.abs(line - med).max() > tol or (colour is not None and np.abs(med - colour).max() > tol):
                break
            colour = med if colour is None else colour
            n += 1
        return n, colour

    half_h, half_w = h // 2, w // 2
    (top, c_top), (bottom, c_bottom) = run(a[:half_h]), run(a[::-1][:half_h])
    (left, c_left), (right, c_right) = (run(a[:, :half_w].transpose(1, 0, 2)),
                                        run(a[:, ::-1][:, :half_w].transpose(1, 0, 2)))

    def pair(n1: int, c1: np.ndarray | None, n2: int, c2: np.ndarray | None) -> tuple[int, int]:
        # padding and letterboxing come in opposite pairs of one colour; a uniform sky or wall
        # touching one edge only is picture, not border
        if n1 == 0 or n2 == 0 or np.abs(c1 - c2).max() > tol:
            return 0, 0
        # a bordered edge also loses the next line: on a reduced image it mixes border and
        # content (so a padded copy never measures more content than its original)
        return n1 + 1, n2 + 1

    top, bottom = pair(top, c_top, bottom, c_bottom)
    left, right = pair(left, c_left, right, c_right)
    ch = max(0, h - top - bottom)
    cw = max(0, w - left - right)
    return float(1.0 - (ch * cw) / (h * w))


def colorfulness(rgb: np.ndarray) -> float:
    """Hasler & Süsstrunk (2003) colourfulness of an RGB array (0 for greyscale)."""
    a = rgb.reshape(-1, rgb.shape[-1]).astype(np.int32)
    rg = a[:, 0] - a[:, 1]
    yb = a[:, 0] + a[:, 1] - 2 * a[:, 2]          # twice the opponent channel, exact in int32
    return float(np.hypot(rg.std(), yb.std() / 2) + 0.3 * np.hypot(rg.mean(), yb.mean() / 2))


def clipped_fraction(lum: np.ndarray) -> float:
    """Share of pixels with luminance ≤ 3 or ≥ 252."""
    return float(((lum <= 3) | (lum >= 252)).mean()) if lum.size else 0.0


def measure(thumb: Image.Image, lum: np.ndarray, source: Image.Image | None = None) -> dict[str, Any]:
    """All measures for one image: ``thumb`` is its RGB thumbnail, ``lum`` that thumbnail's
    greyscale (uint8), ``source`` the opened file (for its quantisation tables)."""
    rgb = np.asarray(thumb)
    return {
        "sharpness": sharpness(lum),
        "jpeg_quality": jpeg_quality(source) if source is not None else None,
        "border": border_fraction(rgb),
        "colorfulness": colorfulness(rgb),
        "clipped": clipped_fraction(lum),
    }
