"""Start-up benchmark: read-only commands and the 12k dedup as whole processes, as a user waits on them.

    .venv/bin/python bench/startup.py                       # 7 rounds; writes JSON + docs table
    .venv/bin/python bench/startup.py --src old=/tmp/old/src --src new=src   # two checkouts side by side

Every measurement is a fresh process of the installed ``neardup`` console script (the code of
``--src`` first on PYTHONPATH), timed from spawn to exit: wall seconds and the child's CPU
seconds (user + sys; less sensitive to a loaded machine than wall). Rounds interleave every
command (and every ``--src``), so background load hits each alike; medians of the rounds.

* read-only commands: ``--help``, ``runs --help``, ``dedup --help``, ``runs``, ``models``,
  ``skipped`` (on a catalog with one run and 20 skipped files), beside ``python -c pass``;
* ``neardup dedup --threshold 0.98`` on the 12,217 x 512 seed twin (a fresh copy of a catalog
  that has no run and no cached similarity pass, made before the timer) against the lesson's
  naive numpy + scipy script run as a process (``bench_core.py --naive-process``: load, 1,000-row
  blocks, ``np.nonzero``, scipy components, masters by score then brightness); the ratio is
  taken within each round, then the median. Both must find the same groups.
* floors, in the same rounds: a process that only imports dedup's libraries (numpy, pyarrow,
  duckdb, onnxruntime), and one that also imports numba and calls one of neardup's cached kernels
  (numba's first dispatch): what any dedup process pays before its first row is read;
* the dedup process's imports: one extra run under ``python -X importtime`` (the import total
  and the packages that cost most).

Writes ``bench/results/startup.json`` and the "Start-up" section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from bench_core import cpu_model, vectors_path  # noqa: E402

BEGIN, END = "<!-- startup:begin -->", "<!-- startup:end -->"
READ_ONLY = {
    "--help": ["--help"],
    "runs --help": ["runs", "--help"],
    "dedup --help": ["dedup", "--help"],
    "runs": ["runs", "--db", "{ro}"],
    "models": ["models"],
    "skipped": ["skipped", "--db", "{ro}"],
}
#: Floors: processes that only import what `neardup dedup` needs (its libraries; then numba too, with one
#: of neardup's cached kernels called, which pays numba's first-dispatch set-up). No dedup can start faster.
FLOORS = {
    "imports: numpy, pyarrow, duckdb, onnxruntime":
        "import numpy, pyarrow, duckdb, onnxruntime",
    "the same + numba, one cached neardup kernel called":
        "import numpy, pyarrow, duckdb, onnxruntime; from neardup.similarity.canonical import is_canonical; "
        "is_canonical(numpy.zeros((2, 4), numpy.float32))",
}
TARGET_READ_ONLY_S = 0.15
TARGET_DEDUP_RATIO = 0.5


def neardup_cmd() -> list[str]:
    """The installed console script next to this interpreter (what a user runs), else ``python -m neardup``."""
    script = shutil.which("neardup", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "neardup"]


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """Wall and CPU seconds (user + sys of the child) of one process run to exit."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr[-2000:]}")
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), res


def write_inputs(work: Path, npz: Path) -> None:
    """The seed twin as a user has it: vectors (.npy), ids (one per line), metadata (score, brightness)."""
    import numpy as np

    z = np.load(npz)
    np.save(work / "v.npy", np.ascontiguousarray(z["vectors"], dtype=np.float32))
    n = len(z["vectors"])
    (work / "ids.txt").write_text("".join(f"img{k:07d}\n" for k in range(n)))
    with open(work / "meta.csv", "w") as f:
        f.write("id,score,brightness\n")
        f.writelines(f"img{k:07d},{s!r},{b!r}\n" for k, (s, b) in enumerate(zip(z["score"].tolist(), z["brightness"].tolist())))


