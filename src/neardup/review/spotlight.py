"""Two review pages: compare a master and a member side by side (with a difference view), and a
cluster's spotlight (its groups, each with a before/after strip).
"""

from __future__ import annotations

import io
from typing import Any, Callable

from fastapi import FastAPI, HTTPException, Path as PathParam, Query, Request
from fastapi.responses import HTMLResponse, Response

MAX_ID = 2**31 - 1
#: Longest side of the difference image.
DIFF_SIZE = 1200


def difference_jpeg(path_a: str, path_b: str, size: int = DIFF_SIZE) -> bytes:
    """|A - B| per pixel (B resized to A's shape), contrast-stretched so small changes show; JPEG bytes."""
    from PIL import Image, ImageChops, ImageOps

    from ..embed.base import to_rgb

    def load(p: str) -> Image.Image:
        with Image.open(p) as im:
            im.load()
            im = to_rgb(ImageOps.exif_transpose(im))
            im.thumbnail((size, size), Image.BILINEAR)
            return im

    a, b = load(path_a), load(path_b)
    b = b.resize(a.size, Image.BILINEAR)
    d = ImageOps.autocontrast(ImageChops.difference(a, b).convert("L"), cutoff=1)
    buf = io.BytesIO()
    d.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def cluster_groups(cat: Any, run_id: int, cluster_id: int, strip: int = 8) -> list[dict[str, Any]]:
    """The run's duplicate groups with a member in the cluster: size, span, and before/after strips."""
    from . import data as D

    rows = cat.sql(
        """SELECT m.group_id, count(*) AS size, min(m.sim_to_master) AS span, any_value(m.master_id) AS master_id,
                  count(*) FILTER (WHERE i.is_suppressed) AS suppressed
           FROM run_members m JOIN images i ON i.id = m.image_id
           WHERE m.run_id = ? AND m.group_id IN (
               SELECT DISTINCT group_id FROM run_members WHERE run_id = ? AND image_id IN
                   (SELECT id FROM images WHERE cluster_id = ?))
           GROUP BY m.group_id HAVING count(*) >= 2 ORDER BY size DESC, m.group_id""",
        [run_id, run_id, cluster_id]).to_pylist()
    if not rows:
        return []
    gids = [r["group_id"] for r in rows]
    marks = ", ".join("?" * len(gids))
    mem = cat.sql(
        f"""SELECT group_id, image_id, is_master FROM (
              SELECT group_id, image_id, is_master,
                     row_number() OVER (PARTITION BY group_id ORDER BY is_master DESC, sim_to_master, image_id) AS k
              FROM run_members WHERE run_id = ? AND group_id IN ({marks})) WHERE k <= ? ORDER BY group_id, k""",
        [run_id, *gids, strip]).to_pylist()
    info = D.image_rows(cat, [m["image_id"] for m in mem])
    by: dict[int, list[dict[str, Any]]] = {}
    for m in mem:
        by.setdefault(m["group_id"], []).append(
            dict(info.get(m["image_id"], {"id": m["image_id"], "overrides": set(), "has_pixels": False}),
                 is_master=m["is_master"]))
    for r in rows:
        r["before"] = by.get(r["group_id"], [])
        r["after"] = [x for x in r["before"] if not x.get("is_suppressed")]
        r["retained"] = r["size"] - r["suppressed"]
    return rows


def register(app: FastAPI, holder: Any, page: Callable[..., HTMLResponse]) -> None:
    """Add GET /compare, /diff and /clusters/{id} to the review app."""
    from . import data as D

    @app.get("/compare", response_class=HTMLResponse)
    def compare(request: Request, a: str = Query(..., min_length=1, max_length=4096),
                b: str = Query(..., min_length=1, max_length=4096), diff: int = Query(0, ge=0, le=1),
                run: int | None = Query(None, ge=1, le=MAX_ID), group: int | None = Query(None, ge=1, le=MAX_ID)) -> HTMLResponse:
        with holder.open() as cat:
            imgs = D.image_rows(cat, [a, b])
            if a not in imgs or b not in imgs:
                raise HTTPException(404, "no such image in the catalog")
            from ..calibration import pair_similarities

            model = cat.run(run)["model"] if run else cat.default_model()
            try:
                sim = float(pair_similarities(cat, model, [(a, b)])[0])
            except Exception:
                sim = None
            st = D.status_counts(cat, run)
        both = imgs[a].get("has_pixels") and imgs[b].get("has_pixels")
        return page(request, "compare.html", active="review", a=imgs[a], b=imgs[b], diff=bool(diff and both),
                    can_diff=both, sim=sim, model=model, run=run, group=group, statusline=st)

    @app.get("/diff")
    def diff_image(a: str = Query(..., min_length=1, max_length=4096), b: str = Query(..., min_length=1, max_length=4096)) -> Response:
        with holder.open() as cat:
            rows = D.image_rows(cat, [a, b])
            srcs = [D.image_source(cat, rows[x]) if x in rows else None for x in (a, b)]
            paths = []
            for x, src in zip((a, b), srcs):
                if src is None:
                    raise HTTPException(404, "no pixels for one of the two images")
                kind, p = src
                orig = rows[x].get("path")
                if kind == "thumb" and orig:
                    from pathlib import Path

                    if Path(orig).is_absolute() and Path(orig).is_file():
                        p = Path(orig)
                paths.append(str(p))
        try:
            body = difference_jpeg(paths[0], paths[1])
        except Exception:
            raise HTTPException(404, "these images cannot be read") from None
        return Response(body, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})

    @app.get("/clusters/{cluster_id}", response_class=HTMLResponse)
    def cluster_page(request: Request, cluster_id: int = PathParam(..., ge=0, le=MAX_ID)) -> HTMLResponse:
        with holder.open() as cat:
            if "cluster_id" not in cat.image_columns():
                raise HTTPException(404, "no clusters yet: run `neardup cluster --k 25`")
            n = cat.one("SELECT count(*), count(*) FILTER (WHERE NOT is_suppressed) FROM images WHERE cluster_id = ?",
                        [cluster_id])
            if not n or not n[0]:
                raise HTTPException(404, f"no cluster {cluster_id}")
            r = D.pick_run(cat, None)
            groups = cluster_groups(cat, r["id"], cluster_id) if r else []
            st = D.status_counts(cat)
        return page(request, "cluster.html", active="clusters", cluster_id=cluster_id, before=int(n[0]),
                    after=int(n[1]), run=r, groups=groups, statusline=st)
