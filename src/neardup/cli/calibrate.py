"""``neardup calibrate``: pairs to judge, judgments in, a threshold with a 95% interval out."""

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError
from .typer_app import DEFAULT_DB_PATH, DbOption, app, console, err_console, open_catalog


@app.command("calibrate")
def calibrate_cmd(
    sample: Annotated[Optional[int], typer.Option("--sample", help="Write this many pairs to judge to --out: spread over similarity bands around the model's default at first, then (once a fit exists) where answers narrow the interval most.", min=1, max=10_000)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="CSV for --sample: columns a, b, similarity, same (same left empty: fill 1 for the same image, 0 if not).")] = None,
    judgments_csv: Annotated[Optional[Path], typer.Option("--judgments", help="A filled-in pairs CSV (a, b, same; rows with an empty same are skipped): stored in the catalog, then the threshold is fitted from every judgment there.")] = None,
    target: Annotated[float, typer.Option("--target-precision", help="Fit the lowest threshold (highest recall) whose estimated pair precision reaches this.")] = 0.99,
    objective: Annotated[str, typer.Option("--objective", help="precision (reach --target-precision with the highest recall) or f1 (maximum F1).")] = "precision",
    export: Annotated[Optional[Path], typer.Option("--export", help="Write the catalog's judgments (the latest per pair) to this CSV.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Embedding model (default: the most recently updated one).")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed for the sample and the bootstrap.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object: threshold, low, high, precision, recall, judgments, counts...")] = False,
    db: DbOption = DEFAULT_DB_PATH,
) -> None:
    """Calibrate the threshold from your own judgments of pairs.

    1. `neardup calibrate --sample 60 --out pairs.csv` writes pairs to judge (fill `same` with 1 or 0).
    2. `neardup calibrate --judgments pairs.csv` stores them and fits: the lowest threshold whose
       estimated precision reaches --target-precision, a 95% interval, the estimated
       precision and recall, and what a run would suppress/retain at the threshold and at both ends.
    3. `neardup dedup` without --threshold then uses the calibrated threshold (and says so).

    Review decisions (not a duplicate, keep this one too) are judgments too. With no option,
    refits from the judgments already in the catalog.
    """
    from ..calibration import (CalibrationNeedsMore, calibrate, export_judgments, import_judgments, judgments,
                               offer_pairs, resolve_model, write_pairs_csv)

    if (sample is None) != (out is None):
        raise InputError("--sample and --out go together: --sample N --out pairs.csv")
    if objective not in ("precision", "f1"):
        raise InputError(f"--objective {objective!r}: use precision or f1")
    if not 0.5 <= target < 1:
        raise InputError(f"--target-precision {target}: give a value in [0.5, 1)")
    from ..paths import check_output_file

    for path in (out, export):  # before judgments are stored: a bad place changes nothing
        if path is not None:
            check_output_file(path)
    with open_catalog(db) as cat:
        name = resolve_model(cat, model)
        if judgments_csv is not None:
            stored, skipped = import_judgments(cat, judgments_csv, name)
            total = judgments(cat, name).num_rows
            err_console.print(f"stored {stored} judgment{'s' if stored != 1 else ''} from {judgments_csv}"
                              f"{f' ({skipped} rows left unjudged)' if skipped else ''}; {total} in the catalog "
                              f"for {name}", highlight=False, soft_wrap=True)
        if export is not None:
            n = export_judgments(cat, export, name)
            err_console.print(f"wrote {n} judgments to {export}", highlight=False)
            if judgments_csv is None and sample is None:
                return
        if sample is not None:
            pairs, how = offer_pairs(cat, sample, name, target=target, objective=objective, seed=seed)
            write_pairs_csv(pairs, out)
            msg = f"wrote {len(pairs)} pairs to judge to {out}, chosen {how}"
            if len(pairs) < sample:
                msg += f" (only {len(pairs)} unjudged pairs in those bands)"
            err_console.print(msg + "; fill `same` with 1 or 0, then: neardup calibrate --judgments "
                              f"{out} --db {db}", highlight=False, soft_wrap=True)
            if judgments_csv is None:
                return
        try:
            cal = calibrate(cat, name, target=target, objective=objective, seed=seed)
        except CalibrationNeedsMore as exc:
            raise InputError(f"cannot fit a threshold for {name} yet: {exc}") from None
    if as_json:
        typer.echo(json.dumps(cal.to_dict()))
        return
    goal = f"precision >= {cal.target:g} with the highest recall" if cal.objective == "precision" else "maximum F1"
    console.print(f"calibrated threshold for {cal.model}: {cal.threshold:.4f}  (95% interval {cal.low:.4f} to "
                  f"{cal.high:.4f}; {goal})", highlight=False)
    console.print(f"from {cal.judgments} judgments ({cal.n_same} same, {cal.n_different} different); estimated "
                  f"pair precision {cal.precision:.3f}, recall {cal.recall:.3f} at {cal.threshold:.4f}", highlight=False)
    from rich.table import Table

    t = Table(title=f"what a run would do ({cal.counts_mode} grouping)", title_justify="left")
    for c in ("", "threshold", "suppressed", "retained", "groups"):
        t.add_column(c, justify="left" if not c else "right")
    for key, label in (("low", "interval low"), ("threshold", "fitted"), ("high", "interval high")):
        v = getattr(cal, key)
        cnt = cal.counts[key]
        t.add_row(label, f"{v:.4f}", f"{cnt['suppressed']:,}", f"{cnt['retained']:,}", f"{cnt['groups']:,}")
    console.print(t)
    console.print(f"`neardup dedup --db {db}` (no --threshold) now uses {cal.threshold:.4f}. To narrow the interval: "
                  f"neardup calibrate --sample 20 --out next.csv --db {db}", highlight=False, soft_wrap=True)
