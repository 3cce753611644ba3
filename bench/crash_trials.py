"""Many crash trials: interrupt (SIGINT) or kill (SIGKILL) real `neardup` commands at spread-out
moments and check every outcome (the suite's tests/test_crash.py runs a handful of the same).

Moments: fractions of the command's own uninterrupted run time, and file events at its commit (a new
embedding version file, the DuckDB write-ahead log growing) plus 0-5 ms. Each trial checks the
catalog's integrity, exactly-before-or-after (single-commit commands), exit 130 with one true line
(SIGINT) or 0 only when finished, and that the next command succeeds.

    python bench/crash_trials.py --trials 120 --out bench/results/crash-trials.json
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import crashkit as ck  # noqa: E402

from neardup.catalog import Catalog  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=120)
    ap.add_argument("--images", type=int, default=20000, help="vectors in the import/dedup/restore catalog")
    ap.add_argument("--photos", type=int, default=24, help="image files for the scan/embed trials")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    root = Path(tempfile.mkdtemp(prefix="neardup-crash-"))
    print(f"work folder {root}", flush=True)

    # fixtures and the state after each command, from one uninterrupted run of each (timed)
    n, dim = a.images, 128
    base = root / "vec"
    base.mkdir()
    import numpy as np

    from neardup.dedup import dedup
    from neardup.ingest import import_embeddings
    from neardup.find import embed
    from neardup.sources import scan

    ids = base / "ids.txt"
    ids.write_text("\n".join(f"img{k:07d}" for k in range(n)) + "\n")
    np.save(base / "v2.npy", ck.make_vectors(n, dim, 2))
    db0 = base / "cat.duckdb"
    with Catalog(db0) as cat:
        import_embeddings(cat, ck.make_vectors(n, dim, 1), ids.read_text().split(), model="m")
        dedup(cat, 0.95)
        dedup(cat, 0.97)
    photos = ck.build_image_folder(root / "photos", a.photos)
    empty = root / "empty" / "cat.duckdb"
    empty.parent.mkdir()
    Catalog(empty).close()
    scanned = ck.copy_catalog(empty, root / "scanned")
    with Catalog(scanned) as cat:
        scan(cat, [photos])

    def args_for(cmd: str, db: Path) -> list[str]:
        return {"import-embeddings": ["import-embeddings", str(base / "v2.npy"), "--ids", str(ids), "--model", "m"],
                "dedup": ["dedup", "-t", "0.96"], "restore": ["restore", "--all"],
                "scan": ["scan", str(photos), "--workers", "1"],
                "embed": ["embed", "--model", ck.EMBED_MODEL, "--chunk-size", "4", "--batch-size", "4"]}[cmd] + ["--db", str(db)]

    start_of = {"import-embeddings": db0, "dedup": db0, "restore": db0, "scan": empty, "embed": scanned}
    before, after, runtime = {}, {}, {}
    for cmd, src in start_of.items():
        ref = ck.copy_catalog(src, root / f"ref-{cmd}")
        before[cmd] = ck.state(ref)
        t0 = time.monotonic()
        r = ck.neardup(*args_for(cmd, ref))
        runtime[cmd] = time.monotonic() - t0
        assert r.returncode == 0, (cmd, r.stderr)
        after[cmd] = ck.state(ref)
        print(f"{cmd}: {runtime[cmd]:.1f} s uninterrupted", flush=True)

    events = {"import-embeddings": ["npy", "wal"], "dedup": ["wal"], "restore": ["wal"], "scan": ["wal"],
              "embed": ["npy", "wal"]}
    plan = []
    cmds = list(start_of)
    for k in range(a.trials):
        cmd = cmds[k % len(cmds)]
        sig = signal.SIGKILL if k % 3 == 2 else signal.SIGINT
        if rng.random() < 0.5:
            moment, delay = "t", round(rng.uniform(0.05, 1.0) * runtime[cmd], 3)
        else:
            moment, delay = rng.choice(events[cmd]), rng.choice([0.0, 0.0005, 0.001, 0.002, 0.005])
        plan.append((cmd, sig, moment, delay))

    results, outcomes = [], Counter()
    for k, (cmd, sig, moment, delay) in enumerate(plan):
        db = ck.copy_catalog(start_of[cmd], root / f"t{k}")
        multi = cmd in ("scan", "embed")
        tr = ck.run_trial(ck.Trial(cmd, args_for(cmd, db), sig, moment, delay, multi_commit=multi), db)
        probs = ck.check_trial(tr, db, before[cmd], after[cmd], rerun=args_for(cmd, db) if multi else None,
                               next_cmd=["runs", "--db", str(db)] if multi else
                               ["dedup", "--dry-run", "-t", "0.95", "--db", str(db)])
        line = (tr.stderr.strip().splitlines() or [""])[-1]
        kind = ("finished (exit 0)" if tr.rc == 0 else
                "SIGINT: nothing changed" if tr.rc == 130 and "nothing was changed" in line else
                "SIGINT: change kept" if tr.rc == 130 else
                "SIGKILL" if tr.rc == -signal.SIGKILL else f"exit {tr.rc}")
        outcomes[(cmd, kind)] += 1
        results.append(dict(command=cmd, signal=signal.Signals(sig).name, moment=moment, delay=delay, rc=tr.rc,
                            delivered=tr.delivered, message=line, outcome=kind, problems=probs))
        mark = "clean" if not probs else "PROBLEM " + "; ".join(probs)
        print(f"{k + 1:4d} {tr.label:45s} rc={tr.rc!s:4s} {kind:24s} {mark}", flush=True)
        if not probs:
            import shutil

            shutil.rmtree(db.parent, ignore_errors=True)

    delivered = [r for r in results if r["delivered"]]
    clean = [r for r in delivered if not r["problems"]]
    ints = [r for r in delivered if r["signal"] == "SIGINT"]
    kills = [r for r in delivered if r["signal"] == "SIGKILL"]
    summary = dict(trials=len(results), delivered=len(delivered), clean=len(clean),
                   sigint=len(ints), sigint_clean=sum(not r["problems"] for r in ints),
                   sigkill=len(kills), sigkill_clean=sum(not r["problems"] for r in kills),
                   finished_before_signal=len(results) - len(delivered),
                   runtime_s={k: round(v, 2) for k, v in runtime.items()},
                   outcomes={f"{c}: {k}": v for (c, k), v in sorted(outcomes.items())})
    print(json.dumps(summary, indent=1))
    if a.out:
        a.out.write_text(json.dumps(dict(summary=summary, trials=results), indent=1) + "\n")
    sys.exit(0 if len(clean) == len(delivered) else 1)


if __name__ == "__main__":
    main()
