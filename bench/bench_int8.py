"""Issue 14 (compute): `neardup dedup` with the int8 pre-pass against the float32 GEMM and the
lesson's naive process, side by side in one run.

Every case is a fresh process; rounds interleave the cases; each ratio is taken within a round,
then the median over rounds (the machine may be shared: ratios compare, seconds do not).

**100k x 512 seed-shaped, t = 0.98** (``neardup.synthetic.seed_shaped(100_000)``):

* ``gemm``   -- the bare float32 upper-triangle GEMM in neardup's blocks (bench_core's), timed
  around the GEMM only: the floor the float32 pass cannot go under;
* ``cli``    -- ``neardup dedup --threshold 0.98`` as a whole process (start-up, reading the
  vectors, the pass, grouping, writing the run) on a fresh copy of a prepared catalog, kernel
  chosen at run time;
* ``cli-float32`` -- the same with ``NEARDUP_KERNEL=float32`` (the float32 pass).

Targets: cli / gemm <= 0.6, peak RSS <= 1 GB, and identical results: the printed summary and
largest-group lines, and the cached forest's histogram, sorted weights and components equal
between ``cli`` and ``cli-float32``.

**12,217 x 512 seed twin, t = 0.98**: ``naive`` -- the lesson's numpy + scipy script as a
process (load the .npy, 1,000-row blocks, every pair >= t with ``np.nonzero``, scipy
``connected_components``); ``cli`` -- ``neardup dedup`` as a process. Target: cli / naive <= 0.5.

    .venv/bin/python bench/bench_int8.py --repeats 3 [--before /path/to/other/checkout/src]

Writes bench/results/int8-<n>.json and prints the Markdown tables for docs/benchmarks.md.
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
THRESHOLD = 0.98

NAIVE = r"""
import sys
import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

X = np.load(sys.argv[1])
t = float(sys.argv[2])
n = len(X)
ii, jj = [], []
for a in range(0, n, 1000):
    S = X[a:a + 1000] @ X.T
    r, c = np.nonzero(S >= t)
    keep = c > r + a
    ii.append((r[keep] + a).astype(np.int32))
    jj.append(c[keep].astype(np.int32))
i = np.concatenate(ii)
j = np.concatenate(jj)
g = sp.coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
_, labels = connected_components(g, directed=False)
sizes = np.bincount(labels)
print(f"groups {(sizes >= 2).sum()} pairs {len(i)} largest {sizes.max()}")
"""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def python() -> str:
    return sys.executable


BEFORE: Path | None = None  # --before: another checkout's src/, run as the case cli-before


def env_with_src(src: Path | None = None, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "NEARDUP_KERNEL"}
    env["PYTHONPATH"] = os.pathsep.join([str(src or ROOT / "src"), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def timed_process(args: list[str], env: dict, cwd: Path) -> dict:
    """Run a process; its wall time, peak RSS (its own, via wait4) and stdout."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        p = subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({p.returncode}):\n{stderr[-3000:]}")
    return {"seconds": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024,
            "load_1min": load, "stdout": stdout}


def prepare(n: int, work: Path) -> Path:
    """A catalog with the seed-shaped vectors and their score/brightness, and the vectors as .npy."""
    d = work / f"n{n}"
    if (d / "c.duckdb").exists():
        return d
    d.mkdir(parents=True, exist_ok=True)
    code = (
        "import sys, numpy as np\n"
        "from neardup import Catalog\n"
        "from neardup.ingest import import_embeddings\n"
        "from neardup.synthetic import seed_shaped\n"
        f"c = seed_shaped({n}, seed=0)\n"
        "np.save('vectors.npy', c.vectors)\n"
        "with Catalog('c.duckdb') as cat:\n"
        "    import_embeddings(cat, c.vectors, c.ids, meta=c.meta_table())\n"
    )
    subprocess.run([python(), "-c", code], env=env_with_src(), cwd=d, check=True)
    return d


