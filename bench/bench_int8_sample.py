"""Issue 14 (compute), 1M x 512 exact: the int8 pass's cost measured on sampled row blocks, extrapolated.

A full 1M exact pass occupies both cores of the 2-core machine for ~15-40 min; this measures
the pass's own steps on ``--sample`` row blocks spread evenly over the (locality-ordered)
rows of ``neardup.synthetic.seed_shaped(n)`` -- each block against all its columns, as the pass
does it (ball test, int8 GEMM, tile test, exact tiles, histogram + forest scan) -- and scales
the per-block mean by the number of blocks. Set-up (canonical rounding, codes, locality
order, balls) is measured whole. Not measured: the forest merges and label refreshes between
blocks (~1% at 100k) and the CLI around the pass (reading vectors, grouping, writing).

    .venv/bin/python bench/bench_int8_sample.py --n 1000000 --sample 8

Writes bench/results/int8-sample-<n>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--sample", type=int, default=8)
    ap.add_argument("--floor", type=float, default=0.98)
    args = ap.parse_args()
    import numpy as np

    import neardup  # noqa: F401
    from neardup.similarity.canonical import canonical_vectors
    from neardup.similarity.exact import _threads, filter_levels, level_of_bin
    from neardup.similarity.forest import hist_bins
    from neardup.similarity.locality import locality_order, take_rows
    from neardup.similarity.prepass import Int8Blocks, scan_runs
    from neardup.similarity.quantized import LEVELS, Quantized, kernel_path
    from neardup.synthetic import seed_shaped

    path = kernel_path()
    n, floor, block_rows, col_chunk = args.n, args.floor, 2048, 8192
    t = time.perf_counter()
    X = seed_shaped(n, seed=0).vectors
    gen_s = time.perf_counter() - t
    load = [os.getloadavg()[0]]
    w0, c0_ = time.perf_counter(), time.process_time()
    X = canonical_vectors(X)
    Q = Quantized(X, LEVELS[path])
    order = locality_order(Q.u8, Q.scale)
    X = take_rows(np.asarray(X, np.float32), order)
    Q = Q.take(order)
    T = _threads()
    blocks = Int8Blocks(X, Q, floor, T, block_rows * col_chunk)
    setup = {"wall": time.perf_counter() - w0, "cpu": time.process_time() - c0_}
    levels = filter_levels(floor)
    lob = level_of_bin(floor, levels)
    flat = np.empty((len(levels), n), np.int32)
    flat[:] = np.arange(n, dtype=np.int32)
    uf = np.empty((T, len(levels), n), np.int32)
    hist = np.zeros((T, hist_bins(floor)), np.int64)
    cap = 8 * col_chunk + 4096
    out = (np.empty((T, cap), np.int64), np.empty((T, cap), np.int64), np.empty((T, cap), np.float32))
    starts = list(range(0, n, block_rows))
    pick = sorted({starts[int(k)] for k in np.linspace(0, len(starts) - 1, args.sample).round()})
    rows = []
    for a in pick:
        b = min(n, a + block_rows)
        uf[:] = flat[None]
        load.append(os.getloadavg()[0])
        w, c = time.perf_counter(), time.process_time()
        p0, i0, e0 = blocks.pairs_total, blocks.pairs_int8, blocks.pairs_exact
        kept = 0
        for c0 in range(a, n, col_chunk):
            E, runs = blocks.block(a, b, c0, min(n, c0 + col_chunk))
            kept += sum(len(k[0]) for k in scan_runs(E, runs, a, c0, floor, levels, lob, flat, uf, hist, out))
        rows.append({"row0": a, "pairs": blocks.pairs_total - p0, "int8_pairs": blocks.pairs_int8 - i0,
                     "exact_pairs": blocks.pairs_exact - e0, "wall": time.perf_counter() - w,
                     "cpu": time.process_time() - c, "kept_edges": kept})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    total_pairs = n * (n - 1) // 2
    sampled = sum(r["pairs"] for r in rows)
    scale = total_pairs / sampled   # pairs-weighted: blocks near the end hold fewer pairs
    est = {"wall": setup["wall"] + scale * sum(r["wall"] for r in rows),
           "cpu": setup["cpu"] + scale * sum(r["cpu"] for r in rows)}
    res = {"n": n, "floor": floor, "kernel": path, "sample_blocks": len(rows), "blocks": len(starts),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": f"{os.cpu_count()} cores",
           "generate_s": gen_s, "setup": setup, "rows": rows, "sampled_pair_share": sampled / total_pairs,
           "int8_fraction": sum(r["int8_pairs"] for r in rows) / sampled,
           "exact_fraction": sum(r["exact_pairs"] for r in rows) / sampled,
           "estimate_pass_s": est, "load_1min": load,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "command": " ".join(["python", "bench/bench_int8_sample.py"] + sys.argv[1:])}
    (HERE / "results" / f"int8-sample-{n}.json").write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
