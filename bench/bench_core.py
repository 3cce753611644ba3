"""Core speed and memory benchmark: exact dedup and sweep vs the bare GEMM, side by side.

Each case runs in a fresh subprocess (so peak RSS is that case's alone), several times; we report
medians and the ratio to the bare upper-triangle float32 GEMM of the same vectors measured in
the same round (the machine is shared and noisy: ratios are what compare).

    .venv/bin/python bench/bench_core.py --n 12217 --repeats 5
    .venv/bin/python bench/bench_core.py --n 100000 --repeats 3
    .venv/bin/python bench/bench_core.py --n 100000 --giant-span 1.0 --repeats 3   # denser giant group

Prints a Markdown table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def vectors_path(n: int, span: float, seed: int) -> Path:
    p = Path(os.environ.get("NEARDUP_BENCH_CACHE", "/tmp")) / f"neardup-seed-{n}-{span}-{seed}.npz"
    if not p.exists():
        import numpy as np  # noqa: F401  (imported after neardup inside seed_shaped's module)

        import neardup  # noqa: F401
        from neardup.synthetic import seed_shaped

        c = seed_shaped(n, seed=seed, giant_span=span)
        np.savez(p, vectors=c.vectors, score=c.score, brightness=c.brightness)
    return p


def bare_upper_triangle_gemm(X, block_rows: int = 2048, col_chunk: int = 8192) -> None:
    """The floor no exact method can go under: the float32 upper-triangle GEMM in neardup's
    blocks, written into one preallocated buffer and thrown away."""
    import numpy as np

    n = len(X)
    buf = np.empty(block_rows * col_chunk, np.float32)
    for a in range(0, n, block_rows):
        b = min(n, a + block_rows)
        Xr = X[a:b]
        for c0 in range(a, n, col_chunk):
            c1 = min(n, c0 + col_chunk)
            np.matmul(Xr, X[c0:c1].T, out=buf[: (b - a) * (c1 - c0)].reshape(b - a, c1 - c0))


def naive_dedup(X, threshold: float, score=None, brightness=None) -> dict:
    """The lesson's method, as its script does it: rows L2-normalised, blocks of 1,000 rows against
    all columns, every pair >= t extracted with ``np.nonzero``, scipy ``connected_components``, and
    (given score/brightness) each group's master by highest score, ties by brightness."""
    import numpy as np
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    n = len(X)
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    ii, jj = [], []
    for a in range(0, n, 1000):
        S = X[a:a + 1000] @ X.T
        r, c = np.nonzero(S >= threshold)
        keep = c > r + a
        ii.append((r[keep] + a).astype(np.int32))
        jj.append(c[keep].astype(np.int32))
    i = np.concatenate(ii)
    j = np.concatenate(jj)
    g = sp.coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(g, directed=False)
    sizes = np.bincount(labels)
    out = {"groups": int((sizes >= 2).sum()), "pairs": int(len(i)), "largest_group": int(sizes.max())}
    if score is not None and brightness is not None:
        order = np.lexsort((-np.asarray(brightness), -np.asarray(score), labels))  # by group, best first
        first = np.ones(n, bool)
        first[1:] = labels[order][1:] != labels[order][:-1]
        out["retained"] = int(first.sum())
        out["suppressed"] = n - out["retained"]
    return out


def naive_process(path: str, threshold: float) -> dict:
    """The lesson's script as a process of its own (no neardup import): load the vectors, run it."""
    import numpy as np

    z = np.load(path)
    X = np.ascontiguousarray(z["vectors"], dtype=np.float32)
    return naive_dedup(X, threshold, z["score"], z["brightness"])


