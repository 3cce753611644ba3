"""Cluster commands: cluster (k-means), clusters (before/after per cluster), pairs (examples per band)."""

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError
from .typer_app import DEFAULT_DB_PATH, DbOption, app, console, err_console, open_catalog, progress_bar

_ModelOption = Annotated[Optional[str], typer.Option("--model", help="Embedding model to use (default: the most recently updated one).")]


@app.command("cluster")
def cluster_cmd(
    k: Annotated[int, typer.Option("--k", help="Number of clusters.", min=1)] = 25,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Random seed: the same seed on the same embeddings gives the same clusters.")] = 0,
    niter: Annotated[int, typer.Option("--niter", help="k-means iterations.", min=1)] = 20,
    sample_per_centroid: Annotated[int, typer.Option("--sample-per-centroid", help="Train on at most k x this many sampled vectors, then assign all (faiss' default 256).", min=1)] = 256,
    redo: Annotated[int, typer.Option("--redo", help="k-means++ starts on the training sample; the tightest is kept (more = better clusters, slower training).", min=1)] = 3,
    model: _ModelOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the labelling (id, sizes, timing) as JSON.")] = False,
    db: DbOption = DEFAULT_DB_PATH,
) -> None:
    """k-means on the embeddings; each image's cluster goes on the images table (cluster_id).

    Clusters are numbered by size: cluster 0 is the largest. Re-clustering stores a new
    labelling and makes it current; earlier labellings and dedup runs are left as they were.
    Then: `neardup clusters` for the before/after table, `neardup sweep --cluster N` to calibrate
    a threshold on one cluster.
    """
    from ..cluster import cluster

    with open_catalog(db) as cat:
        with progress_bar("k-means") as bar:
            bar.add_task("k-means", total=None)
            c = cluster(cat, k, seed=seed, niter=niter, model=model, max_points_per_centroid=sample_per_centroid,
                        redo=redo)
    if as_json:
        typer.echo(json.dumps(dict(clustering=c.id, model=c.model, k=c.k, seed=c.seed, niter=c.niter,
                                   images=c.n_images, train_points=c.train_points, mean_cosine=round(c.mean_cosine, 6),
                                   seconds=round(c.seconds, 3), sizes=c.sizes)))
        return
    console.print(f"clustering {c.id}: {c.n_images:,} images of model {c.model} into {c.k} clusters "
                  f"(seed {c.seed}, trained on {c.train_points:,}, {c.seconds:.1f} s, mean cosine to centroid {c.mean_cosine:.3f})")
    sizes = ", ".join(f"{i}: {s:,}" for i, s in enumerate(c.sizes))
    console.print(f"sizes (cluster: images, largest first): {sizes}", highlight=False)


@app.command("clusters")
def clusters_cmd(
    run: Annotated[Optional[int], typer.Option("--run", help="Show what this run did (default: the catalog's current state, i.e. all applied runs).")] = None,
    clustering: Annotated[Optional[int], typer.Option("--clustering", help="An earlier labelling (default: the current one).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the table as JSON.")] = False,
    db: DbOption = DEFAULT_DB_PATH,
) -> None:
    """Per cluster: images before, unique after, duplicate groups, largest group, and whether it is practical to browse.

    'groups' counts duplicate groups with a member in the cluster (a group can span clusters);
    'largest' is the most members one group has inside the cluster.
    """
    from ..cluster import BROWSE_LEGEND, cluster_table

    with open_catalog(db, read_only=True) as cat:
        tab = cluster_table(cat, run, clustering=clustering)
    if as_json:
        typer.echo(json.dumps(tab.to_dict(), default=str))
        return
    c = tab.clustering
    src = f"run {tab.groups_run}" if run is not None else \
        ("current catalog state" + (f"; groups from run {tab.groups_run}" if tab.groups_run else "; no applied run"))
    from rich.table import Table

    t = Table(title=f"Clusters (labelling {c.id}: k={c.k}, model {c.model}) — {src}", title_justify="left")
    for name in ("cluster", "before", "after", "suppressed", "groups", "largest", "browse?"):
        t.add_column(name, justify="left" if name == "browse?" else "right")
    for r in tab:
        style = {"yes": "green", "long": "yellow", "no": "red"}[r["browse"]]
        t.add_row(str(r["cluster"]), f"{r['images']:,}", f"{r['unique']:,}", f"{r['suppressed']:,}", f"{r['groups']:,}",
                  f"{r['largest_group']:,}", f"[{style}]{r['browse']}[/]")
    tot = tab.total
    t.add_section()
    t.add_row("all", f"{tot['images']:,}", f"{tot['unique']:,}", f"{tot['suppressed']:,}", f"{tot['groups']:,}",
              f"{tot['largest_group']:,}", "")
    console.print(t)
    console.print(BROWSE_LEGEND, highlight=False)
    if tab.unclustered:
        err_console.print(f"note: {tab.unclustered:,} images have no cluster in labelling {c.id} (added since, or "
                          f"without {c.model} vectors); run `neardup cluster` again to include them")
    elif tab.stale:
        err_console.print(f"note: the {c.model} embeddings changed since labelling {c.id}; run `neardup cluster` again")


