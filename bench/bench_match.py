"""match speed: Q queries against an N x d catalog vs the bare float32 GEMM of the same shapes.

The catalog is random unit vectors with planted near-duplicates of the queries (half the
queries have copies in the catalog at cosine ~0.99), so the scan sees real hits. Rounds
alternate bare GEMM (the same blocks: catalog chunks x query blocks, into one buffer, thrown
away) and the full match (GEMM + scan for the best match and every hit >= t + ranking).

    python bench/bench_match.py --queries 10000 --n 1000000 --rounds 3
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=10000)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threshold", type=float, default=0.98)
    ap.add_argument("--out", default=None)
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
    for r in range(args.rounds):
        t0 = time.perf_counter()
        bare(Q, X, 2048, 8192)
        t_bare = time.perf_counter() - t0
        t0 = time.perf_counter()
        q, c, s, bc, bv = match_matrix(Q, RowSource(X), keys, args.threshold)
        table = rank_matches(qids, cids, q, c, s, bc, bv)
        t_match = time.perf_counter() - t0
        rounds.append(dict(bare_s=round(t_bare, 3), match_s=round(t_match, 3), ratio=round(t_match / t_bare, 3),
                           rows=table.num_rows, with_match=int(len(np.unique(q)))))
        print(json.dumps(rounds[-1]), flush=True)
    res = dict(queries=args.queries, n=args.n, dim=args.dim, threshold=args.threshold, rounds=rounds,
               median_bare_s=statistics.median(x["bare_s"] for x in rounds),
               median_match_s=statistics.median(x["match_s"] for x in rounds),
               median_ratio=statistics.median(x["ratio"] for x in rounds), cpus=os.cpu_count(),
               load_1min=os.getloadavg()[0])
    print(json.dumps(res, indent=1))
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / f"match-{args.queries}x{args.n}.json"
    out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