def make_catalogs(work: Path, env: dict[str, str], threshold: float) -> tuple[Path, Path]:
    """In ``work`` (inputs from :func:`write_inputs` in its parent), made by the code timed there (a catalog
    written by newer code may not open in older): ``fresh``, the seed twin imported and nothing else;
    ``ro``, the same after one dedup, with 20 skipped files."""
    work.mkdir(exist_ok=True)
    fresh = work / "fresh.duckdb"
    nd = neardup_cmd()
    timed([*nd, "import-embeddings", "../v.npy", "--ids", "../ids.txt", "--meta", "../meta.csv", "--model", "clip",
           "--db", fresh.name], env, work)
    ro = work / "ro.duckdb"
    copy_catalog(fresh, ro)
    timed([*nd, "dedup", "--threshold", str(threshold), "--db", ro.name], env, work)
    import duckdb

    con = duckdb.connect(str(ro))
    con.executemany("INSERT INTO skipped VALUES (?, ?, now())",
                    [[f"/photos/2024/broken_{k:03d}.jpg", "truncated JPEG (image file is truncated)"] for k in range(20)])
    con.close()
    return fresh, ro


def copy_catalog(src: Path, dst: Path) -> None:
    """A catalog is its DuckDB file and its sidecar folder (vectors)."""
    for p in (dst, dst.with_name(dst.name + ".d"), dst.with_name(dst.name + ".wal")):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    shutil.copy2(src, dst)
    side = src.with_name(src.name + ".d")
    if side.exists():
        shutil.copytree(side, dst.with_name(dst.name + ".d"))


