"""Figures: the threshold-sweep plot and the contact sheet of example pairs (PNG files).

matplotlib runs on the Agg backend (no display needed); the contact sheet is drawn with Pillow.
Every figure has a fixed pixel size (see :data:`SWEEP_SIZE`), so a file's size is predictable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import InputError

SWEEP_FIGSIZE = (8.0, 9.0)  # inches
SWEEP_DPI = 100
SWEEP_SIZE = (int(SWEEP_FIGSIZE[0] * SWEEP_DPI), int(SWEEP_FIGSIZE[1] * SWEEP_DPI))  # (width, height) px
HIST_BINS = 120               # bars in the pair-similarity histogram panel
DENSE_POINTS = 241            # thresholds on the curves when a forest is given
DENSE_GROUPED_POINTS = 61     # the same under a run's grouping (bounded: one grouping per point)


def _atomic_target(out: str | os.PathLike[str], suffix: str = ".png") -> tuple[Path, Path]:
    out = Path(out)
    if out.exists() and out.is_dir():
        raise InputError(f"{out}: is a folder; give a file name ending in {suffix}")
    if not out.parent.exists():
        raise InputError(f"{out.parent}: no such folder")
    return out, out.with_name(out.name + ".tmp" + suffix)


def _rebinned_hist(forest: Any, lo: float) -> tuple[np.ndarray, np.ndarray]:
    """The forest's 1e-5 histogram folded into about HIST_BINS bars over [lo, 1]: (edges, counts)."""
    from .similarity.forest import HIST_STEP

    hist = np.asarray(forest.hist, dtype=np.int64)
    floor = float(forest.floor)
    start = max(0, int(np.floor((lo - floor) / HIST_STEP + 1e-6)))
    h = hist[start:]
    per = max(1, int(np.ceil(len(h) / HIST_BINS)))
    pad = (-len(h)) % per
    counts = np.r_[h, np.zeros(pad, np.int64)].reshape(-1, per).sum(axis=1)
    edges = floor + (start + np.arange(len(counts) + 1) * per) * HIST_STEP
    return edges, counts


