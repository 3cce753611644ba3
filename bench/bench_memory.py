"""Issue 14 (memory): where `neardup dedup`'s peak RSS is, and what is in it.

Runs ``neardup dedup --threshold 0.98 --prefer score,brightness`` as a fresh process on a fresh copy
of a prepared catalog (bench_int8's ``prepare``: seed-shaped vectors imported with their score and
brightness), and samples that process's ``/proc/<pid>/status`` (VmRSS split into RssAnon and RssFile --
the memory-mapped vector store's pages are RssFile) every ``--every`` seconds from this process. The
child marks when the stages that matter for memory begin and end (scope loading, fingerprints, the
exact pass and its steps, grouping), so each sample is attributed to the innermost stage running.

    .venv/bin/python bench/bench_memory.py --n 200000 [--src /other/checkout/src] [--json out.json]

Prints per stage: the largest RSS seen in it (anon / file), and the overall peak (VmHWM) with the
stage it fell in. The sampling adds no work to the child (it reads /proc from outside); the stage
marks cost a few file writes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

CHILD = r"""
import functools, importlib, os, sys, time

LOG = open(os.environ["MEMPROF_LOG"], "w", buffering=1)


def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0])
    return out


def mark(what, label):
    s = status()
    LOG.write(f"{time.monotonic():.4f} {what} {label} {s['VmRSS']} {s['RssAnon']} {s['RssFile']} {s['VmHWM']}\n")


def wrap(modname, attr, label, cls=None):
    mod = importlib.import_module(modname)
    owner = getattr(mod, cls) if cls else mod
    fn = getattr(owner, attr)

    @functools.wraps(fn)
    def inner(*a, **k):
        mark("enter", label)
        try:
            return fn(*a, **k)
        finally:
            mark("exit", label)

    setattr(owner, attr, inner)
    return inner


mark("enter", "start")
wrap("neardup.dedup", "load_scope", "load_scope")
wrap("neardup.dedup", "plan_run", "plan_run")
wrap("neardup.similarity.canonical", "is_canonical", "is_canonical")
wrap("neardup.incremental", "row_fingerprints", "fingerprints")
wrap("neardup.similarity.exact", "exact_forest", "exact_forest")
wrap("neardup.similarity.quantized", "__init__", "quantize", cls="Quantized")
wrap("neardup.similarity.quantized", "take", "codes_take", cls="Quantized")
wrap("neardup.similarity.locality", "locality_order", "locality_order")
wrap("neardup.similarity.locality", "take_rows", "take_rows")
wrap("neardup.similarity.prepass", "__init__", "int8blocks_init", cls="Int8Blocks")
wrap("neardup.incremental", "save", "state_save", cls="ForestState")
g = wrap("neardup.grouping", "group_nodes", "group_nodes")
import neardup.dedup
neardup.dedup.group_nodes = g
from neardup.cli import main
try:
    main(sys.argv[1:])
finally:
    mark("exit", "start")