def import_profile(cmd: list[str], env: dict[str, str], cwd: Path, top: int = 8) -> dict:
    """One run under ``-X importtime``: seconds spent importing, and the distributions that cost most
    (each module's own time, summed by top-level package)."""
    res = subprocess.run([sys.executable, "-X", "importtime", *cmd], env=env, cwd=cwd, capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
    per_pkg: dict[str, float] = {}
    for line in res.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+\d+ \| \s*(\S+)", line)
        if m:
            pkg = m.group(2).split(".")[0].lstrip("_") or m.group(2)
            per_pkg[pkg] = per_pkg.get(pkg, 0.0) + int(m.group(1)) / 1e6
    return {"import_s": sum(per_pkg.values()), "top": sorted(per_pkg.items(), key=lambda kv: -kv[1])[:top],
            "packages": sorted(per_pkg)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--n", type=int, default=12217)
    ap.add_argument("--threshold", type=float, default=0.98)
    ap.add_argument("--src", action="append", metavar="[LABEL=]PATH",
                    help="a source tree to time (repeatable; default: this checkout's src)")
    ap.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = ap.parse_args()

    srcs = {}
    for spec in args.src or [f"this checkout={REPO / 'src'}"]:
        label, _, path = spec.rpartition("=")
        srcs[label or path] = str(Path(path).resolve())
    base_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COLUMNS", "NO_COLOR")}
    envs = {label: dict(base_env, PYTHONPATH=path, COLUMNS="80") for label, path in srcs.items()}
    first_env = next(iter(envs.values()))
    nd = neardup_cmd()
    npz = vectors_path(args.n, 4.0, 0)
    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="neardup-startup-"))
    try:
        write_inputs(work, npz)
        dirs = {label: work / f"src{k}" for k, label in enumerate(envs)}  # one catalog pair per source tree
        fresh = {label: make_catalogs(d, envs[label], args.threshold)[0] for label, d in dirs.items()}
        cmds = {name: [*nd, *(a.format(ro="ro.duckdb") for a in argv)] for name, argv in READ_ONLY.items()}
        naive_cmd = [sys.executable, str(HERE / "bench_core.py"), "--threshold", str(args.threshold),
                     "--naive-process", str(npz)]
        dedup_argv = ["dedup", "--threshold", str(args.threshold), "--json", "--db", "run.duckdb"]
        # warm-up, untimed: page cache, .pyc files, numba's on-disk kernel cache of each source tree
        for code in FLOORS.values():
            timed([sys.executable, "-c", code], first_env, work)
        for label, env in envs.items():
            for cmd in cmds.values():
                timed(cmd, env, dirs[label])
            copy_catalog(fresh[label], dirs[label] / "run.duckdb")
            timed([*nd, *dedup_argv], env, dirs[label])
        _, _, naive_out = timed(naive_cmd, first_env, work)
        naive_counts = json.loads(naive_out.stdout.strip().splitlines()[-1])

        rounds: list[dict] = []
        for r in range(args.repeats):
            row: dict = {"python -c pass": {}, "naive script": {}}
            row["python -c pass"] = dict(zip(("wall", "cpu"), timed([sys.executable, "-c", "pass"], first_env, work)[:2]))
            for name, code in FLOORS.items():
                row[name] = dict(zip(("wall", "cpu"), timed([sys.executable, "-c", code], first_env, work)[:2]))
            for label, env in envs.items():
                for name, cmd in cmds.items():
                    row.setdefault(label, {})[name] = dict(zip(("wall", "cpu"), timed(cmd, env, dirs[label])[:2]))
                copy_catalog(fresh[label], dirs[label] / "run.duckdb")
                wall, cpu, res = timed([*nd, *dedup_argv], env, dirs[label])
                summary = json.loads(res.stdout.strip().splitlines()[-1])
                row[label]["dedup 12k"] = {"wall": wall, "cpu": cpu, "groups": summary["groups"],
                                           "retained": summary["retained"], "suppressed": summary["suppressed"]}
            row["naive script"] = dict(zip(("wall", "cpu"), timed(naive_cmd, first_env, work)[:2]))
            rounds.append(row)
            print(f"round {r + 1}/{args.repeats}: " + "; ".join(
                f"{label}: runs {row[label]['runs']['wall']:.2f}s, dedup {row[label]['dedup 12k']['wall']:.2f}s"
                for label in envs) + f"; naive {row['naive script']['wall']:.2f}s; load {os.getloadavg()[0]:.1f}",
                  file=sys.stderr, flush=True)

        imports = {}
        for label, env in envs.items():
            copy_catalog(fresh[label], dirs[label] / "run.duckdb")
            imports[label] = import_profile(["-m", "neardup", *dedup_argv], env, dirs[label])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(label: str, name: str, key: str = "wall") -> float:
        return statistics.median(r[label][name][key] for r in rounds)

    results: dict = {}
    for label in envs:
        res_l = {name: {"wall_s": med(label, name), "cpu_s": med(label, name, "cpu")} for name in [*READ_ONLY, "dedup 12k"]}
        res_l["dedup 12k"]["ratio_to_naive"] = statistics.median(
            r[label]["dedup 12k"]["wall"] / r["naive script"]["wall"] for r in rounds)
        res_l["dedup 12k"]["cpu_ratio_to_naive"] = statistics.median(
            r[label]["dedup 12k"]["cpu"] / r["naive script"]["cpu"] for r in rounds)
        last = rounds[-1][label]["dedup 12k"]
        res_l["dedup 12k"]["same_groups_as_naive"] = all(last[k] == naive_counts[k] for k in ("groups", "retained", "suppressed"))
        res_l["dedup imports"] = imports[label]
        results[label] = res_l
    info = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, {cpu_model()}, Python {platform.python_version()}",
        "command": " ".join([Path(sys.executable).name, "bench/startup.py", *sys.argv[1:]]),
        "versions": versions(),
        "load_average_start": load_start, "load_average_end": os.getloadavg(),
        "repeats": args.repeats, "n": args.n, "threshold": args.threshold, "sources": srcs,
        "floor": {k: statistics.median(r[k]["wall"] for r in rounds) for k in ("python -c pass", *FLOORS, "naive script")},
        "floor_cpu": {k: statistics.median(r[k]["cpu"] for r in rounds) for k in ("python -c pass", *FLOORS, "naive script")},
        "floor_ratio_to_naive": {k: statistics.median(r[k]["wall"] / r["naive script"]["wall"] for r in rounds)
                                 for k in FLOORS},
        "naive_counts": naive_counts, "results": results, "rounds": rounds,
    }
    out = HERE / "results" / "startup.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(info, indent=1))
    table = render(info)
    print(table)
    if not args.no_docs:
        write_docs(table)
    print(f"\nwrote {out.relative_to(REPO)}" + ("" if args.no_docs else " and docs/benchmarks.md"), file=sys.stderr)


