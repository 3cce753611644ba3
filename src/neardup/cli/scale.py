"""Commands for a source that keeps adding: match (new images against a catalog) and estimate."""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ..errors import InputError

if TYPE_CHECKING:
    import numpy as np

from .typer_app import DEFAULT_DB_PATH, app, console, err_console, open_catalog, progress_callback

_VECTOR_SUFFIXES = (".npy", ".parquet", ".pq")


def _query_vectors(queries: Path, ids: Optional[Path], model: str, id_column: str,
                   vector_column: Optional[str]) -> "tuple[np.ndarray, np.ndarray]":
    """Query ids and vectors: read from .npy/.parquet, or embedded from photos with the catalog's model."""
    import numpy as np

    from ..ingest import read_vectors

    if queries.suffix.lower() in _VECTOR_SUFFIXES:
        return read_vectors(queries, ids, id_column=id_column, vector_column=vector_column)
    if ids is not None:
        raise InputError("--ids goes with a .npy of query vectors; photos are named by their paths")
    from ..embed import canonical_name, get_model
    from ..sources import iter_image_paths

    try:
        canonical_name(model)
    except InputError:
        raise InputError(f"the catalog's vectors (model {model!r}) were imported, so photos cannot be embedded "
                         "the same way; give query vectors (.npy with --ids, or .parquet)") from None
    if not queries.exists():
        raise InputError(f"{queries}: no such file or folder")
    paths = iter_image_paths([queries])
    if not paths:
        raise InputError(f"{queries}: no images found")
    m = get_model(model)
    m.check_usable()
    vecs = []
    with progress_callback(f"embedding {len(paths):,} photos with {model}") as prog:
        for s in range(0, len(paths), 32):
            vecs.append(m.embed_files(paths[s:s + 32]))
            prog(min(s + 32, len(paths)), len(paths))
    return np.asarray(paths, dtype=object), np.concatenate(vecs)


