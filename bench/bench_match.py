"""match speed: Q queries against an N x d catalog vs the bare float32 GEMM of the same shapes.

The catalog is random unit vectors with planted near-duplicates of the queries (half the
queries have copies in the catalog at cosine ~0.99), so the scan sees real hits. Each round runs,
side by side:

* ``bare_blocks``: the bare float32 GEMM as one multi-threaded numpy call per 2,048-query x
  8,192-column block into one buffer (thrown away) -- the plain way to write the product;
* ``bare_tiles``: the same product as the match computes it (T threads, each a single-threaded
  GEMM per query block x catalog tile), without the scan;
* ``match``: the full exact match (GEMM + the fused best-match / hits >= t scan + ranking);
* ``ann`` (with ``--ann``): the ANN match, with its recall against exact on a query sample.

The ratio is match / the faster bare variant of the round. Wall and CPU seconds are both
recorded: on a loaded machine CPU seconds (``time.process_time``) are the steadier measure.

    python bench/bench_match.py --queries 10000 --n 1000000 --rounds 3 [--ann]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import neardup  # noqa: F401  (first: it sets OPENBLAS_THREAD_TIMEOUT before numpy loads, as the CLI does)
import numpy as np


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def bare(Q: np.ndarray, X: np.ndarray, query_block: int, col_chunk: int) -> None:
    buf = np.empty(min(query_block, len(Q)) * col_chunk, np.float32)
    for c0 in range(0, len(X), col_chunk):
        Xc = np.ascontiguousarray(X[c0:c0 + col_chunk])
        for a in range(0, len(Q), query_block):
            b = min(len(Q), a + query_block)
            np.matmul(Q[a:b], Xc.T, out=buf[: (b - a) * len(Xc)].reshape(b - a, len(Xc)))


def bare_tiles(Q: np.ndarray, X: np.ndarray, query_block: int, col_chunk: int) -> None:
    """The match's own GEMM schedule (threads x single-threaded tiles), without the scan."""
    import itertools
    from concurrent.futures import ThreadPoolExecutor

    import numba

    from neardup.similarity.blas import single_threaded_blas

    T = numba.get_num_threads()
    counter = itertools.count()

    def work() -> None:
        buf = np.empty(query_block * col_chunk, np.float32)
        while True:
            c0 = next(counter) * col_chunk
            if c0 >= len(X):
                return
            Xt = np.ascontiguousarray(X[c0:c0 + col_chunk]).T
            for a in range(0, len(Q), query_block):
                b = min(len(Q), a + query_block)
                np.matmul(Q[a:b], Xt, out=buf[: (b - a) * Xt.shape[1]].reshape(b - a, Xt.shape[1]))

    with single_threaded_blas(), ThreadPoolExecutor(T) as ex:
        for f in [ex.submit(work) for _ in range(T)]:
            f.result()


def all_query_recall(am, exact_arrays) -> dict:
    """The ANN result against the exact one over every query (the bench has both)."""
    q, c, _, _, best_v = exact_arrays
    width = len(am.best_c) and int(max(c.max(initial=0), am.c.max(initial=0))) + 1
    found = np.isin(q * width + c, am.q * width + am.c)
    has = np.bincount(q, minlength=len(best_v)) > 0
    got = np.bincount(q[found], minlength=len(best_v)) > 0
    return dict(hit_recall=float(found.mean()) if len(found) else 1.0, pairs=int(len(found)),
                query_recall=float(got[has].mean()) if has.any() else 1.0,
                best_found=float((am.best_v >= best_v).mean()))


