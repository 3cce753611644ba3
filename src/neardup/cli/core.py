"""Core commands: import-embeddings, sweep, dedup, runs, restore, export."""

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import InputError
from ..defaults import DEFAULT_POLICY
from .typer_app import DEFAULT_DB_PATH, DbOption, app, console, err_console, open_catalog, progress_callback

ModelOption = Annotated[Optional[str], typer.Option("--model", help="Embedding model to use (default: the most recently updated one).")]
IndexOption = Annotated[str, typer.Option("--index", help="Similarity pass: exact (all pairs), ann (faiss, prints its estimated recall), or auto (exact up to 20,000 images; ANN above, where it was measured faster on dense, sparse and clustered data; the summary says which pass ran).")]
EngineOption = Annotated[str, typer.Option("--engine", help="local (this process) or ray (tiles on a Ray cluster: local, or RAY_ADDRESS).")]


def _print_recall(forest: Any, threshold: float | None = None) -> None:
    """Say how close to exact an approximate pass was (the ANN stores its own estimate)."""
    meta = getattr(forest, "meta", None) or {}
    rec = meta.get("recall")
    if not rec:
        return
    if isinstance(rec, dict):
        at = (rec.get("by_threshold") or {}).get(f"{threshold:.4f}") if threshold is not None else None
        src = at if at else rec
        key = "pair_recall" if "pair_recall" in src else None
        parts = []
        if key:
            parts.append(f"pair recall {float(src[key]):.4f}" + (f" at {threshold}" if at else ""))
        low = src.get("lower_95", src.get("pair_recall_lower_95"))
        if low is not None:
            parts.append(f"95% lower bound {float(low):.4f}")
        if at and at.get("rows_with_pairs"):
            parts.append(f"{float(at['rows_complete']):.2%} of the {int(at['rows_with_pairs']):,} sampled images with a "
                         "duplicate have every one of them in their group")
        if "sample" in rec:
            parts.append(f"{int(rec['sample']):,} sampled rows checked against exact")
        err_console.print("approximate similarity pass (ANN): " + ", ".join(parts or [str(rec)]))
    else:
        err_console.print(f"approximate similarity pass (ANN): estimated pair recall {rec}")
    if meta.get("hist_estimated"):
        err_console.print("pair counts in this output are estimated from that sample")


@app.command("import-embeddings")
def import_embeddings_cmd(
    vectors: Annotated[Path, typer.Argument(help="Vectors: a .npy (rows x dims; give --ids) or a Parquet file with an id column and a list/fixed-size-list vector column.")],
    ids: Annotated[Optional[Path], typer.Option("--ids", help="Text file with one id per line, in the row order of the .npy.")] = None,
    meta: Annotated[Optional[Path], typer.Option("--meta", help="CSV or Parquet with an 'id' column and optional score, brightness and any other columns (kept on the images table).")] = None,
    model: Annotated[str, typer.Option("--model", help="Name these vectors are stored under (one dimension per model).")] = "precomputed",
    id_column: Annotated[str, typer.Option("--id-column", help="Parquet: the id column.")] = "id",
    vector_column: Annotated[Optional[str], typer.Option("--vector-column", help="Parquet: the vector column (default: the only list column).")] = None,
    db: DbOption = DEFAULT_DB_PATH,
) -> None:
    """Import precomputed embeddings (validated, L2-normalised). Re-importing the same ids updates them.

    Checks: unique non-empty ids, as many ids as vector rows, finite values, no all-zero rows, one
    dimension per model. Nothing is written unless every check passes.

    The vectors stream (read, checked and written a few thousand rows at a time): memory for the
    ids and one chunk, not for the vectors; disk for the new vector file.
    """
    from ..ingest import import_embeddings

    with open_catalog(db, must_exist=False) as cat, progress_callback("importing vectors") as prog:
        rep = import_embeddings(cat, vectors, ids, meta=meta, model=model, id_column=id_column, vector_column=vector_column,
                                progress=prog)
    console.print(f"imported {rep.added + rep.updated:,} vectors of dimension {rep.dim} as model [bold]{rep.model}[/] "
                  f"into {db}: {rep.added:,} new, {rep.updated:,} updated")
    if meta is not None:
        console.print(f"metadata: {rep.meta_rows:,} rows applied")
    if rep.meta_unmatched:
        shown = ", ".join(rep.meta_unmatched[:5])
        err_console.print(f"warning: {len(rep.meta_unmatched):,} metadata ids match no image and were ignored (e.g. {shown})")


