"""Where does the ANN pass lose a duplicate? (issue 14, session 7)

    python bench/ann_misses.py truth --vectors c1m.npy --out truth.npz [--sample 20000 --floor 0.98]
    python bench/ann_misses.py eval  --vectors c1m.npy --truth truth.npz [--nprobe 2] [--diag]

``truth``: a random sample of rows (seed 12345, not the pass's own recall sample) and each one's
exact neighbours >= floor, by float32 GEMM against all rows (exact on canonical vectors). Rows
with more than 2,000 neighbours (the giant chained group) keep a random 2,000 of them.

``eval``: runs the pass's partition (:func:`two_level_partition`) and tiles
(``_partition_forest``) and prints one JSON line: the share of sampled rows with a duplicate
whose every (kept) neighbour is in their ANN group, split into small (<= 2,000 neighbours) and
giant rows, the pairs the tiles compare (sum of members x tile nodes) and the seconds.
``--diag`` adds one line per lost neighbour (up to 2 per row): was the pair compared at all (one's
own partition among the other's probes), was either end's partition a piece of a cut list, the
rank of the neighbour's partition among all centroids by similarity to the row, and the row's
similarities to its own and probed centroids.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _load() -> list[str]:
    return open("/proc/loadavg").read().split()[:3]


def truth(args: argparse.Namespace) -> None:
    from neardup.similarity.forest import ceil_f32
    from neardup.similarity.ortgemm import gemm_nt

    X = np.load(args.vectors, mmap_mode="r")
    n, ns, cap = len(X), args.sample, 2000
    rng = np.random.default_rng(12345)
    rows = np.sort(rng.choice(n, ns, replace=False))
    Xs = np.ascontiguousarray(X[rows], dtype=np.float32)
    f32 = ceil_f32(args.floor)
    cnt = np.zeros(ns, np.int64)
    lists: list[list[np.ndarray]] = [[] for _ in range(ns)]
    kept = np.zeros(ns, np.int64)
    t = time.perf_counter()
    for a in range(0, n, 32768):
        Xc = np.ascontiguousarray(X[a:a + 32768], dtype=np.float32)
        for r0 in range(0, ns, 5000):
            S = gemm_nt(Xs[r0:r0 + 5000], Xc, 2)
            ii, jj = np.nonzero(S >= f32)
            jj = jj + a
            keep = rows[r0 + ii] != jj
            ii, jj = ii[keep] + r0, jj[keep]
            np.add.at(cnt, ii, 1)
            o = np.argsort(ii, kind="stable")
            ii, jj = ii[o], jj[o]
            st = np.searchsorted(ii, np.arange(r0, min(ns, r0 + 5000) + 1))
            for k in range(r0, min(ns, r0 + 5000)):
                s_, e_ = st[k - r0], st[k - r0 + 1]
                if e_ > s_ and kept[k] < 4 * cap:
                    lists[k].append(jj[s_:e_].astype(np.int32))
                    kept[k] += e_ - s_
    ptr, nbr = [0], []
    for k in range(ns):
        v = np.concatenate(lists[k]) if lists[k] else np.zeros(0, np.int32)
        if len(v) > cap:
            v = np.sort(rng.choice(v, cap, replace=False))
        nbr.append(v)
        ptr.append(ptr[-1] + len(v))
    np.savez(args.out, rows=rows, cnt=cnt, ptr=np.array(ptr), nbr=np.concatenate(nbr), floor=args.floor)
    print(json.dumps({"rows": ns, "rows_with_pairs": int((cnt > 0).sum()), "giant_rows": int((cnt > cap).sum()),
                      "seconds": round(time.perf_counter() - t, 1)}))


def evaluate(args: argparse.Namespace) -> None:
    from neardup.similarity import ann
    from neardup.similarity.forest import SimilarityForest

    X = np.load(args.vectors, mmap_mode="r")
    n = len(X)
    T = np.load(args.truth)
    rows, cnt, ptr, nbr, floor = T["rows"], T["cnt"], T["ptr"], T["nbr"], float(T["floor"]) if "floor" in T else 0.98
    cut: dict = {}
    split = getattr(ann, "_split", None)

    def spy(X_, C_, probes_, big, *a):
        cut["big"], cut["P0"] = big.copy(), len(C_)
        return split(X_, C_, probes_, big, *a)

    if split is not None:   # (absent before issue 14's fix: the tool also runs on older trees)
        ann._split = spy
    load0 = _load()
    t0 = time.perf_counter()
    C, probes = ann.two_level_partition(X, nprobe=args.nprobe)
    t1 = time.perf_counter()
    if split is not None:
        ann._split = split
    P = int(probes.max()) + 1
    own = np.bincount(probes[:, 0], minlength=P)
    tot = np.bincount(probes.ravel(), minlength=P)
    s, d, w, _ = ann._partition_forest(X, probes, floor, None)
    t2 = time.perf_counter()
    lab = SimilarityForest.from_edges(n, s, d, w, floor).components(floor)
    has = cnt > 0
    inc = np.zeros(len(rows), bool)
    for k in np.flatnonzero(has):
        v = nbr[ptr[k]:ptr[k + 1]]
        inc[k] = bool(np.any(lab[v] != lab[rows[k]]))
    small = has & (cnt <= 2000)
    print(json.dumps({"nprobe": args.nprobe, "partitions": P, "largest": int(own.max()), "pairs_in_tiles": int((own * tot).sum()),
                      "partition_s": round(t1 - t0, 1), "tiles_s": round(t2 - t1, 1), "rows_with_pairs": int(has.sum()),
                      "incomplete": int(inc.sum()), "rows_complete": round(1 - inc.sum() / max(1, has.sum()), 5),
                      "small_rows": int(small.sum()), "small_incomplete": int((inc & small).sum()),
                      "giant_incomplete": int((inc & ~small & has).sum()), "load": load0 + _load()}), flush=True)
    if not args.diag:
        return
    piece = np.zeros(len(C), bool)
    if cut:
        piece[cut["big"]] = True
        piece[cut["P0"]:] = True
    for k in np.flatnonzero(inc):
        x = int(rows[k])
        v = nbr[ptr[k]:ptr[k + 1]]
        sx = np.asarray(X[x], np.float32) @ C.T
        for y in v[lab[v] != lab[x]][:2].tolist():
            print(json.dumps({"x": x, "y": y, "neighbours": int(cnt[k]),
                              "sim": round(float(np.asarray(X[x], np.float32) @ np.asarray(X[y], np.float32)), 4),
                              "compared": bool(probes[y, 0] in probes[x] or probes[x, 0] in probes[y]),
                              "piece_x": bool(piece[probes[x, 0]]), "piece_y": bool(piece[probes[y, 0]]),
                              "rank_y": int((sx > sx[probes[y, 0]]).sum()),
                              "x_probed_c": [round(float(sx[q]), 4) for q in probes[x]], "x_c_y": round(float(sx[probes[y, 0]]), 4)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("truth")
    a.add_argument("--vectors", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--sample", type=int, default=20000)
    a.add_argument("--floor", type=float, default=0.98)
    b = sub.add_parser("eval")
    b.add_argument("--vectors", required=True)
    b.add_argument("--truth", required=True)
    b.add_argument("--nprobe", type=int, default=2)
    b.add_argument("--diag", action="store_true")
    args = ap.parse_args()
    (truth if args.cmd == "truth" else evaluate)(args)


if __name__ == "__main__":
    main()
