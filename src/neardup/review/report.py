"""The static report: the review pages as one self-contained HTML file (``neardup report``).

Thumbnails are embedded as ``data:`` URIs and the stylesheet is inlined, so the file opens from
disk with no server and no network; it has no scripts. It is a snapshot: the actions of the live
app are replaced by the commands that do the same thing.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import os
from pathlib import Path
from typing import Any

from ..catalog import Catalog
from ..paths import atomic_output
from . import data as D
from .render import make_env

HERE = Path(__file__).parent


def _thumb_data_uri(cat: Catalog, row: dict[str, Any], px: int) -> str | None:
    """A small JPEG of the image as a data URI (None when the catalog has no pixels for it)."""
    from PIL import Image

    from .app import image_bytes

    body = image_bytes(cat, row, 256)
    if body is None:
        return None
    try:
        with Image.open(io.BytesIO(body)) as im:
            im = im.convert("RGB")
            im.thumbnail((px, px), Image.BILINEAR)
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=72)
    except Exception:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def write_report(cat: Catalog, out_html: str | os.PathLike[str], *, max_groups: int = 30,
                 members_per_group: int = 24, cluster_strip: int = 10, pairs_per_band: int = 6,
                 thumb_px: int = 160, run_id: int | None = None, max_clusters: int = 50) -> Path:
    """Write the overview, largest groups, clusters, threshold explorer and runs to one HTML file.

    ``run_id`` picks the run shown (default: the latest applied one). Groups are the
    ``max_groups`` largest, each with its master and its ``members_per_group`` members least
    similar to the master (where a wrong grouping would show); clusters the ``max_clusters``
    largest. Written atomically.
    """
    out = Path(out_html)
    cache: dict[str, str | None] = {}

    def thumb_url(img: dict[str, Any] | None, size: str = "small") -> str | None:
        if not img or not img.get("has_pixels"):
            return None
        key = img["id"]
        if key not in cache:
            cache[key] = _thumb_data_uri(cat, img, thumb_px)
        return cache[key]

    env = make_env(thumb_url=thumb_url, static=True)
    from .app import overview_context

    ctx = overview_context(cat)
    run = D.pick_run(cat, run_id) if run_id is not None else ctx["run"]
    groups: list[dict[str, Any]] = []
    n_groups = 0
    if run is not None:
        gl = D.group_list(cat, run["id"], 1, per_page=max(1, max_groups), strip=0)
        n_groups = gl["total"]
        for g in gl["groups"][:max(0, max_groups)]:
            detail = D.group_detail(cat, run["id"], g["group_id"], 1, per_page=members_per_group, sort="sim_asc")
            if detail is None:
                continue
            try:
                wl = D.weakest_link(cat, run, g["group_id"]) if detail["size"] > 2 else None
            except Exception:  # the report still renders without it
                wl = None
            detail["wl"] = wl
            detail["wl_imgs"] = D.image_rows(cat, [wl.a, wl.b]) if wl else {}
            groups.append(detail)
    chosen, default = D.centre(cat, run)
    bands = D.bands_for(chosen)
    ex = D.sample_pairs(cat, bands, pairs_per_band, model=run["model"] if run else None)
    D.mark_grouped(cat, ex, run["id"] if run else None)
    decisions = cat.sql("SELECT image_id, kind, created_at FROM overrides ORDER BY created_at DESC LIMIT 1000").to_pylist()
    html = env.get_template("report.html").render(
        css=(HERE / "static" / "review.css").read_text(encoding="utf-8"),
        db_name=cat.path.name, generated=dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        groups=groups, n_groups=n_groups, c=D.clusters(cat, strip=cluster_strip, limit=max_clusters), ex=ex,
        band_counts=D.band_pair_counts(ctx["sweep"], bands), chosen=chosen, default=default, static=True,
        decisions=decisions, csrf_token="", current_url="", flash=None, **{**ctx, "run": run})
    with atomic_output(out, make_folder=True) as tmp:  # a bad --out is one line; no stray tmp
        tmp.write_text(html, encoding="utf-8")
    return out