def versions() -> dict[str, str]:
    """Versions of the libraries whose import cost dominates start-up."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("typer", "pydantic", "duckdb", "rich", "numpy", "numba", "pyarrow", "scipy"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def render(info: dict) -> str:
    """The Markdown section: conditions, then one table (one column pair per source tree)."""
    labels = list(info["results"])
    la, lb = info["load_average_start"], info["load_average_end"]
    lines = [
        f"`{info['command']}` — {info['date_utc']}, {info['machine']}; load average (1/5/15 min) "
        f"{la[0]:.1f}/{la[1]:.1f}/{la[2]:.1f} at the start, {lb[0]:.1f}/{lb[1]:.1f}/{lb[2]:.1f} at the end; "
        f"median of {info['repeats']} interleaved rounds; "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items()) + ".",
        "",
        "| command (one process) | " + " | ".join(f"{lab}: wall s | {lab}: CPU s" for lab in labels) + " | target |",
        "|---|" + "---|---|" * len(labels) + "---|",
    ]
    fl, fc = info["floor"], info["floor_cpu"]
    lines.append("| `python -c pass` (the interpreter alone) | "
                 + " | ".join(f"{fl['python -c pass']:.3f} | {fc['python -c pass']:.3f}" for _ in labels) + " | |")
    for name in READ_ONLY:
        lines.append(f"| `neardup {name}` | " + " | ".join(
            f"{info['results'][lab][name]['wall_s']:.3f} | {info['results'][lab][name]['cpu_s']:.3f}" for lab in labels)
            + f" | ≤ {TARGET_READ_ONLY_S} s |")
    n = info["n"]
    lines.append(f"| `neardup dedup --threshold {info['threshold']}`, {n:,} × 512 | " + " | ".join(
        f"{info['results'][lab]['dedup 12k']['wall_s']:.2f} | {info['results'][lab]['dedup 12k']['cpu_s']:.2f}"
        for lab in labels) + " | |")
    lines.append(f"| the lesson's naive numpy + scipy script, same vectors | " + " | ".join(
        f"{fl['naive script']:.2f} | {fc['naive script']:.2f}" for _ in labels) + " | |")
    for name in FLOORS:  # older results files have no floors
        if name in fl:
            lines.append(f"| floor: `python -c` {name} (× naive, same round: {info['floor_ratio_to_naive'][name]:.2f}) | "
                         + " | ".join(f"{fl[name]:.3f} | {fc[name]:.3f}" for _ in labels) + " | |")
    lines.append("| **dedup / naive script** (same round, median) | " + " | ".join(
        f"**{info['results'][lab]['dedup 12k']['ratio_to_naive']:.2f}** | "
        f"{info['results'][lab]['dedup 12k']['cpu_ratio_to_naive']:.2f}" for lab in labels)
        + f" | ≤ {TARGET_DEDUP_RATIO} |")
    lines.append("")
    nc = info["naive_counts"]
    for lab in labels:
        r = info["results"][lab]
        imp = r["dedup imports"]
        same = "the same groups as the naive script" if r["dedup 12k"]["same_groups_as_naive"] else \
            "**NOT the same groups as the naive script**"
        lines.append(f"* {lab}: dedup found {same} ({nc['groups']:,} groups, {nc['retained']:,} retained); its imports "
                     f"took {imp['import_s']:.2f} s in one `-X importtime` run (which inflates them): "
                     + ", ".join(f"{k} {v:.2f}" for k, v in imp["top"]) + ".")
    return "\n".join(lines)


def write_docs(table: str) -> None:
    """Replace the generated block of the Start-up section of docs/benchmarks.md (appended if absent)."""
    doc = REPO / "docs" / "benchmarks.md"
    text = doc.read_text()
    block = f"{BEGIN}\n{table}\n{END}"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + ("\n\n## Start-up: what a user waits for at the prompt\n\n"
                                    "Generated by `bench/startup.py` (raw numbers: `bench/results/startup.json`).\n\n"
                                    + block + "\n")
    doc.write_text(text)


if __name__ == "__main__":
    main()