def plot_sweep(rows: Sequence[dict], forest: Any, out: str | os.PathLike[str], chosen: float | None = None,
               chosen_label: str | None = None, counts: Callable[[list[float]], list[dict]] | None = None,
               grouping: str | None = None) -> Path:
    """Write the sweep figure to ``out`` (PNG, :data:`SWEEP_SIZE` pixels) and return its path.

    Three panels sharing the threshold axis: images retained / suppressed; duplicate groups and
    the largest group (log scale); the histogram of pair similarities (log scale). ``rows`` are
    :func:`neardup.sweep.sweep` rows (marked with dots); with a ``SimilarityForest`` the curves
    are drawn at many thresholds from that one forest and the histogram comes from it (pass
    ``None`` to draw the rows only). ``chosen`` is marked with a dashed line on every panel,
    labelled ``chosen_label`` (e.g. the model's default threshold; default "chosen threshold T").
    ``counts(thresholds)`` gives the rows of the dense curves (default ``forest.sweep``: transitive
    components); :func:`neardup.sweep.plan_rows` counts them under a run's grouping, named by
    ``grouping`` in the title. A grouping other than components is drawn at
    :data:`DENSE_GROUPED_POINTS` thresholds (each is a grouping of its own).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    rows = sorted((dict(r) for r in rows), key=lambda r: r["threshold"])
    if not rows:
        raise InputError("nothing to plot: the sweep has no rows")
    target, tmp = _atomic_target(out)
    ts = np.array([r["threshold"] for r in rows], dtype=float)
    n_images = int(rows[0]["retained"] + rows[0]["suppressed"])
    lo = float(ts.min())
    if forest is not None:
        lo = min(lo, float(forest.floor)) if chosen is None else min(lo, float(forest.floor), float(chosen))
        lo = max(lo, float(forest.floor))
        points = DENSE_POINTS if counts is None else DENSE_GROUPED_POINTS
        grid = np.unique(np.r_[np.linspace(lo, 1.0, points), ts[ts >= forest.floor]])
        dense = (counts or forest.sweep)(grid.tolist())
    else:
        dense = rows
    x = np.array([r["threshold"] for r in dense], dtype=float)
    get = lambda rs, k: np.array([r[k] for r in rs], dtype=float)  # noqa: E731
    pad = max(1e-3, 0.02 * (1.0 - lo))
    xlim = (lo - pad, 1.0 + pad / 4)

    fig = Figure(figsize=SWEEP_FIGSIZE, dpi=SWEEP_DPI, layout="constrained")
    ax1, ax2, ax3 = fig.subplots(3, 1, sharex=True, height_ratios=[1.1, 1.0, 1.0])
    thousands = FuncFormatter(lambda v, _: f"{v:,.0f}")

    ax1.plot(x, get(dense, "retained"), color="tab:green", lw=2, label="retained (unique after dedup)")
    ax1.plot(x, get(dense, "suppressed"), color="tab:red", lw=2, label="suppressed (duplicates)")
    ax1.plot(ts, get(rows, "retained"), "o", color="tab:green", ms=5)
    ax1.plot(ts, get(rows, "suppressed"), "o", color="tab:red", ms=5)
    ax1.set_ylabel("images")
    ax1.set_ylim(0, max(1, n_images) * 1.05)
    ax1.yaxis.set_major_formatter(thousands)
    gtext = f" ({grouping})" if grouping else ""
    ax1.set_title(f"Threshold sweep: {n_images:,} images{gtext}", loc="left")

    def _pos(v: np.ndarray) -> np.ndarray:
        return np.where(v > 0, v, np.nan)  # log axes: zero means "none", drawn as a gap

    def _largest(rs: Sequence[dict]) -> np.ndarray:  # no duplicate group: no "largest group" either
        return np.where(get(rs, "groups") > 0, get(rs, "largest_group"), np.nan)

    ax2.plot(x, _pos(get(dense, "groups")), color="tab:blue", lw=2, label="duplicate groups")
    ax2.plot(x, _largest(dense), color="tab:purple", lw=2, label="largest group (images)")
    ax2.plot(ts, _pos(get(rows, "groups")), "o", color="tab:blue", ms=5)
    ax2.plot(ts, _largest(rows), "o", color="tab:purple", ms=5)
    ax2.set_yscale("log")
    ax2.set_ylabel("count (log)")
    ax2.yaxis.set_major_formatter(thousands)

    if forest is not None:
        edges, counts = _rebinned_hist(forest, lo)
        ax3.stairs(counts, edges, fill=True, color="tab:gray", alpha=0.8, label="pairs per bin")
        ax3.set_yscale("log")
        total = int(np.asarray(forest.hist).sum())
        ax3.set_title(f"pair similarities >= {forest.floor:g}: {total:,} pairs (bin width {edges[1] - edges[0]:.2g})",
                      loc="left", fontsize=9)
    else:
        ax3.plot(ts, _pos(get(rows, "pairs")), "o-", color="tab:gray", label="pairs >= threshold")
        ax3.set_yscale("log")
    ax3.set_ylabel("pairs (log)")
    ax3.set_xlabel("cosine similarity threshold (pairs at or above it are duplicates)")
    ax3.yaxis.set_major_formatter(thousands)
    ax3.set_xlim(*xlim)

    for ax in (ax1, ax2, ax3):
        ax.grid(True, alpha=0.3)
        if chosen is not None:
            ax.axvline(chosen, color="black", ls="--", lw=1.2, label=chosen_label or f"chosen threshold {chosen:g}")
        ax.legend(loc="best", fontsize=8)
    if chosen is not None:
        at = next((r for r in rows if abs(r["threshold"] - chosen) < 1e-12), None)
        if at is None and forest is not None and chosen >= forest.floor:
            at = (counts or forest.sweep)([chosen])[0]
        if at is not None:
            what = "the default" if chosen_label and chosen_label.startswith("default") else "the chosen"
            ax1.set_title(f"Threshold sweep: {n_images:,} images; at {what} {chosen:g}: {at['retained']:,} "
                          f"retained, {at['suppressed']:,} suppressed, {at['groups']:,} groups{gtext}", loc="left",
                          fontsize=10)
    fig.savefig(tmp, dpi=SWEEP_DPI, format="png")
    tmp.replace(target)
    return target


# --------------------------------------------------------------------------------------------
# contact sheet of example pairs
# --------------------------------------------------------------------------------------------
def _load_thumb(sources: Sequence[str | os.PathLike[str] | None], size: int) -> Any:
    """The first of ``sources`` that opens as an image, as an RGB PIL thumbnail, or None (files are only read)."""
    from PIL import Image, ImageOps

    for src in sources:
        if not src:
            continue
        try:
            with Image.open(src) as im:
                im = ImageOps.exif_transpose(im)
                im.draft("RGB", (size * 2, size * 2))
                rgb = im.convert("RGB")
                rgb.thumbnail((size, size))
                return rgb
        except Exception:  # unreadable or missing: try the next source, else draw a placeholder
            continue
    return None


def contact_sheet(pairs: Sequence[dict], out: str | os.PathLike[str], *, title: str = "", thumb: int = 160) -> Path:
    """Draw example pairs side by side (PNG): thumbnails A | B and the similarity, ids and paths.

    Each pair dict has ``a``, ``b``, ``sim`` and optionally ``path_a``/``path_b``,
    ``thumb_a``/``thumb_b`` (the catalog's thumbnails, tried first) and ``note`` (shown after the
    similarity, e.g. the band). Where no image can be read
    the cell shows the id instead.
    """
    from PIL import Image, ImageDraw, ImageFont

    target, tmp = _atomic_target(out)
    font = ImageFont.load_default()
    text_w, pad, head = 420, 8, 28 if title else 0
    row_h = thumb + 2 * pad
    W = 2 * (thumb + pad) + pad + text_w
    H = head + max(1, len(pairs)) * row_h
    sheet = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 8), title, fill="black", font=font)
    if not pairs:
        draw.text((pad, head + pad), "no pairs in this band", fill="black", font=font)

    def short(s: str, n: int = 60) -> str:
        return s if len(s) <= n else "..." + s[-(n - 3):]

    for k, p in enumerate(pairs):
        y = head + k * row_h + pad
        if k % 2:
            draw.rectangle((0, y - pad, W, y - pad + row_h - 1), fill=(245, 245, 245))
        for j, side in enumerate(("a", "b")):
            x = pad + j * (thumb + pad)
            im = _load_thumb([p.get(f"thumb_{side}"), p.get(f"path_{side}")], thumb)
            if im is None:
                draw.rectangle((x, y, x + thumb - 1, y + thumb - 1), fill=(220, 220, 220), outline=(160, 160, 160))
                draw.text((x + 6, y + thumb // 2 - 12), short(str(p[side]), 22), fill="black", font=font)
                draw.text((x + 6, y + thumb // 2 + 2), "(no image)", fill=(90, 90, 90), font=font)
            else:
                sheet.paste(im, (x + (thumb - im.width) // 2, y + (thumb - im.height) // 2))
        tx = pad + 2 * (thumb + pad)
        lines = [f"similarity {p['sim']:.5f}" + (f"   ({p['note']})" if p.get("note") else ""),
                 f"A: {short(str(p['a']))}", f"B: {short(str(p['b']))}"]
        if p.get("path_a") or p.get("path_b"):
            lines += [f"A path: {short(str(p.get('path_a') or '-'))}", f"B path: {short(str(p.get('path_b') or '-'))}"]
        for i, line in enumerate(lines):
            draw.text((tx, y + 4 + 16 * i), line, fill="black", font=font)
    sheet.save(tmp, format="PNG")
    tmp.replace(target)
    return target


__all__ = ["plot_sweep", "contact_sheet", "SWEEP_SIZE"]