"""


def sample(pid: int, every: float) -> list[tuple[float, int, int, int]]:
    """(monotonic time, VmRSS, RssAnon, RssFile) in kB, until the process ends."""
    out = []
    path = f"/proc/{pid}/status"
    while True:
        try:
            with open(path) as f:
                d = {}
                for line in f:
                    k, _, v = line.partition(":")
                    if k in ("VmRSS", "RssAnon", "RssFile", "State"):
                        d[k] = v.split()[0]
        except OSError:
            break
        if d.get("State") == "Z" or "VmRSS" not in d:
            break
        out.append((time.monotonic(), int(d["VmRSS"]), int(d["RssAnon"]), int(d["RssFile"])))
        time.sleep(every)
    return out


def run(n: int, src: Path | None, every: float, work: Path, trace: bool = False) -> dict:
    from bench_int8 import env_with_src, fresh_copy, prepare, python

    data = prepare(n, work)
    cat = fresh_copy(data, work / "memrun")
    with tempfile.NamedTemporaryFile("r", suffix=".log") as log:
        env = env_with_src(src, MEMPROF_LOG=log.name)
        load = os.getloadavg()[0]
        t0 = time.monotonic()
        p = subprocess.Popen([python(), "-c", CHILD, "dedup", "--threshold", "0.98", "--prefer", "score,brightness",
                              "--db", "c.duckdb"], env=env, cwd=cat, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        samples = sample(p.pid, every)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.monotonic() - t0
        stdout, stderr = p.stdout.read().decode(), p.stderr.read().decode()
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"dedup failed:\n{stderr[-3000:]}")
        marks = [ln.split() for ln in log.read().splitlines()]
    events = [(float(m[0]), m[1], m[2], *map(int, m[3:])) for m in marks]
    # attribute each sample (and each mark's own reading) to the innermost stage running
    readings = [(t, rss, anon, fil, "sample") for t, rss, anon, fil in samples]
    readings += [(t, rss, anon, fil, f"{what}:{label}") for t, what, label, rss, anon, fil, _ in events]
    readings.sort()
    stages: dict[str, dict] = {}
    stack: list[str] = []
    evs = sorted(events)
    k = 0
    peak = (0, "", 0, 0)
    for t, rss, anon, fil, kind in readings:
        while k < len(evs) and evs[k][0] <= t:
            _, what, label = evs[k][:3]
            if what == "enter":
                stack.append(label)
            elif label in stack:
                del stack[len(stack) - 1 - stack[::-1].index(label)]
            k += 1
        where = stack[-1] if stack else "(outside)"
        if kind.startswith("exit:"):
            where = kind[5:]  # the reading at a stage's end belongs to it
        s = stages.setdefault(where, {"max_rss_mb": 0.0, "anon_mb": 0.0, "file_mb": 0.0, "seconds": 0.0})
        if rss / 1024 > s["max_rss_mb"]:
            s.update(max_rss_mb=rss / 1024, anon_mb=anon / 1024, file_mb=fil / 1024)
        if rss > peak[0]:
            peak = (rss, where, anon, fil)
    for label in {e[2] for e in events}:
        ins = [e[0] for e in events if e[2] == label and e[1] == "enter"]
        outs = [e[0] for e in events if e[2] == label and e[1] == "exit"]
        if label in stages:
            stages[label]["seconds"] = round(sum(o - i for i, o in zip(ins, outs)), 2)
    hwm = max(e[6] for e in events)
    return {"n": n, "src": str(src or ROOT / "src"), "wall_s": round(wall, 2),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "ru_maxrss_mb": round(usage.ru_maxrss / 1024, 1),
            "vmhwm_mb": round(hwm / 1024, 1), "sampled_peak_mb": round(peak[0] / 1024, 1), "peak_stage": peak[1],
            "peak_anon_mb": round(peak[2] / 1024, 1), "peak_file_mb": round(peak[3] / 1024, 1),
            "load_1min": [load, os.getloadavg()[0]], "samples": len(samples),
            "summary": next((ln.strip() for ln in stdout.splitlines() if ln.strip().startswith("images ")), ""),
            "stages": {k: {kk: round(vv, 1) for kk, vv in v.items()} for k, v in stages.items()},
            "trace": [(round(t - t0, 3), rss // 1024, anon // 1024, fil // 1024, kind)
                      for t, rss, anon, fil, kind in readings if kind != "sample" or trace]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--src", type=Path, help="another checkout's src/ (default: this one's)")
    ap.add_argument("--every", type=float, default=0.02, help="seconds between samples")
    ap.add_argument("--json", type=Path, help="append the result as one JSON line here")
    ap.add_argument("--trace", action="store_true", help="keep every sample in the JSON (else only the stage marks)")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("NEARDUP_BENCH_CACHE", "/tmp")) / "neardup-bench-int8")
    args = ap.parse_args()
    res = run(args.n, args.src.resolve() if args.src else None, args.every, args.work, args.trace)
    res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"n {res['n']:,}  src {res['src']}  wall {res['wall_s']} s  cpu {res['cpu_s']} s  "
          f"peak (VmHWM) {res['vmhwm_mb']:.0f} MB  sampled peak {res['sampled_peak_mb']:.0f} MB in {res['peak_stage']} "
          f"(anon {res['peak_anon_mb']:.0f}, file {res['peak_file_mb']:.0f})  load {res['load_1min'][0]:.1f}->{res['load_1min'][1]:.1f}")
    print(res["summary"])
    for k, v in sorted(res["stages"].items(), key=lambda kv: -kv[1]["max_rss_mb"]):
        print(f"  {k:18s} max {v['max_rss_mb']:7.0f} MB (anon {v['anon_mb']:6.0f}, file {v['file_mb']:6.0f})  {v['seconds']:7.2f} s")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
