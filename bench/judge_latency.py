"""Per-answer latency of the judging page at scale (issue 12): what one answer costs at N images.

    .venv/bin/python bench/judge_latency.py                  # 100k seed-shaped, 10 answers
    PYTHONPATH=/path/to/old/src python bench/judge_latency.py --answers 2 --label before

One answer on the page is POST /judge (the judgment is stored) then GET /judge (refit, next pair);
this times exactly that work, :func:`neardup.calibration.add_judgments` then
:func:`neardup.review.judge.judge_context`, on a catalog of ``neardup.synthetic.seed_shaped(N)``
that already holds 20 judgments (a simulated judge: same iff the pair's cosine >= 0.8). The
first page view (which builds what is computed once per model version) is timed apart. Writes
``bench/results/judge-latency-<N>-<label>.json``; the table is in docs/benchmarks-calibration.md.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--answers", type=int, default=10)
    ap.add_argument("--label", default="after")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from neardup.calibration import add_judgments
    from neardup.catalog import Catalog
    from neardup.review import judge as J
    from neardup.synthetic import seed_shaped

    tmp = Path(tempfile.mkdtemp(prefix="judge-latency-"))
    try:
        col = seed_shaped(args.n, seed=0)
        db = tmp / "cat.duckdb"
        with Catalog(db) as cat:
            cat.put_embeddings("sscd", [str(i) for i in col.ids], col.vectors)
        del col
        new_api = "skipped" not in inspect.signature(J.judge_context).parameters

        def context(cat):
            return J.judge_context(cat, "sscd") if new_api else J.judge_context(cat, "sscd", set(), 0)

        with Catalog(db) as cat:
            _, _, vectors = cat.embedding_vectors("sscd")
            rng = np.random.default_rng(0)
            ids = [str(i) for i in cat.sql("SELECT image_id FROM embedding_rows WHERE model = 'sscd' ORDER BY row")
                   .column(0).to_pylist()]
            # 20 prior judgments: pairs spread over similarity (a random image and its nearest of 200 others)
            seed_pairs = []
            for _ in range(20):
                a = int(rng.integers(len(ids)))
                cand = rng.integers(len(ids), size=200)
                sims = np.asarray(vectors[cand], np.float64) @ np.asarray(vectors[a], np.float64)
                b = int(cand[int(np.argsort(sims)[int(rng.integers(100, 200))])])
                if a != b:
                    seed_pairs.append((ids[a], ids[b], float(np.asarray(vectors[a]) @ np.asarray(vectors[b])) >= 0.8))
            add_judgments(cat, seed_pairs, "sscd", "bench")
            t0 = time.perf_counter()
            ctx = context(cat)
            first = time.perf_counter() - t0
            print(f"first page view: {first:.2f} s", file=sys.stderr)
            times = []
            for k in range(args.answers):
                p = ctx["pair"]
                t0 = time.perf_counter()
                add_judgments(cat, [(p["a"], p["b"], p["similarity"] >= 0.8)], "sscd", "review:judge")
                ctx = context(cat)
                times.append(time.perf_counter() - t0)
                print(f"answer {k + 1}: {times[-1]:.3f} s", file=sys.stderr)
        load = os.getloadavg()
        res = dict(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), label=args.label, n=args.n,
                   machine=f"{platform.machine()}, {os.cpu_count()} cpus, {platform.python_version()}",
                   load_avg=[round(v, 2) for v in load], first_view_s=round(first, 3),
                   answers_s=[round(t, 4) for t in times], median_answer_s=round(statistics.median(times), 4),
                   command="python bench/judge_latency.py " + " ".join(sys.argv[1:]))
        out = args.out or ROOT / "bench" / "results" / f"judge-latency-{args.n}-{args.label}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1) + "\n")
        print(json.dumps(res))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