def worker(case: str, path: str, threshold: float) -> dict:
    """One measurement in this (fresh) process."""
    import resource

    import neardup  # noqa: F401  (sets the OpenBLAS spin default before numpy loads)
    import numpy as np

    from neardup.policy import priority_rank, select_masters
    from neardup.similarity.exact import exact_forest

    z = np.load(path)
    X = np.ascontiguousarray(z["vectors"])
    n = len(X)
    # warm the compiled kernels on a small input so JIT loading is not timed
    # warm up: load the compiled kernels and pyarrow's compute functions once (a one-time
    # ~0.3 s per process that a CLI call pays and a library user pays once per session)
    import pyarrow as pa

    warm = exact_forest(X[:300], min(threshold, 0.95))
    warm.components(threshold), warm.sweep([threshold]), warm.weakest_links(threshold)
    select_masters(warm.components(threshold), priority_rank(
        pa.table({"id": [str(k) for k in range(300)], "score": z["score"][:300], "brightness": z["brightness"][:300]}),
        "score,brightness"))
    out: dict = {"case": case, "n": n}
    t0 = time.perf_counter()
    if case == "gemm":
        bare_upper_triangle_gemm(X)
    elif case == "dedup":
        import pyarrow as pa

        f = exact_forest(X, threshold)
        labels = f.components(threshold)
        meta = pa.table({"id": [f"i{k:07d}" for k in range(n)], "score": z["score"], "brightness": z["brightness"]})
        rank = priority_rank(meta, "score,brightness")
        masters = select_masters(labels, rank)
        out["groups"] = int((np.bincount(labels) >= 2).sum())
        out["retained"] = int((masters == np.arange(n)).sum())
        out["largest_group"] = int(np.bincount(labels).max())
        out["pairs"] = f.pair_count(threshold)
    elif case == "sweep":
        ts = [0.99, 0.98, 0.97, 0.95]
        f = exact_forest(X, min(ts))
        out["sweep"] = f.sweep(ts)
    elif case == "naive":
        out.update(naive_dedup(X, threshold))
    else:
        raise SystemExit(f"unknown case {case}")
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=12217)
    ap.add_argument("--threshold", type=float, default=0.98)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--giant-span", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", default="gemm,dedup,sweep")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--naive-process", metavar="NPZ", help="run the lesson's script on NPZ in this process and print "
                    "its counts as JSON (bench/startup.py times it as a process)")
    args = ap.parse_args()
    if args.naive_process:
        print(json.dumps(naive_process(args.naive_process, args.threshold)))
        return
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.threshold)))
        return
    path = vectors_path(args.n, args.giant_span, args.seed)
    cases = args.cases.split(",")
    rounds: list[dict[str, dict]] = []
    for r in range(args.repeats):
        row = {}
        for case in cases:
            res = subprocess.run([sys.executable, __file__, "--threshold", str(args.threshold), "--worker", case, str(path)],
                                 capture_output=True, text=True, check=True)
            row[case] = json.loads(res.stdout.strip().splitlines()[-1])
        rounds.append(row)
        print(f"round {r + 1}: " + ", ".join(f"{c} {row[c]['seconds']:.2f}s/{row[c]['peak_rss_mb']:.0f}MB" for c in cases),
              file=sys.stderr)
    med = {c: statistics.median(r[c]["seconds"] for r in rounds) for c in cases}
    rss = {c: statistics.median(r[c]["peak_rss_mb"] for r in rounds) for c in cases}
    ratios = {c: statistics.median(r[c]["seconds"] / r["gemm"]["seconds"] for r in rounds) for c in cases if "gemm" in cases}
    if "dedup" in cases and "sweep" in cases:
        ratios["sweep/dedup"] = statistics.median(r["sweep"]["seconds"] / r["dedup"]["seconds"] for r in rounds)
    info = dict(date=time.strftime("%Y-%m-%d"), machine=f"{os.cpu_count()} cores, {cpu_model()}", n=args.n,
                threshold=args.threshold, giant_span=args.giant_span, repeats=args.repeats,
                command=" ".join([Path(sys.executable).name, "bench/bench_core.py"] + sys.argv[1:]),
                median_seconds=med, median_peak_rss_mb=rss, median_ratio_to_gemm=ratios,
                result={k: v for k, v in rounds[-1].get("dedup", {}).items() if k in ("groups", "retained", "largest_group", "pairs")},
                rounds=rounds)
    outdir = HERE / "results"
    outdir.mkdir(exist_ok=True)
    (outdir / f"core-{args.n}-span{args.giant_span}.json").write_text(json.dumps(info, indent=1))
    print(f"\n{args.n:,} x 512, t={args.threshold}, giant span {args.giant_span} — {info['machine']}, {info['date']}, "
          f"median of {args.repeats}")
    print("| case | median s | x bare GEMM | peak RSS MB |\n|---|---|---|---|")
    for c in cases:
        print(f"| {c} | {med[c]:.2f} | {ratios.get(c, float('nan')):.2f} | {rss[c]:.0f} |")
    if "sweep/dedup" in ratios:
        print(f"\nsweep (4 thresholds) / dedup: {ratios['sweep/dedup']:.2f}")
    print(f"result: {info['result']}")


if __name__ == "__main__":
    main()