def _read_id_file(path: Path) -> list[str]:
    """The ids of an ``--ids`` file; an empty file is refused (it would make a scope of nothing)."""
    from ..ingest import read_ids

    ids = [str(i) for i in read_ids(path)]
    if not ids:
        raise InputError(f"{path}: no ids in the file (one id per line)")
    return ids


@app.command()
def sweep(
    thresholds: Annotated[Optional[str], typer.Option("--thresholds", help="Comma-separated cosine thresholds. Default: the model's scale centred on its default threshold (sscd 0.9 ... 0.4 around 0.6; CLIP and unknown imported vectors 0.99 ... 0.95 around 0.98).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of {threshold, pairs, groups, suppressed, retained, largest_group}.")] = False,
    model: ModelOption = None,
    cluster: Annotated[Optional[int], typer.Option("--cluster", help="Only this cluster (see `neardup cluster`).")] = None,
    ids_file: Annotated[Optional[Path], typer.Option("--ids", help="Only the ids in this file (one per line).")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Also write a PNG: groups/suppressed/retained vs threshold and the pair-similarity histogram.")] = None,
    chosen: Annotated[Optional[float], typer.Option("--chosen", help="Threshold to mark on the table and plot (default: the default threshold for this catalog and model, the one `dedup` uses).")] = None,
    index: IndexOption = "exact",
    engine: EngineOption = "local",
    db: DbOption = DEFAULT_DB_PATH,
) -> None:
    """What each threshold would do: pairs, groups, suppressed, retained, largest group.

    Groups, suppressed and retained are counted under the grouping dedup would use (the model's
    mode: bounded for SSCD, with its capture-time window; the header says which) and the
    reviewer decisions. Every threshold comes from one similarity pass (a forest of the pairs above the lowest
    threshold), so ten thresholds cost about what one does. Nothing is written but a cache.
    The table and plot mark the default threshold (the one `dedup` uses without --threshold).
    """
    from ..report import sweep_table
    from ..sweep import default_thresholds, parse_thresholds, plan_rows, sweep_plan
    from ..thresholds import choose_threshold

    ts = parse_thresholds(thresholds) if thresholds is not None else None
    if chosen is not None:
        from ..dedup import check_threshold

        chosen = check_threshold(chosen)
    if cluster is not None and ids_file is not None:
        raise InputError("give --cluster or --ids, not both")
    with open_catalog(db) as cat:
        ids = None
        if cluster is not None:
            from ..cluster import cluster_ids

            ids = cluster_ids(cat, cluster)
        elif ids_file is not None:
            ids = _read_id_file(ids_file)
        name = model or cat.default_model()
        choice = choose_threshold(cat, name)
        if ts is None:
            ts, _ = default_thresholds(cat, name)
        with progress_callback("similarity pass") as prog:
            plan, forest = sweep_plan(cat, ts, model=model, ids=ids, index=index, engine=engine, progress=prog)
        rows = plan_rows(plan, forest, ts)
    scope = plan.scope
    _print_recall(forest, min(ts))
    mark = choice.value if chosen is None else chosen
    label = f"default {choice.value:g} ({choice.detail})" if chosen is None else f"chosen threshold {chosen:g}"
    if plot is not None:
        from ..plots import plot_sweep

        plot_sweep(rows, forest, plot, chosen=mark, chosen_label=label,
                   counts=lambda grid: plan_rows(plan, forest, grid), grouping=plan.describe())
        err_console.print(f"plot written to {plot}")
    if as_json:
        typer.echo(json.dumps(rows))
    else:
        console.print(sweep_table(rows, mark, caption=f"◀ {label}", grouping=plan.describe()))
        what = f"cluster {cluster}" if cluster is not None else (f"{len(scope):,} listed ids" if ids else f"{len(scope):,} images")
        console.print(f"{what}, model {scope.model}; groups, suppressed and retained as dedup would group them "
                      f"({plan.describe()}); pairs = pairs >= t, counted to 1e-5 in cosine", highlight=False)


@app.command()
def dedup(
    threshold: Annotated[Optional[float], typer.Option("--threshold", "-t", help="Cosine threshold in (0, 1]; pairs at or above it are duplicates. Default: this catalog's calibrated threshold for the model (`neardup calibrate`), else the model's own (see `neardup models`; 0.98 for imported CLIP-style vectors); the command says which.")] = None,
    mode: Annotated[Optional[str], typer.Option("--mode", help="components: transitive groups (A~B, B~C groups A, B, C; chains can grow). bounded: components cut at their weakest links until every member is within --bound of its master. leader: each kept image suppresses only images within the threshold of itself. Default: the model's (see `neardup models`).")] = None,
    bound: Annotated[Optional[float], typer.Option("--bound", help="Mode bounded: the lowest similarity any member may have to its group's master (default: the model's).")] = None,
    window: Annotated[Optional[float], typer.Option("--window", help="Mode bounded: images captured more than this many seconds apart (EXIF DateTimeOriginal, or captured_at of imported metadata) link only from --window-link on; images with no capture time link as without a window. 0 turns it off. Default: the model's (sscd 1 s).")] = None,
    window_link: Annotated[Optional[float], typer.Option("--window-link", help="Mode bounded: the similarity from which images captured more than --window apart link (default: the model's; sscd 0.95).")] = None,
    verify: Annotated[Optional[bool], typer.Option("--verify/--no-verify", help="With a capture-time window: a pair with an image that has no capture time and a similarity below --window-link links only if one similarity transform (crop, resize, rotation, flip) maps one image onto the other, checked on the scan's thumbnails; two camera poses of one place do not. Default: on.")] = None,
    prefer: Annotated[str, typer.Option("--prefer", help="Master policy: keys compared in order (add :asc/:desc). score, brightness, resolution, file_size, newest, oldest (capture time), modified (file time, oldest first), path, id, and the scan's quality keys content (pixels less borders), border, central (mean similarity to the rest of the group: the source of edited copies), colour, jpeg_quality, sharpness, clipped; 'quality' stands for those in the default's order. 'score,brightness' is the seed's rule. id asc is always the last tie-break; each group records the key that decided its master (decided_by).")] = DEFAULT_POLICY,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would happen; write nothing.")] = False,
    model: ModelOption = None,
    index: IndexOption = "exact",
    engine: EngineOption = "local",
    group_score: Annotated[str, typer.Option("--group-score", help="How a group's scores are combined onto its master (group_score on the visible view and in export): sum, max or mean.")] = "sum",
    keep_previous: Annotated[bool, typer.Option("--keep-previous", help="Leave the run in force for this model in force too (suppression is then the union of both; a group's master stays visible where the union would hide the whole group).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    db: DbOption = DEFAULT_DB_PATH,
) -> None:
    """Group near-duplicates, keep one master per group, suppress the rest (reversibly: see restore).

    One run is in force per model: a new dedup replaces the applied run of the same model in the
    same transaction and says which (`restore` of the new run puts the old one back in force).
    A dedup whose result is exactly the run in force writes nothing and says so. A crash or
    Ctrl-C leaves the catalog as it was. Reviewer decisions (keep, master, not-a-duplicate) are
    respected and counted. "retained" is what the catalog shows after the command. The similarity
    pass is cached and kept up to date: after new images arrive only new x all pairs are computed.
    Each master carries its group's size and aggregated score (group_size, group_score).
    During the similarity pass the catalog file is free for other neardup processes (`neardup
    review`); if one changed what the pass read, the pass is computed again and the command says so.
    """
    from ..dedup import check_options
    from ..dedup import dedup as run_dedup
    from ..report import format_summary

    check_options(mode=mode, prefer=prefer, index=index, engine=engine, bound=bound,
                  window=window, window_link=window_link)  # a usage error stays one line
    with open_catalog(db) as cat:
        if threshold is None:
            from ..thresholds import choose_threshold

            choice = choose_threshold(cat, model)
            threshold = choice.value
            err_console.print(f"using {choice.describe()} (give --threshold to override)", highlight=False,
                              soft_wrap=True)
        with progress_callback("similarity pass") as prog:
            res = run_dedup(cat, threshold, model=model, mode=mode, bound=bound, prefer=prefer, dry_run=dry_run,
                            index=index, engine=engine, progress=prog, group_score=group_score,
                            keep_previous=keep_previous, release=True, window=window, window_link=window_link,
                            verify=verify)
    if res.summary.get("recomputed"):
        err_console.print(res.summary["recomputed"], highlight=False, markup=False, soft_wrap=True)
    _print_recall(res.forest, threshold)
    if as_json:
        typer.echo(json.dumps(res.summary, default=float))
    else:
        console.print(format_summary(res.summary), highlight=False)
        if res.run_id is not None and not res.unchanged:
            back = f" (puts run {', '.join(map(str, res.replaced))} back in force)" if res.replaced else ""
            console.print(f"undo with: neardup restore {res.run_id} --db {db}{back}", style="dim")


@app.command()
def runs(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    db: DbOption = DEFAULT_DB_PATH,
) -> None:
    """List dedup runs: threshold, mode, counts, and whether each is applied, restored or replaced (by which run)."""
    from .listing import print_runs

    print_runs(db, as_json=as_json)


@app.command()
def restore(
    run: Annotated[Optional[int], typer.Argument(help="The run to undo (see `neardup runs`).")] = None,
    all_runs: Annotated[bool, typer.Option("--all", help="Undo every applied run.")] = False,
    db: DbOption = DEFAULT_DB_PATH,
) -> None:
    """Undo a run: its images are no longer suppressed by it.

    Restoring a run that replaced another puts that one back in force (one dedup back); --all
    undoes every applied run and puts nothing back, so every image is visible again.
    """
    if (run is None) == (not all_runs):
        raise InputError("give a run id or --all (not both)")
    with open_catalog(db) as cat:
        res = cat.restore_runs(None if all_runs else run)
        total = cat.count_images()
    undone, visible = res.undone, res.visible
    if undone:
        back = (f"; run{'s' if len(res.reinstated) > 1 else ''} {', '.join(map(str, res.reinstated))} in force again"
                if res.reinstated else "")
        console.print(f"restored run{'s' if len(undone) > 1 else ''} {', '.join(map(str, undone))}{back}; "
                      f"{visible:,} of {total:,} images visible")
    else:
        console.print(f"no applied runs; {visible:,} of {total:,} images visible")


@app.command()
def export(
    run: Annotated[Optional[int], typer.Option("--run", help="Run to export (default: the latest applied run).")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="csv, parquet or json (default: from --out's suffix).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Output file.")] = Path("groups.csv"),
    db: DbOption = DEFAULT_DB_PATH,
) -> None:
    """Write one row per image of a run: image_id, path, group_id, group_size, master_id, is_master, is_suppressed, sim_to_master, group_score.

    group_id is empty (NULL) for an image with no duplicate (group_size 1), so the distinct
    group_ids are the run's duplicate groups, as many as its summary's "groups"."""
    from ..dedup import export_run

    with open_catalog(db) as cat:
        if run is None:
            run = cat.latest_run_id()
            if run is None:
                raise InputError(f"{db}: no applied run to export (run `neardup dedup` first or give --run)")
        n = export_run(cat, run, out, fmt)
        groups = cat.run(run)["n_groups"]
    console.print(f"wrote {n:,} rows of run {run} ({groups:,} duplicate groups) to {out}")