def timed(fn, *a, **k):
    """(result, wall seconds, CPU seconds of the process)."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(*a, **k)
    return out, time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=10000)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threshold", type=float, default=0.98)
    ap.add_argument("--out", default=None)
    ap.add_argument("--ann", action="store_true", help="also time the ANN match and report its recall")
    args = ap.parse_args()
    from neardup.match import match_matrix, rank_matches
    from neardup.similarity.incremental import RowSource

    rng = np.random.default_rng(0)
    X = np.empty((args.n, args.dim), np.float32)
    for a in range(0, args.n, 1 << 17):
        b = min(args.n, a + (1 << 17))
        X[a:b] = unit(rng.standard_normal((b - a, args.dim), dtype=np.float32))
    Q = unit(rng.standard_normal((args.queries, args.dim), dtype=np.float32))
    half = args.queries // 2
    for k in range(3):  # three planted copies of each of the first half of the queries
        pos = rng.choice(args.n, half, replace=False)
        X[pos] = unit(Q[:half] + 0.1 * rng.standard_normal((half, args.dim), dtype=np.float32) / np.sqrt(args.dim) * 1.4)
    try:
        from neardup.similarity.canonical import canonical_vectors

        X, Q = canonical_vectors(X), canonical_vectors(Q)
    except ImportError:
        pass
    cids = np.asarray([f"c{i:07d}" for i in range(args.n)], dtype=object)
    qids = np.asarray([f"q{i:05d}" for i in range(args.queries)], dtype=object)
    keys = np.arange(args.n, dtype=np.int64)
    # warm-up (numba compile / cache load, page in)
    match_matrix(Q[:64], RowSource(X[:20000]), keys[:20000], args.threshold)
    rounds = []
    load0 = os.getloadavg()[0]
    exact = None
    for r in range(args.rounds):
        row: dict = {"load_1min_before": round(os.getloadavg()[0], 2)}
        _, row["bare_blocks_s"], row["bare_blocks_cpu_s"] = timed(bare, Q, X, 2048, 8192)
        _, row["bare_tiles_s"], row["bare_tiles_cpu_s"] = timed(bare_tiles, Q, X, 1024, 2048)

        def run_match():
            arrays = match_matrix(Q, RowSource(X), keys, args.threshold)
            return arrays, rank_matches(qids, cids, *arrays)

        (arrays, table), row["match_s"], row["match_cpu_s"] = timed(run_match)
        if exact is None:
            exact = (arrays, table)
        elif not table.equals(exact[1]):
            raise SystemExit("match results differ between rounds")
        bare_s = min(row["bare_blocks_s"], row["bare_tiles_s"])
        bare_cpu = min(row["bare_blocks_cpu_s"], row["bare_tiles_cpu_s"])
        row.update(ratio=row["match_s"] / bare_s, ratio_cpu=row["match_cpu_s"] / bare_cpu,
                   rows=table.num_rows, with_match=int(len(np.unique(arrays[0]))))
        if args.ann:
            from neardup.similarity.ann_match import ann_match_matrix

            am, row["ann_s"], row["ann_cpu_s"] = timed(ann_match_matrix, Q, RowSource(X), keys, args.threshold)
            row.update(ann_ratio=row["ann_s"] / bare_s, ann_vs_match=row["ann_s"] / row["match_s"],
                       ann_printed_recall={k: v for k, v in am.recall.items() if k != "method"},
                       ann_recall_all_queries=all_query_recall(am, exact[0]), ann_meta=am.meta)
        row = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
        rounds.append(row)
        print(json.dumps(row), flush=True)
    med = lambda k: statistics.median(x[k] for x in rounds)  # noqa: E731
    res = dict(queries=args.queries, n=args.n, dim=args.dim, threshold=args.threshold, rounds=rounds,
               median_bare_blocks_s=med("bare_blocks_s"), median_bare_tiles_s=med("bare_tiles_s"),
               median_match_s=med("match_s"), median_ratio=med("ratio"), median_ratio_cpu=med("ratio_cpu"),
               cpus=os.cpu_count(), threads=__import__("numba").get_num_threads(), load_1min_start=load0,
               load_1min_end=os.getloadavg()[0], date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    if args.ann:
        res.update(median_ann_s=med("ann_s"), median_ann_ratio=med("ann_ratio"), median_ann_vs_match=med("ann_vs_match"))
    print(json.dumps(res, indent=1))
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / f"match-{args.queries}x{args.n}.json"
    out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