@app.command("pairs")
def pairs_cmd(
    band: Annotated[Optional[str], typer.Option("--band", help="Similarity band LOW:HIGH, e.g. 0.97:0.98 (LOW <= sim < HIGH; a band ending at 1 includes 1). Several bands, comma-separated, are sampled in one pass: 0.95:0.96,0.98:0.99. Default: the two bands just below and just above the default threshold for this catalog and model (sscd: 0.55:0.6,0.6:0.65).")] = None,
    sample: Annotated[int, typer.Option("--sample", help="How many example pairs per band (a uniform sample of the band; 0 = count only).")] = 20,
    cluster: Annotated[Optional[int], typer.Option("--cluster", help="Only pairs inside this cluster (see `neardup clusters`).")] = None,
    ids_file: Annotated[Optional[Path], typer.Option("--ids", help="Only pairs among the ids in this file (one per line).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed: the same seed gives the same pairs.")] = 0,
    sheet: Annotated[Optional[Path], typer.Option("--sheet", help="Also write a contact sheet PNG: thumbnails side by side with their similarity (the id where there is no image).")] = None,
    model: _ModelOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the count and the pairs as JSON (one object; a list of them for several bands).")] = False,
    db: DbOption = DEFAULT_DB_PATH,
) -> None:
    """Example pairs at a similarity band, to see what that band means before choosing a threshold.

    Every pair of the scope is checked (exact), so the count of pairs in the band is exact; on a
    whole large collection that is an all-pairs pass (minutes at 100k+): use --cluster there.
    """
    from ..pairs import default_bands, parse_band, sample_bands

    bands = [parse_band(b) for b in band.split(",") if b.strip()] if band is not None else None
    if band is not None and not bands:
        raise InputError(f"band {band!r}: give it as LOW:HIGH, e.g. 0.97:0.98")
    if cluster is not None and ids_file is not None:
        raise InputError("give --cluster or --ids, not both")
    ids = None
    if ids_file is not None:
        from .core import _read_id_file  # an empty file is refused

        ids = _read_id_file(ids_file)
    with open_catalog(db, read_only=True) as cat:
        if bands is None:
            bands = default_bands(cat, model)
            err_console.print("bands either side of the default threshold: "
                              + ", ".join(f"{lo:g}:{hi:g}" for lo, hi in bands), highlight=False)
        with progress_bar("pairs") as bar:
            task = bar.add_task("pairs", total=None)
            results = sample_bands(cat, bands, sample, cluster=cluster, ids=ids, model=model, seed=seed,
                                   progress=lambda d, t: bar.update(task, completed=d, total=t))
    first = results[0]
    if sheet is not None:
        from ..plots import contact_sheet

        shown = []
        for res in results:
            lo, hi = res.band
            shown += [dict(p, note=f"band {lo:g}:{hi:g}") for p in res.pairs] if len(results) > 1 else res.pairs
        if len(results) == 1:
            lo, hi = first.band
            title = (f"{first.scope}, band {lo:g} <= sim < {hi:g}: {first.in_band:,} of {first.total_pairs:,} pairs; "
                     f"{len(first.pairs)} shown (seed {first.seed})")
        else:
            title = (f"{first.scope}: " + "; ".join(f"{r.band[0]:g}:{r.band[1]:g} {r.in_band:,}" for r in results)
                     + f" of {first.total_pairs:,} pairs (seed {first.seed})")
        contact_sheet(shown, sheet, title=title)
        err_console.print(f"contact sheet written to {sheet}")
    if as_json:
        payload = [r.to_dict() for r in results]
        typer.echo(json.dumps(payload[0] if len(payload) == 1 else payload))
        return
    console.print(f"{first.scope}: {first.n_images:,} images, model {first.model}, {first.total_pairs:,} pairs",
                  highlight=False)
    for res in results:
        lo, hi = res.band
        pct = 100.0 * res.in_band / res.total_pairs if res.total_pairs else 0.0
        console.print(f"{res.in_band:,} pairs with {lo:g} <= sim < {hi:g}{' (1 included)' if hi >= 1 else ''} "
                      f"({pct:.3g}%)", highlight=False)
        if not res.pairs:
            continue
        from .typer_app import compact_table

        t = compact_table(f"{len(res.pairs)} example pairs in {lo:g}:{hi:g} (seed {res.seed})")
        t.add_column("sim", justify="right", no_wrap=True)
        t.add_column("A", overflow="fold")
        t.add_column("B", overflow="fold")
        has_paths = any(p["path_a"] or p["path_b"] for p in res.pairs)
        if has_paths:
            t.add_column("A path", overflow="fold")
            t.add_column("B path", overflow="fold")
        for p in res.pairs:
            cells = [f"{p['sim']:.5f}", p["a"], p["b"]]
            if has_paths:
                cells += [p["path_a"] or "-", p["path_b"] or "-"]
            t.add_row(*cells)
        console.print(t)
