"""Benchmark: k-means k=25 on 1M x 512 vs one exact 100k similarity pass; sweep/pairs on one cluster.

    .venv/bin/python bench/bench_cluster.py                # everything (~5-10 min on 2 cores)
    .venv/bin/python bench/bench_cluster.py --skip-exact   # without the 100k exact pass
    .venv/bin/python bench/bench_cluster.py --n 200000     # smaller k-means input

Prints one JSON line per measurement and a summary; the results are recorded by hand in
docs/benchmarks-clusters.md. Medians of --repeat runs; the machine is shared, so compare
numbers from one invocation only.

The 1M vectors come from a fast clustered generator (not ``seed_shaped``, whose float64
construction of 1M x 512 needs ~15 GB): 2,000 "views" with Zipf-like sizes inside 25 scenes,
jittered, L2-normalised, built in float32 chunks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def clustered_vectors(n: int, dim: int = 512, *, scenes: int = 25, views: int = 2000, seed: int = 0,
                      chunk: int = 1 << 16) -> np.ndarray:
    """n unit-norm float32 vectors: scene direction + view direction + noise (CLIP-like cosine ~0.7 in a scene)."""
    rng = np.random.default_rng(seed)
    scene_dir = rng.standard_normal((scenes, dim)).astype(np.float32)
    scene_dir /= np.linalg.norm(scene_dir, axis=1, keepdims=True)
    view_dir = rng.standard_normal((views, dim)).astype(np.float32)
    view_dir /= np.linalg.norm(view_dir, axis=1, keepdims=True)
    view_scene = rng.integers(0, scenes, views)
    p = 1.0 / np.arange(1, views + 1) ** 0.8
    p /= p.sum()
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        v = rng.choice(views, m, p=p)
        x = 0.8 * scene_dir[view_scene[v]] + 0.5 * view_dir[v]
        x += rng.standard_normal((m, dim), dtype=np.float32) * np.float32(0.35 / np.sqrt(dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s:s + m] = x
    return out


def med(xs: list[float]) -> float:
    return float(statistics.median(xs))


def emit(**kw: object) -> None:
    kw["load1"] = round(os.getloadavg()[0], 1)  # other work on the machine skews timings: keep it on record
    print(json.dumps(kw), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=25)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--skip-kmeans", action="store_true", help="skip the k-means steps (1 and 2)")
    ap.add_argument("--skip-exact", action="store_true", help="skip the exact 100k similarity pass")
    ap.add_argument("--skip-catalog", action="store_true", help="skip `cluster` through a 1M catalog")
    ap.add_argument("--full-train", action="store_true",
                    help="also train k-means on every vector once (quality/time of the sampled default vs all)")
    ap.add_argument("--cluster-n", type=int, default=50_000, help="collection size for the sweep --cluster timing")
    args = ap.parse_args()

    import faiss
    import numba

    from neardup.catalog import Catalog
    from neardup.cluster import cluster, cluster_ids, kmeans
    from neardup.ingest import import_embeddings
    from neardup.pairs import sample_pairs
    from neardup.sweep import sweep
    from neardup.synthetic import seed_shaped

    emit(machine=platform.machine(), cpus=os.cpu_count(), python=platform.python_version(), faiss=faiss.__version__,
         numba_threads=numba.get_num_threads(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    summary: dict[str, object] = {}

    if not args.skip_kmeans:
        # 1. k-means on n x 512 (in memory), medians of several runs, and determinism
        t = time.perf_counter()
        X = clustered_vectors(args.n)
        emit(step="generate", n=args.n, seconds=round(time.perf_counter() - t, 2))
        times, first, same = [], None, True
        for r in range(args.repeat):
            t = time.perf_counter()
            res = kmeans(X, args.k, seed=0)
            times.append(time.perf_counter() - t)
            if first is None:
                first = res.labels.copy()
            same = same and bool(np.array_equal(first, res.labels))
            emit(step="kmeans", run=r, seconds=round(times[-1], 3), mean_cosine=round(res.mean_cosine, 4),
                 identical_to_first=bool(np.array_equal(first, res.labels)), largest=int(res.sizes[0]),
                 smallest=int(res.sizes[-1]))
        summary["kmeans_median_s"] = round(med(times), 3)
        summary["kmeans_runs_s"] = [round(x, 3) for x in times]
        summary["kmeans_deterministic"] = same
        # assignment-only share: one block pass of X against 25 centroids
        C = res.centroids
        t = time.perf_counter()
        for s in range(0, len(X), 1 << 16):
            (X[s:s + (1 << 16)] @ C.T).argmax(axis=1)
        summary["assign_only_s"] = round(time.perf_counter() - t, 3)

        if args.full_train:
            t = time.perf_counter()
            full = kmeans(X, args.k, seed=0, max_points_per_centroid=-(-len(X) // args.k))
            summary["kmeans_all_points_s"] = round(time.perf_counter() - t, 2)
            summary["mean_cosine_sampled"] = round(res.mean_cosine, 5)
            summary["mean_cosine_all_points"] = round(full.mean_cosine, 5)
            emit(step="kmeans all points", seconds=summary["kmeans_all_points_s"], mean_cosine=round(full.mean_cosine, 5))

        # 2. the whole `cluster` command path on a catalog (memmapped vectors, DuckDB writes)
        if not args.skip_catalog:
            d = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
            try:
                cat = Catalog(d / "cat.duckdb")
                ids = np.asarray([f"img{i:07d}" for i in range(args.n)], dtype=object)
                t = time.perf_counter()
                import_embeddings(cat, X, ids)
                emit(step="import", seconds=round(time.perf_counter() - t, 2))
                ctimes = []
                for r in range(3):
                    t = time.perf_counter()
                    c = cluster(cat, args.k, seed=0)
                    ctimes.append(time.perf_counter() - t)
                    emit(step="cluster(catalog)", run=r, seconds=round(ctimes[-1], 3), kmeans_seconds=round(c.seconds, 3))
                summary["cluster_catalog_median_s"] = round(med(ctimes), 3)
                # sweep on 2,000 images of one cluster inside this 1M catalog (k=25 clusters of 1M are
                # ~40k each, so the first 2,000 ids of the smallest stand in for a 2k cluster; the
                # scoping cost, which grows with the collection, is the same)
                which = len(c.sizes) - 1
                ts = [0.99, 0.98, 0.97, 0.95]
                sub = cluster_ids(cat, which)[:2000]
                sweep(cat, ts, ids=sub)
                cold, warm = [], []
                for r in range(args.repeat):
                    shutil.rmtree(cat.sidecar / "forests", ignore_errors=True)
                    t = time.perf_counter()
                    sweep(cat, ts, ids=cluster_ids(cat, which)[:2000])
                    cold.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    sweep(cat, ts, ids=cluster_ids(cat, which)[:2000])
                    warm.append(time.perf_counter() - t)
                summary.update(sweep_1m_cluster_images=len(sub),
                               sweep_1m_cluster_cold_median_s=round(med(cold), 4),
                               sweep_1m_cluster_cached_median_s=round(med(warm), 4))
                emit(step="sweep 2k ids in 1M catalog", images=len(sub), cold=[round(x, 3) for x in cold],
                     cached=[round(x, 3) for x in warm])
                cat.close()
            finally:
                shutil.rmtree(d, ignore_errors=True)
        del X

    # 3. reference: one exact similarity pass over seed_shaped(100_000) (the core of an exact 100k dedup)
    if not args.skip_exact:
        from neardup.similarity.exact import exact_forest

        V = seed_shaped(100_000, seed=0).vectors
        exact_forest(V[:3000], 0.98)  # compile / warm the kernels
        t = time.perf_counter()
        exact_forest(V, 0.98)
        summary["exact_100k_s"] = round(time.perf_counter() - t, 2)
        emit(step="exact_forest 100k", seconds=summary["exact_100k_s"])
        del V

    # 4. sweep / pairs on one ~2,000-image cluster of a seed-shaped collection
    d = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    try:
        col = seed_shaped(args.cluster_n, seed=1)
        db = d / "cat.duckdb"
        cat = Catalog(db)
        import_embeddings(cat, col.vectors, col.ids, meta=col.meta_table())
        cl = cluster(cat, 25, seed=0)
        which = int(np.argmin(np.abs(np.asarray(cl.sizes) - 2000)))
        ts = [0.99, 0.98, 0.97, 0.95]
        size = len(cluster_ids(cat, which))
        sweep(cat, ts, ids=cluster_ids(cat, which))  # compile kernels once (numba cache)
        cold, warm, pr = [], [], []
        for r in range(args.repeat):
            shutil.rmtree(cat.sidecar / "forests", ignore_errors=True)
            t = time.perf_counter()
            rows = sweep(cat, ts, ids=cluster_ids(cat, which))
            cold.append(time.perf_counter() - t)
            t = time.perf_counter()
            sweep(cat, ts, ids=cluster_ids(cat, which))
            warm.append(time.perf_counter() - t)
            t = time.perf_counter()
            sample_pairs(cat, "0.97:0.98", 20, cluster=which)
            pr.append(time.perf_counter() - t)
        cat.close()
        summary.update(sweep_cluster=which, sweep_cluster_images=size, collection=args.cluster_n,
                       sweep_cluster_cold_median_s=round(med(cold), 4), sweep_cluster_cached_median_s=round(med(warm), 4),
                       pairs_cluster_median_s=round(med(pr), 4), sweep_rows=rows)
        # the CLI end to end (new process: Python start + imports + the same work)
        exe = str(Path(sys.executable).with_name("neardup"))
        cli = []
        for r in range(args.repeat):
            shutil.rmtree(Path(str(db) + ".d") / "forests", ignore_errors=True)
            t = time.perf_counter()
            subprocess.run([exe, "sweep", "--cluster", str(which), "--db", str(db)], check=True, capture_output=True)
            cli.append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run([exe, "--help"], check=True, capture_output=True)
        summary["cli_help_s"] = round(time.perf_counter() - t, 3)
        summary["cli_sweep_cluster_median_s"] = round(med(cli), 3)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    emit(summary=summary)


if __name__ == "__main__":
    main()
