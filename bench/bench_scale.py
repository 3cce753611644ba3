"""Scale benchmarks for issue 6: ANN at 1M, ANN vs exact at a sample size, Ray tiles vs exact.

    python bench/bench_scale.py gen   --n 1000000 --out /tmp/neardup_seed1m.npy
    python bench/bench_scale.py ann   --vectors /tmp/neardup_seed1m.npy --floor 0.98 [--subset 200000]
    python bench/bench_scale.py exact --vectors /tmp/neardup_seed1m.npy --floor 0.98 --subset 200000
    python bench/bench_scale.py compare --a ann.npz --b exact.npz --floor 0.98
    python bench/bench_scale.py ray   --vectors /tmp/neardup_seed1m.npy --floor 0.98 --subset 100000
    python bench/bench_scale.py gen   --n 10000000 --from /tmp/neardup_seed1m.npy --out /tmp/v10m.npy --ids-out /tmp/v10m.txt
    python bench/bench_scale.py import --vectors /tmp/neardup_seed1m.npy --ids ids.txt \
        --src before=/tmp/main-src --src after=src --runs 2 [--reimport] [--workdir /tmp/x]

Each command prints one JSON line (wall seconds, peak RSS from getrusage, and what it measured)
and can save the forest (--save) so the exact and ANN runs are compared without recomputing.
Run each under `/usr/bin/time -v` too if you want the kernel's view of peak RSS.

``import`` measures the whole ``neardup import-embeddings`` process, not a function: each run is a
fresh child process (``python -m neardup`` with PYTHONPATH set to one source tree) importing into a
fresh catalog; its peak RSS, user and system CPU come from ``os.wait4`` (the kernel's accounting of
that child alone). Source trees named with ``--src`` alternate run by run (A B A B), so a before/after
ratio is measured side by side under the same load. ``--reimport`` imports once unmeasured and then
measures a second import of the same file (every row an update: the old version is copied over).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def gemm_gflops(reps: int = 3) -> float:
    """Median GFLOP/s of a 2048x512 @ 512x8192 float32 product now (the machine is shared: this
    is the yardstick that makes wall times from different loads comparable)."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((2048, 512), dtype=np.float32)
    B = rng.standard_normal((512, 8192), dtype=np.float32)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        A @ B
        ts.append(time.perf_counter() - t)
    return round(2 * 2048 * 512 * 8192 / float(np.median(ts)) / 1e9, 1)


