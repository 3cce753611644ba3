"""Images-in commands: scan, embed, models, skipped, find, demo."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import interrupts
from ..errors import InputError
from .typer_app import DEFAULT_DB_PATH, DbOption, app, console, err_console, open_catalog, progress_callback

SourcesArg = Annotated[list[Path], typer.Argument(
    help="Folders (scanned recursively), file lists (.txt/.lst: one path per line) or tables (.csv/.parquet with a "
         "'path' column; an 'id' column and other columns such as 'score' are kept).", show_default=False)]
ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="Embedding model (see `neardup models`). Default: sscd, bundled and offline.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per model call.")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", min=1, help="Decoding threads (default: one per CPU core).")]



def _print_skips(skips: list, limit: int = 5) -> None:
    if not skips:
        return
    err_console.print(f"{len(skips)} file(s) skipped (see `neardup skipped`):", highlight=False)
    for s in skips[:limit]:
        err_console.print(f"  {s.path}: {s.reason}", highlight=False, soft_wrap=True)
    if len(skips) > limit:
        err_console.print(f"  … and {len(skips) - limit} more", highlight=False)


@app.command("scan")
def scan_cmd(
    sources: SourcesArg,
    db: DbOption = DEFAULT_DB_PATH,
    workers: WorkersOpt = None,
    thumb_size: Annotated[int, typer.Option("--thumb-size", min=32, max=1024, help="Thumbnail size in pixels: the long side is at most this, and at least 3/4 of it for larger images.")] = 256,
) -> None:
    """Add images to the catalog: hash, size, brightness, EXIF capture time, quality measures (sharpness, JPEG quality, borders, colourfulness, clipped pixels: what the default --prefer policy of dedup reads) and a thumbnail for each.

    Re-running is incremental: unchanged files are not read again, changed files are re-hashed (and re-embedded by the next `embed`), vanished files are marked missing. Unreadable files (corrupt, truncated, empty, unsupported, decompression bombs, pipes, names that are not UTF-8) are listed by `neardup skipped`; a table whose extra columns clash with the catalog is refused before anything is written. Your images are only read, never modified, moved or deleted."""
    from ..sources import check_sources, scan

    check_sources([str(s) for s in sources])  # before the catalog is opened (or made)
    interrupts.hint("run the same scan again to continue; unchanged files are not read twice")
    with open_catalog(db, must_exist=False) as cat:
        with progress_callback("scanning") as prog:
            rep = scan(cat, [str(s) for s in sources], workers=workers, thumb_size=thumb_size, progress=prog)
    console.print(f"scan: {rep.summary()}", highlight=False)
    _print_skips(rep.skipped)


@app.command("embed")
def embed_cmd(
    model: ModelOpt = None,
    db: DbOption = DEFAULT_DB_PATH,
    batch_size: BatchOpt = 32,
    workers: WorkersOpt = None,
    chunk_size: Annotated[int, typer.Option("--chunk-size", min=1, help="Images per commit: Ctrl-C keeps every finished chunk.")] = 1024,
) -> None:
    """Embed every scanned image that has no up-to-date vector for the model.

    Byte-identical files are embedded once. Resumable: interrupt with Ctrl-C and run again to continue where it stopped."""
    from ..embed import get_model
    from ..find import embed

    m = get_model(model)
    m.check_usable()
    interrupts.hint(f"run `neardup embed --model {m.name}` again to continue")
    with open_catalog(db, must_exist=True) as cat:
        with progress_callback(f"embedding ({m.name})") as prog:
            rep = embed(cat, m, batch_size=batch_size, chunk_size=chunk_size, workers=workers, progress=prog)
    console.print(f"embed: {rep.summary()}", highlight=False)
    _print_skips(rep.failed)


@app.command("models")
def models_cmd() -> None:
    """List the embedding models: dimension, default threshold and grouping, and whether each can run offline here."""
    from ..embed import DEFAULT_MODEL, list_models

    from .typer_app import compact_table

    table = compact_table("Embedding models")
    for c in ("model", "dim", "threshold", "grouping", "offline", "weights"):
        table.add_column(c, no_wrap=c not in ("weights", "grouping"), overflow="fold")
    for m in list_models():
        av = m.availability()
        name = m.name + ("*" if m.name == DEFAULT_MODEL else "")
        grouping = m.default_mode + (f" {m.default_bound:g}" if m.default_bound is not None else "")
        if m.default_window:
            grouping += f", {m.default_window[0]:g} s window ({m.default_window[1]:g})"
        table.add_row(name, str(m.dim), f"{m.default_threshold:g}", grouping, "yes" if av.usable else "no", av.detail)
    console.print(table)
    console.print("* the default model; threshold, grouping (mode, bound; with a time window,",
                  style="dim", highlight=False)
    console.print("  images captured further apart link only from the similarity in brackets;",
                  style="dim", highlight=False)
    console.print("  below it, a pair with an untimed image links only if a geometric check",
                  style="dim", highlight=False)
    console.print("  passes: see dedup --no-verify)", style="dim", highlight=False)
    for m in list_models():
        console.print(f"{m.name}: {m.description}", highlight=False, soft_wrap=False)
    from ..cpu import describe_kernel, planned_kernel_path

    console.print(describe_kernel(planned_kernel_path(), checked=False), highlight=False, soft_wrap=False)


@app.command("skipped")
def skipped_cmd(db: DbOption = DEFAULT_DB_PATH,
                limit: Annotated[int, typer.Option("--limit", min=0, help="Show at most this many (0: all).")] = 0) -> None:
    """List the files a scan or embed could not use, with the reason for each."""
    from .listing import print_skipped

    print_skipped(db, limit=limit)


def _print_outcome(cat, model_name: str, threshold: float, result, thresholds: list[float]) -> None:
    from ..dedup import grouping_text
    from ..report import format_summary, sweep_table
    from ..sweep import sweep

    s = result.summary
    ts = sorted(set(thresholds) | {threshold}, reverse=True)
    rows = sweep(cat, ts, model=model_name, mode=s["mode"], bound=s.get("bound"), window=s.get("window_s") or 0,
                 window_link=s.get("window_link"), prefer=result.policy,
                 verify=s.get("geometric_check") is not None)  # the run's own grouping
    console.print(sweep_table(rows, chosen=threshold,
                              grouping=grouping_text(s["mode"], s.get("bound"), s.get("window_s"), s.get("window_link"),
                                                     s.get("geometric_check") is not None)))
    console.print(format_summary(result.summary), highlight=False)


@app.command("find")
def find_cmd(
    sources: SourcesArg,
    db: DbOption = DEFAULT_DB_PATH,
    model: ModelOpt = None,
    threshold: Annotated[Optional[float], typer.Option("--threshold", "-t", help="Similarity threshold in (0, 1]; default: the model's calibrated default.")] = None,
    mode: Annotated[Optional[str], typer.Option("--mode", help="components (transitive groups), bounded (components cut so every member is within the model's bound of its master) or leader (every suppressed image is similar to its own master). Default: the model's (see `neardup models`).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report the groups but write no run (nothing is suppressed).")] = False,
    batch_size: BatchOpt = 32,
) -> None:
    """One shot: scan the folders, embed with the model, group near-duplicates and suppress all but one per group.

    Suppression is a flag in the catalog — nothing is deleted or moved; undo with `neardup restore`. Prints the threshold sweep around the chosen threshold and the run's summary."""
    from ..embed import get_model
    from ..find import scan_and_embed

    m = get_model(model)
    m.check_usable()
    interrupts.hint("run the same command again to continue")
    t = m.default_threshold if threshold is None else threshold
    if not 0 < t <= 1:
        raise InputError(f"threshold {t}: must be in (0, 1]")
    from ..dedup import check_options, dedup
    from ..sources import check_sources

    check_options(mode=mode)  # a bad --mode or source is refused before the catalog is opened
    check_sources([str(s) for s in sources])

    with open_catalog(db, must_exist=False) as cat:
        with progress_callback(f"scanning + embedding ({m.name})") as prog:
            srep, erep = scan_and_embed(cat, [str(s) for s in sources], m, batch_size=batch_size, progress=prog)
        console.print(f"scan: {srep.summary()}", highlight=False)
        _print_skips(srep.skipped)
        console.print(f"embed: {erep.summary()}", highlight=False)
        _print_skips(erep.failed)
        if not any(x["model"] == m.name for x in cat.embedding_models()):
            raise InputError("no readable images found in " + ", ".join(str(s) for s in sources))
        result = dedup(cat, t, model=m.name, mode=mode, dry_run=dry_run, release=True)
        if result.summary.get("recomputed"):
            err_console.print(result.summary["recomputed"], highlight=False, markup=False, soft_wrap=True)
        _print_outcome(cat, m.name, t, result, list(m.sweep_thresholds))