def fresh_copy(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    shutil.copy2(src / "c.duckdb", dst / "c.duckdb")
    side = src / "c.duckdb.d"
    if side.exists():
        shutil.copytree(side / "embeddings", dst / "c.duckdb.d" / "embeddings")  # no cached forest
    return dst


def cli_dedup(data: Path, work: Path, kernel: str | None, src: Path | None = None) -> dict:
    cat = fresh_copy(data, work / "run")
    env = env_with_src(src, **({"NEARDUP_KERNEL": kernel} if kernel else {}))
    res = timed_process([str(Path(python()).with_name("neardup")), "dedup", "--threshold", str(THRESHOLD),
                         "--prefer", "score,brightness", "--db", "c.duckdb"], env, cat)
    lines = [ln.strip() for ln in res.pop("stdout").splitlines()]
    res["summary"] = next((ln for ln in lines if ln.startswith("images ")), "")
    res["groups_lines"] = [ln for ln in lines if ln.startswith("group ")]
    res["forest"] = forest_digest(cat)
    return res


def forest_digest(cat: Path) -> dict:
    """Histogram, sorted weights and components at the threshold of the cached forest (hashes)."""
    code = (
        "import glob, hashlib, json, sys\n"
        "import numpy as np\n"
        "from neardup.incremental import ForestState\n"
        "p = sorted(glob.glob('c.duckdb.d/forests/*.state.npz'))[0]\n"
        "f = ForestState.load(p).forest\n"
        "h = lambda a: hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]\n"
        f"print(json.dumps({{'hist': h(f.hist), 'weights': h(np.sort(f.weight)), 'labels': h(f.components({THRESHOLD})),"
        f" 'pairs': int(f.pair_count({THRESHOLD})), 'edges': len(f.weight)}}))\n"
    )
    r = subprocess.run([python(), "-c", code], env=env_with_src(), cwd=cat, capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def gemm(data: Path) -> dict:
    code = (
        "import json, resource, sys, time\n"
        "import neardup  # noqa: F401  (OpenBLAS spin setting before numpy, as the CLI)\n"
        "import numpy as np\n"
        f"sys.path.insert(0, {str(HERE)!r})\n"
        "from bench_core import bare_upper_triangle_gemm\n"
        "X = np.ascontiguousarray(np.load('vectors.npy'))\n"
        "bare_upper_triangle_gemm(X[:2048])\n"
        "c0 = time.process_time(); t0 = time.perf_counter(); bare_upper_triangle_gemm(X)\n"
        "dt = time.perf_counter() - t0; dc = time.process_time() - c0\n"
        "print(json.dumps({'seconds': dt, 'cpu_s': dc, 'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
    )
    load = os.getloadavg()[0]
    r = subprocess.run([python(), "-c", code], env=env_with_src(), cwd=data, capture_output=True, text=True, check=True)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["load_1min"] = load
    return out


def naive(data: Path) -> dict:
    res = timed_process([python(), "-c", NAIVE, "vectors.npy", str(THRESHOLD)], env_with_src(), data)
    res["result"] = res.pop("stdout").strip()
    return res


def median_ratio(rounds: list[dict], num: str, den: str) -> float:
    return statistics.median(r[num]["seconds"] / r[den]["seconds"] for r in rounds)


def section(name: str, n: int, cases: list[str], repeats: int, work: Path) -> dict:
    data = prepare(n, work)
    rounds = []
    for k in range(repeats):
        row = {}
        for case in cases:
            if case == "gemm":
                row[case] = gemm(data)
            elif case == "naive":
                row[case] = naive(data)
            elif case == "cli":
                row[case] = cli_dedup(data, work, None)
            elif case == "cli-float32":
                row[case] = cli_dedup(data, work, "float32")
            elif case == "cli-before":
                row[case] = cli_dedup(data, work, None, BEFORE)
            else:
                raise SystemExit(f"unknown case {case}")
        rounds.append(row)
        print(f"{name} round {k + 1}: " + ", ".join(
            f"{c} {row[c]['seconds']:.2f}s/{row[c]['cpu_s']:.1f}cpu/{row[c]['peak_rss_mb']:.0f}MB (load {row[c]['load_1min']:.1f})"
            for c in cases),
            file=sys.stderr, flush=True)
    med = {c: statistics.median(r[c]["seconds"] for r in rounds) for c in cases}
    med_cpu = {c: statistics.median(r[c]["cpu_s"] for r in rounds) for c in cases}
    rss = {c: max(r[c]["peak_rss_mb"] for r in rounds) for c in cases}
    base = "gemm" if "gemm" in cases else "naive"
    ratios = {c: median_ratio(rounds, c, base) for c in cases}
    cpu_ratios = {c: statistics.median(r[c]["cpu_s"] / r[base]["cpu_s"] for r in rounds) for c in cases}
    out = {"n": n, "threshold": THRESHOLD, "repeats": repeats, "median_seconds": med, "max_peak_rss_mb": rss,
           "median_cpu_s": med_cpu, "median_cpu_ratio": cpu_ratios,
           "median_ratio_to": base, "median_ratio": ratios,
           "load_1min": [r[c]["load_1min"] for r in rounds for c in cases], "rounds": rounds}
    if "cli" in cases and "cli-float32" in cases:
        same = all(r["cli"]["summary"] == r["cli-float32"]["summary"]
                   and r["cli"]["groups_lines"] == r["cli-float32"]["groups_lines"]
                   and r["cli"]["forest"] == r["cli-float32"]["forest"] for r in rounds)
        out["identical_results"] = same
        out["median_ratio"]["cli/cli-float32"] = median_ratio(rounds, "cli", "cli-float32")
    if "cli" in cases and "cli-before" in cases:
        out["identical_to_before"] = all(r["cli"]["summary"] == r["cli-before"]["summary"]
                                         and r["cli"]["groups_lines"] == r["cli-before"]["groups_lines"]
                                         and r["cli"]["forest"] == r["cli-before"]["forest"] for r in rounds)
        out["median_ratio"]["cli/cli-before"] = median_ratio(rounds, "cli", "cli-before")
    return out


def table(res: dict) -> str:
    base = res["median_ratio_to"]
    lines = [f"| case | median s | x {base} (same round, median) | CPU s | CPU x {base} | peak RSS MB |",
             "|---|---|---|---|---|---|"]
    for c, s in res["median_seconds"].items():
        lines.append(f"| {c} | {s:.2f} | {res['median_ratio'][c]:.2f} | {res['median_cpu_s'][c]:.1f} | "
                     f"{res['median_cpu_ratio'][c]:.2f} | {res['max_peak_rss_mb'][c]:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--big", type=int, default=100_000, help="rows of the large section (0: skip)")
    ap.add_argument("--seed-twin", type=int, default=12_217, help="rows of the seed twin section (0: skip)")
    ap.add_argument("--before", type=Path, help="another checkout's src/: adds the case cli-before (same CLI, that code)")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("NEARDUP_BENCH_CACHE", "/tmp")) / "neardup-bench-int8")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    global BEFORE
    BEFORE = args.before.resolve() if args.before else None
    sys.path.insert(0, str(ROOT / "src"))
    from neardup.cpu import planned_kernel_path

    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{os.cpu_count()} cores, {cpu_model()}", "kernel": planned_kernel_path(),
            "command": " ".join([Path(sys.executable).name, "bench/bench_int8.py"] + sys.argv[1:]),
            "load_1min_start": os.getloadavg()[0], "sections": {}}
    if args.seed_twin:
        info["sections"]["seed_twin"] = section("seed twin", args.seed_twin, ["naive", "cli"], args.repeats, args.work)
    if args.big:
        info["sections"]["big"] = section(f"{args.big:,}", args.big, ["gemm", "cli", "cli-float32"]
                                          + (["cli-before"] if BEFORE else []), args.repeats, args.work)
    info["load_1min_end"] = os.getloadavg()[0]
    out = HERE / "results" / f"int8-{args.big or args.seed_twin}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(info, indent=1))
    print(f"{info['machine']}, {info['date']}, kernel {info['kernel']}, load {info['load_1min_start']:.1f} -> "
          f"{info['load_1min_end']:.1f}; median of {args.repeats}; `{info['command']}`\n")
    for key, res in info["sections"].items():
        print(f"**{res['n']:,} x 512, t = {THRESHOLD}**" + (f" -- identical results: {res['identical_results']}"
                                                            if "identical_results" in res else ""))
        print(table(res))
        if "cli/cli-float32" in res["median_ratio"]:
            print(f"\ncli / cli-float32 (same round, median): {res['median_ratio']['cli/cli-float32']:.2f}")
        if "cli/cli-before" in res["median_ratio"]:
            print(f"cli / cli-before (same round, median): {res['median_ratio']['cli/cli-before']:.2f}; "
                  f"identical results: {res['identical_to_before']}")
        print()
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