@app.command()
def match(
    queries: Annotated[Optional[Path], typer.Argument(help="Query vectors (.npy with --ids, or .parquet with id and vector columns), or a folder / list of photos (embedded with the catalog's model). Leave out with --leakage.")] = None,
    against: Annotated[Path, typer.Option("--against", "--db", help="The catalog to match against (opened read-only: nothing is written).")] = DEFAULT_DB_PATH,
    threshold: Annotated[Optional[float], typer.Option("--threshold", "-t", help="Report every catalog image at or above this similarity (default: the model's).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Output: .csv, .parquet or .json with query_id, match_id, similarity, rank.")] = Path("matches.csv"),
    fmt: Annotated[Optional[str], typer.Option("--format", help="csv, parquet or json (default: from --out's suffix).")] = None,
    ids: Annotated[Optional[Path], typer.Option("--ids", help="With a .npy: one query id per line, in row order.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="The catalog's embedding model to match in (default: its most recent).")] = None,
    visible_only: Annotated[bool, typer.Option("--visible-only", help="Match only the catalog's visible images (default: every image, suppressed ones too).")] = False,
    leakage: Annotated[bool, typer.Option("--leakage", help="No queries: match one split of the catalog against another (a metadata column, see --split-column).")] = False,
    split_column: Annotated[str, typer.Option("--split-column", help="--leakage: the metadata column naming each image's split.")] = "split",
    splits: Annotated[Optional[str], typer.Option("--splits", help="--leakage: QUERY,REFERENCE splits (default: the only two, smaller against larger).")] = None,
    id_column: Annotated[str, typer.Option("--id-column", help="Parquet queries: the id column.")] = "id",
    vector_column: Annotated[Optional[str], typer.Option("--vector-column", help="Parquet queries: the vector column.")] = None,
    index: Annotated[str, typer.Option("--index", help="exact (every catalog image), ann (each query against its nearest catalog partitions; prints the recall measured on a sample of queries), or auto (ann above 300k catalog images and 2,000 queries).")] = "exact",
    nprobe: Annotated[int, typer.Option("--nprobe", help="--index ann: partitions each query is compared with (more: higher recall, slower).", min=1)] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """For each query: its best catalog match and every catalog image >= t. Never suppresses anything.

    Exact: one float32 GEMM of the queries against every catalog vector. Rows are ranked per
    query by similarity (ties: smaller match id first); a query with nothing >= t still gets its
    best match (rank 1, similarity below t). --leakage reports the images of one split that have
    a near-duplicate in another. --index ann compares each query only with the catalog partitions
    nearest it: every reported similarity is still exact, but a match can be missed; the recall,
    measured against exact on a sample of queries, is printed.
    """
    from ..match import leakage as run_leakage
    from ..match import match as run_match
    from ..match import write_matches
    from ..match import choose_index
    from ..thresholds import default_threshold

    choose_index(index, 0, 0)
    if leakage and queries is not None:
        raise InputError("--leakage matches two splits of the catalog: give no queries")
    if not leakage and queries is None:
        raise InputError("give query vectors or photos to match (or --leakage)")
    with open_catalog(against, read_only=True) as cat:
        name = model or cat.default_model()
        t = default_threshold(cat, name) if threshold is None else threshold
        with progress_callback("matching") as prog:
            if leakage:
                split_pair = [s.strip() for s in splits.split(",")] if splits else None
                res = run_leakage(cat, t, split_column=split_column, splits=split_pair, model=name, index=index,
                                  nprobe=nprobe, progress=prog)
            else:
                qids, vecs = _query_vectors(queries, ids, name, id_column, vector_column)
                res = run_match(cat, vecs, qids, t, model=name, index=index, nprobe=nprobe, progress=prog)
    write_matches(res.table, out, fmt)
    s = res.summary
    if as_json:
        typer.echo(json.dumps(s))
        return
    what = (f"{s['queries']:,} images of split {s['query_split']!r} against {s['catalog']:,} of {s['reference_split']!r}"
            if leakage else f"{s['queries']:,} queries against {s['catalog']:,} catalog images")
    console.print(f"{what} (model {s['model']}, threshold {s['threshold']}, {s['index']}): "
                  f"{s['with_match']:,} have a match >= t, {s['without_match']:,} do not; "
                  f"{s['rows']:,} rows written to {out}")
    rec = s.get("recall")
    if rec:
        err_console.print(
            f"approximate match (ANN, {s['ann']['partitions']:,} partitions, {s['ann']['nprobe']} probed, "
            f"{s['ann']['compared_fraction']:.1%} of pairs compared); recall measured against exact on "
            f"{rec['sample']:,} sampled queries: matches >= t found {rec['hit_recall']:.4f} "
            f"(95% lower bound {rec['hit_recall_lower_95']:.4f}), queries with a match found "
            f"{rec['query_recall']:.4f}, best match found {rec['best_found']:.4f}")
    elif s["index"] == "ann":
        err_console.print("approximate match (ANN); recall not measured")
    err_console.print("nothing in the catalog was changed", style="dim")


@app.command()
def estimate(
    threshold: Annotated[Optional[float], typer.Option("--threshold", "-t", help="Cosine threshold (default: the model's).")] = None,
    sample: Annotated[Optional[int], typer.Option("--sample", help="Rows sampled (default: ~1% of the catalog, 1,000 to 5,000). More rows, narrower intervals.")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the sample.")] = 0,
    model: Annotated[Optional[str], typer.Option("--model", help="Embedding model (default: the most recently updated).")] = None,
    prefer: Annotated[str, typer.Option("--prefer", help="Master policy, as for dedup (decides which member is the master).")] = "score,brightness",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON: with_duplicate[_low,_high], retained[_low,_high], sample, ...")] = False,
    db: Annotated[Path, typer.Option("--db", help="Catalog file (DuckDB), opened read-only.")] = DEFAULT_DB_PATH,
) -> None:
    """In seconds, without the full pass: the share of images with a near-duplicate at t, and how many
    images a dedup would retain, each with an exact 95% interval.

    A uniform sample of rows is compared with all rows (one GEMM). Retained counts the groups
    (singletons included): each sampled image is tested for being its group's master, exploring
    its group only until a better-ranked member appears, so the count of masters in the
    population is exactly the number of groups and the interval is an exact hypergeometric one.
    Retained is for components grouping (the seed's rule); where the model's default grouping is
    bounded (SSCD), the output says so and gives the lower bound that holds for it. Reviewer
    decisions are counted as dedup counts them.
    """
    from ..estimate import estimate as run_estimate
    from ..thresholds import default_threshold

    with open_catalog(db, read_only=True) as cat:
        name = model or cat.default_model()
        t = default_threshold(cat, name) if threshold is None else threshold
        with progress_callback("estimating") as prog:
            res = run_estimate(cat, t, model=name, sample=sample, seed=seed, prefer=prefer, progress=prog)
    if as_json:
        typer.echo(json.dumps(res))
        return
    n = res["images"]
    console.print(f"{n:,} images, model {res['model']}, threshold {res['threshold']}, sample {res['sample']:,} "
                  f"({res['seconds']:.1f} s); 95% intervals:")
    console.print(f"  with a near-duplicate: {res['with_duplicate']:.1%}  "
                  f"[{res['with_duplicate_low']:.1%}, {res['with_duplicate_high']:.1%}]")
    console.print(f"  retained (components): {res['retained']:,}  [{res['retained_low']:,}, {res['retained_high']:,}]  "
                  f"(~{res['retained'] / max(n, 1):.1%} of the images)")
    if res.get("note"):
        err_console.print(f"note: {res['note']}")
    if res.get("undecided"):
        err_console.print(f"{res['undecided']} sampled images could not be decided within the row budget; "
                          "the retained interval counts them both ways")