def ari(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings (pair-counting, no sklearn)."""
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    n = len(a)
    pairs = lambda c: float((c.astype(np.float64) * (c - 1) / 2).sum())  # noqa: E731
    sij = pairs(np.unique(a.astype(np.int64) * (int(b.max()) + 1) + b, return_counts=True)[1])
    sa, sb = pairs(np.bincount(a)), pairs(np.bincount(b))
    tot = n * (n - 1) / 2
    exp = sa * sb / tot
    mx = (sa + sb) / 2
    return 1.0 if mx == exp else (sij - exp) / (mx - exp)


def _loadavg() -> list[str]:
    return open("/proc/loadavg").read().split()[:3]


def import_run(src: str, vectors: str, ids: str | None, db: str) -> dict:
    """One ``neardup import-embeddings`` child process: wall seconds, peak RSS, CPU (os.wait4)."""
    import os
    import subprocess

    cmd = [sys.executable, "-m", "neardup", "import-embeddings", vectors, "--db", db]
    if ids:
        cmd += ["--ids", ids]
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
    load0 = _loadavg()
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{cmd} failed ({proc.returncode}): {err.strip()}")
    return {"wall_s": round(wall, 2), "peak_rss_gb": round(ru.ru_maxrss * 1024 / 1e9, 3),
            "user_s": round(ru.ru_utime, 1), "sys_s": round(ru.ru_stime, 1), "loadavg_before": load0,
            "loadavg_after": _loadavg(), "stdout": out.strip()}


def import_bench(args: argparse.Namespace) -> dict:
    """Peak RSS and wall time of whole import processes, source trees alternating (see the docstring)."""
    import os
    import shutil

    srcs = [tuple(s.split("=", 1)) for s in (args.src or ["after=src"])]
    X = np.load(args.vectors, mmap_mode="r")
    out: dict = {"cmd": "import", "argv": sys.argv[1:], "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                 "vectors": args.vectors, "shape": list(X.shape), "dtype": str(X.dtype),
                 "vectors_gb": round(X.nbytes / 1e9, 3), "reimport": args.reimport, "runs": {n: [] for n, _ in srcs}}
    del X
    os.makedirs(args.workdir, exist_ok=True)
    for r in range(args.runs):
        for name, src in srcs:
            db = os.path.join(args.workdir, f"{name}-{r}.duckdb")
            for f in (db, db + ".wal", db + ".d"):
                shutil.rmtree(f, ignore_errors=True) if os.path.isdir(f) else (os.path.exists(f) and os.remove(f))
            if args.reimport:
                import_run(src, args.vectors, args.ids, db)
            res = import_run(src, args.vectors, args.ids, db)
            res["run"] = r
            out["runs"][name].append(res)
            print(json.dumps({name: res}), file=sys.stderr, flush=True)
            shutil.rmtree(db + ".d", ignore_errors=True)
            for f in (db, db + ".wal"):
                if os.path.exists(f):
                    os.remove(f)
    out["median"] = {n: {k: float(np.median([x[k] for x in rs])) for k in ("wall_s", "peak_rss_gb", "user_s", "sys_s")}
                     for n, rs in out["runs"].items()}
    for n in out["median"]:
        out["median"][n]["peak_rss_over_vectors"] = round(out["median"][n]["peak_rss_gb"] / out["vectors_gb"], 3)
    return out


def load(path: str, subset: int | None, seed: int = 0, head: int | None = None) -> np.ndarray:
    X = np.load(path, mmap_mode="r")
    if head:
        X = X[:head]  # still a memory map: the first ``head`` rows
    if subset and subset < len(X):
        rows = np.sort(np.random.default_rng(seed).choice(len(X), subset, replace=False))
        return np.ascontiguousarray(X[rows])
    return X


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["gen", "ann", "exact", "compare", "ray", "tile", "recall", "import"])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--out", default="/tmp/neardup_seed1m.npy")
    p.add_argument("--vectors", default="/tmp/neardup_seed1m.npy")
    p.add_argument("--subset", type=int, default=None)
    p.add_argument("--head", type=int, default=None, help="ann/exact: only the first HEAD rows (e.g. the first copies of a gen --from file)")
    p.add_argument("--floor", type=float, default=0.98)
    p.add_argument("--save", default=None)
    p.add_argument("--a")
    p.add_argument("--b")
    p.add_argument("--thresholds", default="0.98,0.99")
    p.add_argument("--nprobe", type=int, default=2, help="ann: probes to start with (doubled while recall < --recall-goal)")
    p.add_argument("--recall-goal", type=float, default=0.99)
    p.add_argument("--target", type=int, default=1000)
    p.add_argument("--split-factor", type=float, default=2.0)
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--exact-seconds", type=float, default=None)
    p.add_argument("--ids", default=None, help="import: the ids file of --vectors (.npy)")
    p.add_argument("--src", action="append", default=None, help="import: NAME=PATH of a source tree (repeat)")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--reimport", action="store_true")
    p.add_argument("--workdir", default="/tmp/neardup_import_bench")
    p.add_argument("--from", dest="from_", default=None,
                   help="gen: build --n rows from copies of this .npy (each copy's coordinates permuted and "
                        "sign-flipped, so no two rows are equal), written in chunks: no n x d array in memory")
    p.add_argument("--ids-out", default=None, help="gen: also write ids, one per line")
    args = p.parse_args(argv)
    if args.cmd == "import":
        print(json.dumps(import_bench(args), default=str), flush=True)
        return
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if done >= total or done / max(total, 1) - last[0] >= 0.05:
            last[0] = done / max(total, 1)
            logging.info("progress %.1f%%", 100 * done / max(total, 1))

    out: dict = {"cmd": args.cmd, "argv": sys.argv[1:], "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    out["gemm_gflops_before"] = gemm_gflops()
    out["loadavg_before"] = open("/proc/loadavg").read().split()[:3]
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if args.cmd == "gen" and args.from_:
        from neardup.npyfile import NpyRowReader, NpyRowWriter, npy_layout

        lay = npy_layout(args.from_)
        m, d = lay.shape
        rng = np.random.default_rng(2)
        w = NpyRowWriter(args.out, (args.n, d), np.float32)
        ids = open(args.ids_out, "w") if args.ids_out else None
        with NpyRowReader(lay) as r:
            for c in range(-(-args.n // m)):
                perm, sign = rng.permutation(d), rng.choice(np.float32([-1, 1]), d)
                for s0, block in r.chunks(65536, 0, min(m, args.n - c * m)):
                    w.write(c * m + s0, block[:, perm] * sign)
                    if ids:
                        ids.write("".join(f"c{c}-{k}\n" for k in range(s0, s0 + len(block))))
        w.finish()
        if ids:
            ids.close()
    elif args.cmd == "gen":
        from neardup.synthetic import seed_shaped

        c = seed_shaped(args.n, 512, seed=1)
        np.save(args.out, c.vectors)
    elif args.cmd in ("ann", "exact"):
        X = load(args.vectors, args.subset, head=args.head)
        out["n"] = int(len(X))
        t0 = time.perf_counter()
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        if args.cmd == "ann":
            from neardup.similarity.ann import ann_forest

            f = ann_forest(X, args.floor, nprobe=args.nprobe, target=args.target, split_factor=args.split_factor,
                           recall_goal=args.recall_goal, progress=progress)
        else:
            from neardup.similarity.exact import exact_forest

            f = exact_forest(X, args.floor, progress=progress)
        out["meta"] = f.meta
        out["forest_edges"] = int(len(f.src))
        out["sweep"] = f.sweep([t for t in map(float, args.thresholds.split(",")) if t >= args.floor])
        if args.save:
            f.save(args.save)
    elif args.cmd == "compare":
        from neardup.similarity.forest import SimilarityForest

        fa, fb = SimilarityForest.load(args.a), SimilarityForest.load(args.b)
        out["ari"] = {}
        for t in map(float, args.thresholds.split(",")):
            la, lb = fa.components(t), fb.components(t)
            out["ari"][t] = {"ari": ari(la, lb), "groups_a": int(len(np.unique(la))),
                             "groups_b": int(len(np.unique(lb))), "identical": bool(
                                 len(np.unique(la)) == len(np.unique(lb)) == len(np.unique(la * (lb.max() + 1) + lb)))}
            out["ari"][t]["pairs_a"] = fa.pair_count(t)
            out["ari"][t]["pairs_b"] = fb.pair_count(t)
    elif args.cmd == "recall":
        # an independent recall check of a saved forest: a fresh sample (seed 12345) of rows
        from neardup.similarity.ann import estimate_recall
        from neardup.similarity.forest import SimilarityForest

        X = load(args.vectors, args.subset)
        f = SimilarityForest.load(args.a)
        rec, est = estimate_recall(X, f, sample=2000, seed=12345,
                                   thresholds=tuple(map(float, args.thresholds.split(","))))
        out["recall"] = rec
    elif args.cmd == "tile":
        # per-tile throughput of the Ray tile kernel, one thread (what one Ray CPU does)
        import numba

        from neardup.distributed.tiles import tile_forest

        numba.set_num_threads(1)
        X = np.load(args.vectors, mmap_mode="r")
        n = len(X)
        rng = np.random.default_rng(0)
        tile_forest(X, args.floor, (0, 256), (0, 1024))  # compile / warm
        rows = []
        for k in range(5):
            a = int(rng.integers(0, n // 4096 - 8)) * 4096
            c = (a // 16384 + 1 + k) * 16384
            c0 = time.process_time()
            w0 = time.perf_counter()
            s, d, w, h = tile_forest(X, args.floor, (a, a + 4096), (c, c + 16384))
            rows.append({"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - w0,
                         "pairs_ge_floor": int(h.sum()), "edges_out": int(len(s))})
        out["tiles"] = rows
        out["tile_pairs"] = 4096 * 16384
        med = float(np.median([r["cpu_s"] for r in rows]))
        out["median_cpu_s_per_tile"] = med
        out["pairs_per_cpu_s"] = 4096 * 16384 / med
    elif args.cmd == "ray":
        import os

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        import ray

        from neardup.distributed import ray_forest
        from neardup.similarity.exact import exact_forest

        X = load(args.vectors, args.subset)
        out["n"] = int(len(X))
        t = time.perf_counter()
        ray.init(num_cpus=args.num_cpus, include_dashboard=False)
        out["ray_init_s"] = time.perf_counter() - t
        t = time.perf_counter()
        fr = ray_forest(X, args.floor)
        out["ray_s"] = time.perf_counter() - t
        out["ray_meta"] = fr.meta
        ray.shutdown()
        if args.b:  # a saved exact forest of the same vectors (bench_scale.py exact --save)
            from neardup.similarity.forest import SimilarityForest

            fe = SimilarityForest.load(args.b)
            out["exact_s"] = float(args.exact_seconds) if args.exact_seconds else None
        else:
            t = time.perf_counter()
            fe = exact_forest(X, args.floor)
            out["exact_s"] = time.perf_counter() - t
        out["identical"] = {}
        for th in map(float, args.thresholds.split(",")):
            if th >= args.floor:
                out["identical"][th] = bool(np.array_equal(fr.components(th), fe.components(th)))
        out["hist_identical"] = bool(np.array_equal(fr.hist, fe.hist))
        out["overhead"] = out["ray_s"] / out["exact_s"] if out["exact_s"] else None
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_s"] = round(ru.ru_utime + ru.ru_stime, 1)
    out["cpu_s_pass"] = round(ru.ru_utime + ru.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 1)  # the timed pass only
    out["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    out["gemm_gflops_after"] = gemm_gflops()
    out["loadavg_after"] = open("/proc/loadavg").read().split()[:3]
    out["peak_rss_gb"] = round(peak_rss_gb(), 3)
    print(json.dumps(out, default=str), flush=True)


if __name__ == "__main__":
    main()