@app.command("demo")
def demo_cmd(
    folder: Annotated[Path, typer.Argument(help="Where to build the sample collection and its catalog.")] = Path("neardup-demo"),
    model: ModelOpt = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed for the edits (same seed, same files).")] = 0,
) -> None:
    """Build a sample collection (scikit-image's bundled photos + edited copies + burst frames) and run the whole job.

    Works offline. The photos go to FOLDER/photos, the catalog to FOLDER/neardup.duckdb; then scan, embed with the default model, and dedup at the model's default threshold, printing the threshold sweep and the before/after. Explore further with e.g. `neardup sweep --db FOLDER/neardup.duckdb` or `neardup review --db FOLDER/neardup.duckdb`."""
    from ..dedup import dedup
    from ..embed import get_model
    from ..find import scan_and_embed
    from ..samples import build_collection, read_labels

    m = get_model(model)
    m.check_usable()
    folder = Path(folder)
    photos = folder / "photos"
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: is a file, not a folder; pick an empty or new folder")
    if folder.exists() and any(folder.iterdir()) and not (photos / "labels.csv").exists():
        raise InputError(f"{folder}: exists and is not a neardup demo folder; pick an empty or new folder")
    with progress_callback("building the sample collection") as prog:
        files = build_collection(photos, seed=seed, progress=prog)
    truth = read_labels(photos / "labels.csv")
    n_groups = len({r["group"] for r in truth if r["group"]})
    console.print(f"demo: {len(files)} files in {photos} — {n_groups} distinct photos, each with edited copies "
                  "(JPEG, resize, brightness, flip, crop, rotation, caption), 3 bursts, a byte-identical copy, "
                  "an EXIF-rotated copy and one truncated file", highlight=False)
    db = folder / "neardup.duckdb"
    interrupts.hint("run `neardup demo` again to continue")
    with open_catalog(db, must_exist=False) as cat:
        with progress_callback(f"scanning + embedding ({m.name})") as prog:
            srep, erep = scan_and_embed(cat, [photos], m, progress=prog)
        console.print(f"scan: {srep.summary()}", highlight=False)
        _print_skips(srep.skipped)
        console.print(f"embed: {erep.summary()}", highlight=False)
        # a re-run of the demo starts from the same state: undo earlier demo runs first
        cat.restore(None)
        t = m.default_threshold
        result = dedup(cat, t, model=m.name)
        _print_outcome(cat, m.name, t, result, list(m.sweep_thresholds))
        s = result.summary
        console.print(f"\nbefore: {s['images']} images → after: {s['retained']} retained, {s['suppressed']} suppressed "
                      f"(ground truth: {n_groups} distinct photos). Nothing was deleted: undo with "
                      f"`neardup restore --all --db {db}`", highlight=False)
