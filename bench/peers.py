#!/usr/bin/env python3
"""Peer comparison benchmark on precomputed embeddings: neardup vs imagededup vs fastdup.

    python3 bench/peers.py setup                          # make bench/.peers-venv (once)
    python3 bench/peers.py vectors --n 12217 --out /tmp/v12k.npy
    python3 bench/peers.py run /tmp/v12k.npy --threshold 0.98 --repeats 3 \
        --tools gemm,neardup,imagededup,fastdup --reference scipy --json /tmp/peers12k.json

The peers live in their own virtualenv (``bench/.peers-venv``, git-ignored), never in neardup's
dependencies: imagededup pulls torch + torchvision, fastdup pins numpy 1.26 / Pillow 10.3.
This file is both the driver (stdlib only, any python3) and the worker that each tool runs in
a subprocess (``_worker`` sub-command) of the right interpreter:

* neardup, the bare GEMM, the exact reference and the comparison run in neardup's venv
  (``/work/main/.venv``, or ``--neardup-python``);
* imagededup and fastdup run in ``bench/.peers-venv``.

Per run the driver records the wall time of the dedup call itself (measured inside the
worker around that call only: no interpreter start, no import, no file load), the peak RSS of
the worker process (``getrusage`` via ``os.wait4``: the largest single process in the tree)
and the peak of the summed PSS of the worker's whole process tree, sampled every 0.1 s from
/proc (imagededup forks similarity workers; fastdup runs native threads in-process).

Agreement with the exact reference (all pairs cos >= t, connected components):
groups are compared by adjusted Rand index and exact partition equality; where a tool
returns pairs, precision is checked by recomputing each returned pair's float32 dot product
and recall is (true pairs returned) / (reference pair count).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEERS_VENV = Path(os.environ.get("NEARDUP_PEERS_VENV", HERE / ".peers-venv"))
PEERS_PY = PEERS_VENV / "bin" / "python"
NEARDUP_PY = REPO / ".venv" / "bin" / "python"

BLOCK_ROWS = 2048
COL_CHUNK = 8192

# torch 2.13.0 first: pip then takes the local CPU build; torchvision 0.28.0 is the release
# built for torch 2.13 (an unpinned torchvision pulls torch 2.14 with ~4.5 GB of CUDA wheels).
PEER_PACKAGES = [["torch==2.13.0", "torchvision==0.28.0", "imagededup"], ["fastdup"]]


# --------------------------------------------------------------------------------------------
# set-up
# --------------------------------------------------------------------------------------------

def _peer_env() -> dict:
    env = dict(os.environ)
    env["SENTRY_OPT_OUT"] = "1"           # fastdup: no telemetry
    env.setdefault("TQDM_DISABLE", "1")
    return env


def setup(force: bool = False) -> None:
    if force and PEERS_VENV.exists():
        shutil.rmtree(PEERS_VENV)
    if not PEERS_PY.exists():
        print(f"creating {PEERS_VENV}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    for pkgs in PEER_PACKAGES:
        print("pip install " + " ".join(pkgs), flush=True)
        subprocess.run([str(PEERS_PY), "-m", "pip", "install", "-q", *pkgs], check=True, env=_peer_env())
    # The torchvision wheel from PyPI links libtorch_cuda.so, absent from the CPU torch: its
    # C ops fail to load (silently) and `import torchvision` then dies registering fake
    # kernels for them. The imagededup worker defines the two op schemas first (see
    # _torchvision_without_ops); check that both peers import.
    probe = ("import sys; sys.path.insert(0, %r); import peers; peers._torchvision_without_ops(); "
             "import imagededup, fastdup; print('imagededup', imagededup.__version__, "
             "'fastdup', fastdup.__version__)") % str(HERE)
    subprocess.run([str(PEERS_PY), "-c", probe], check=True, env=_peer_env())


def ensure_venv() -> None:
    if not PEERS_PY.exists():
        setup()


# --------------------------------------------------------------------------------------------
# measurement of a subprocess: wall time comes from the worker, memory from here
# --------------------------------------------------------------------------------------------

def _children_map(min_pid: int = 0) -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) < min_pid:   # descendants are newer (barring pid wrap)
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                s = f.read()
        except OSError:
            continue
        ppid = int(s[s.rindex(b")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(root: int) -> list[int]:
    kids = _children_map(root)
    out, stack = [], [root]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(kids.get(p, ()))
    return out


def measured(cmd: list[str], env: dict | None = None, interval: float = 0.1) -> dict:
    """Run ``cmd``; return its JSON result (last stdout line) plus memory peaks."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    peak = [0]
    stop = threading.Event()

    def sample():   # PSS of the process tree every 0.1 s; the tree itself re-read every 0.5 s
        k, pids = 0, [proc.pid]
        while not stop.is_set():
            if k % 5 == 0:
                pids = _tree(proc.pid)
            k += 1
            peak[0] = max(peak[0], sum(_pss_kb(p) for p in pids))
            stop.wait(interval)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out_chunks: list[str] = []
    err_chunks: list[str] = []
    t_out = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()), daemon=True)
    t_err = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True)
    t_out.start(); t_err.start()
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stop.set(); th.join(); t_out.join(); t_err.join()
    out, err = "".join(out_chunks), "".join(err_chunks)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[2:4]} failed ({proc.returncode}):\n{err[-4000:]}")
    res = json.loads(out.strip().splitlines()[-1])
    res["peak_rss_mb"] = ru.ru_maxrss / 1024.0          # KiB on Linux; max over the tree's processes
    res["peak_tree_pss_mb"] = peak[0] / 1024.0
    return res


# --------------------------------------------------------------------------------------------
# workers (run inside the right venv)
# --------------------------------------------------------------------------------------------

def _torchvision_without_ops() -> None:
    """Let ``import torchvision`` succeed when its C++ ops cannot load (CUDA-built wheel on a
    CPU torch). Only the two ops torchvision registers fake kernels for unconditionally need
    a schema; imagededup's encoding_map path never calls any of them."""
    import torch
    try:
        import torchvision  # noqa: F401
        return
    except RuntimeError:
        pass
    for m in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[m]
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        try:
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except RuntimeError:
            pass
    globals()["_tv_lib"] = lib   # keep the registration alive
    import torchvision  # noqa: F401,F811


def _labels_from_pairs(n: int, i, j):
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    g = coo_matrix((np.ones(len(i), np.int8), (np.asarray(i), np.asarray(j))), shape=(n, n))
    return connected_components(g, directed=False)[1].astype(np.int64)


def w_gemm(X, t, outdir):
    from bench_core import bare_upper_triangle_gemm
    t0 = time.perf_counter()
    bare_upper_triangle_gemm(X, BLOCK_ROWS, COL_CHUNK)
    return {"seconds": time.perf_counter() - t0}


def w_neardup(X, t, outdir):
    import numpy as np
    from neardup.similarity.exact import exact_forest
    rng = np.random.default_rng(1)           # warm the numba JIT outside the timed call
    w = rng.standard_normal((3000, X.shape[1])).astype(np.float32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    exact_forest(w, t).components(t)
    t0 = time.perf_counter()
    f = exact_forest(X, t)
    labels = f.components(t)
    sec = time.perf_counter() - t0
    np.save(outdir / "labels.npy", np.asarray(labels, np.int64))
    return {"seconds": sec, "pairs": int(f.pair_count(t))}


def w_reference(X, t, outdir):
    """Exact reference: blocked numpy all pairs (float32 GEMM, S >= float32(t)) + scipy CC."""
    import numpy as np
    n = len(X)
    t32 = np.float32(t)
    I, J = [], []
    t0 = time.perf_counter()
    for a in range(0, n, BLOCK_ROWS):
        b = min(n, a + BLOCK_ROWS)
        S = X[a:b] @ X[a:].T
        S[np.arange(b - a), np.arange(b - a)] = -2           # no self pairs
        S[np.tril_indices(b - a, -1)] = -2                   # upper triangle only
        ii, jj = np.nonzero(S >= t32)
        I.append((ii + a).astype(np.int32)); J.append((jj + a).astype(np.int32))
    i, j = np.concatenate(I), np.concatenate(J)
    labels = _labels_from_pairs(n, i, j)
    sec = time.perf_counter() - t0
    np.save(outdir / "labels.npy", labels)
    return {"seconds": sec, "pairs": int(len(i))}


def w_imagededup(X, t, outdir, scores=True):
    import numpy as np
    _torchvision_without_ops()
    import torch
    from imagededup.methods import CNN
    from imagededup.utils.models import CustomModel
    # A do-nothing model: CNN() would otherwise build MobileNetV3 and fetch its weights;
    # find_duplicates(encoding_map=...) never calls the model.
    cnn = CNN(verbose=False, model_config=CustomModel(name="identity", model=torch.nn.Identity(),
                                                      transform=lambda im: im))
    enc = {str(k): X[k] for k in range(len(X))}
    import warnings
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    res = cnn.find_duplicates(encoding_map=enc, min_similarity_threshold=float(t), scores=bool(scores))
    sec = time.perf_counter() - t0
    del cnn
    ii, jj = [], []
    for k, dups in res.items():
        a = int(k)
        for d in dups:
            b = int(d[0] if isinstance(d, tuple) else d)
            if a < b:
                ii.append(a); jj.append(b)
    i, j = np.asarray(ii, np.int64), np.asarray(jj, np.int64)
    np.save(outdir / "pairs.npy", np.stack([i, j]))
    np.save(outdir / "labels.npy", _labels_from_pairs(len(X), i, j))
    return {"seconds": sec, "pairs": int(len(i)), "scores": bool(scores),
            "note": "groups = connected components of the returned duplicate map (scipy, untimed)"}


def w_fastdup(X, t, outdir, k=None):
    import numpy as np
    import fastdup
    wd, ind = outdir / "fd_work", outdir / "fd_in"
    ind.mkdir(exist_ok=True)
    names = [f"{r}.jpg" for r in range(len(X))]
    kw = dict(threshold=float(t), cc_threshold=float(t))
    if k is not None:
        kw["nearest_neighbors_k"] = int(k)
    fd = fastdup.create(work_dir=str(wd), input_dir=str(ind))
    t0 = time.perf_counter()
    fd.run(annotations=names, embeddings=X, overwrite=True, **kw)
    t_run = time.perf_counter() - t0
    cc, _info = fd.connected_components()
    sec = time.perf_counter() - t0
    labels = np.full(len(X), -1, np.int64)
    labels[cc["fd_index"].to_numpy(np.int64)] = cc["component_id"].to_numpy(np.int64)
    miss = labels < 0                              # images in no component: singletons
    labels[miss] = labels.max() + 1 + np.arange(int(miss.sum()))
    sim = fd.similarity()
    a, b = sim["from"].to_numpy(np.int64), sim["to"].to_numpy(np.int64)
    # fastdup's "distance" column is a cosine similarity (1 = identical): check it against
    # the float32 dot products of the same rows (the vectors are unit-norm)
    dots = np.einsum("ij,ij->i", X[a], X[b]) if len(a) else np.zeros(0, np.float32)
    dist_err = float(np.abs(sim["distance"].to_numpy(np.float64) - dots).max()) if len(a) else 0.0
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    p = np.unique(np.stack([lo, hi]), axis=1) if len(lo) else np.zeros((2, 0), np.int64)
    np.save(outdir / "pairs.npy", p)
    np.save(outdir / "labels.npy", labels)
    shutil.rmtree(wd, ignore_errors=True)
    return {"seconds": sec, "seconds_run_only": t_run, "pairs": int(p.shape[1]),
            "max_abs_distance_minus_dot": dist_err,
            "nearest_neighbors_k": kw.get("nearest_neighbors_k", "default(2)")}


def _ari(a, b) -> float:
    import numpy as np
    from scipy.sparse import coo_matrix
    n = len(a)
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    c = coo_matrix((np.ones(n, np.int64), (a, b))).tocsr()
    c.sum_duplicates()

    def c2(x):
        x = np.asarray(x, np.float64)
        return float((x * (x - 1) / 2).sum())

    sij = c2(c.data)
    sa, sb = c2(np.bincount(a)), c2(np.bincount(b))
    tot = n * (n - 1) / 2
    exp = sa * sb / tot
    mx = (sa + sb) / 2
    return 1.0 if mx == exp else (sij - exp) / (mx - exp)


def _group_stats(labels) -> dict:
    import numpy as np
    cnt = np.bincount(np.unique(labels, return_inverse=True)[1])
    multi = cnt[cnt > 1]
    return {"groups": int(len(multi)), "suppressed": int((multi - 1).sum()),
            "largest": int(cnt.max()), "retained": int(len(labels) - (multi - 1).sum())}


def w_compare(X, t, outdir, ref_dir=None, tool_dirs=None, ref_pairs=None):
    """Compare each tool's labels (and pairs) with the reference's."""
    import numpy as np
    ref = np.load(Path(ref_dir) / "labels.npy")
    out = {"reference": _group_stats(ref)}
    t32 = np.float32(t)
    for name, d in json.loads(tool_dirs).items():
        d = Path(d)
        lab = np.load(d / "labels.npy")
        _, ci = np.unique(ref, return_inverse=True)
        _, cj = np.unique(lab, return_inverse=True)
        # same partition iff the (ref, tool) label pairs are a bijection
        pairs_ = np.unique(np.stack([ci, cj]), axis=1)
        exact = bool(pairs_.shape[1] == ci.max() + 1 == cj.max() + 1)
        r = {"ari": _ari(ref, lab), "exact_match": exact, **_group_stats(lab)}
        if (d / "pairs.npy").exists():
            p = np.load(d / "pairs.npy")
            if p.shape[1]:
                s = np.einsum("ij,ij->i", X[p[0]], X[p[1]])
                ok = s >= t32
                r["pairs_returned"] = int(p.shape[1])
                r["pair_precision"] = float(ok.mean())
                r["pairs_below_t_by_more_than_1e-6"] = int((s < t32 - 1e-6).sum())
                if ref_pairs:
                    r["pair_recall"] = float(ok.sum() / int(ref_pairs))
        out[name] = r
    return out


WORKERS = {"gemm": w_gemm, "neardup": w_neardup, "reference": w_reference,
           "imagededup": w_imagededup, "fastdup": w_fastdup, "compare": w_compare}


def worker_main(argv: list[str]) -> None:
    import numpy as np
    p = argparse.ArgumentParser()
    p.add_argument("tool")
    p.add_argument("vectors")
    p.add_argument("threshold", type=float)
    p.add_argument("outdir")
    p.add_argument("--kw", default="{}")
    a = p.parse_args(argv)
    X = np.ascontiguousarray(np.load(a.vectors), dtype=np.float32)
    outdir = Path(a.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    res = WORKERS[a.tool](X, a.threshold, outdir, **json.loads(a.kw))
    sys.stdout.flush()
    print("\n" + json.dumps(res))


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def run(args) -> dict:
    ensure_venv()
    vec = str(Path(args.vectors).resolve())
    t = args.threshold
    nd_py = args.neardup_python
    nd_env = dict(os.environ)
    nd_env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + nd_env.get("PYTHONPATH", "")
    pe_env = _peer_env()
    me = str(Path(__file__).resolve())
    work = Path(tempfile.mkdtemp(prefix="neardup-peers-"))
    tools = [s for s in args.tools.split(",") if s]
    spec = {"gemm": (nd_py, nd_env, {}), "neardup": (nd_py, nd_env, {}),
            "imagededup": (str(PEERS_PY), pe_env, {}), "fastdup": (str(PEERS_PY), pe_env, {})}
    if args.imagededup_no_scores:
        spec["imagededup_noscores"] = (str(PEERS_PY), pe_env, {"scores": False})
    for k in (args.fastdup_k or "").split(","):
        if k:
            spec[f"fastdup_k{k}"] = (str(PEERS_PY), pe_env, {"k": int(k)})
    out = {"vectors": vec, "threshold": t, "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "nproc": os.cpu_count(), "cpu": _cpu_model(), "loadavg_start": os.getloadavg(),
           "repeats": args.repeats, "runs": {}}

    def one(name, tool, py, env, kw, outdir):
        cmd = [py, me, "_worker", tool, vec, str(t), str(outdir), "--kw", json.dumps(kw)]
        r = measured(cmd, env)
        print(f"  {name:14s} {r['seconds']:8.2f} s  peak RSS {r['peak_rss_mb']:8.0f} MB  "
              f"tree PSS {r['peak_tree_pss_mb']:8.0f} MB  load {os.getloadavg()[0]:.2f}", flush=True)
        return r

    # reference first (once): exact groups and pair count
    ref_dir = work / "reference"
    if args.reference == "scipy":
        print("reference (numpy blocked all pairs + scipy connected_components)", flush=True)
        out["reference"] = one("reference", "reference", nd_py, nd_env, {}, ref_dir)
    else:
        print("reference (neardup exact forest components; verified equal to scipy at 12k)", flush=True)
        out["reference"] = one("reference", "neardup", nd_py, nd_env, {}, ref_dir)
        out["reference"]["kind"] = "neardup exact_forest"
    ref_pairs = out["reference"]["pairs"]

    names = []
    for tool in tools:
        names += [k for k in spec if k == tool or (tool == "fastdup" and k.startswith("fastdup_k"))
                  or (tool == "imagededup" and k == "imagededup_noscores")]
    if args.fastdup_k and "fastdup" in tools and not args.fastdup_default:
        names.remove("fastdup")
    # interleave repeats (round-robin) so background load hits every tool alike
    for rep in range(args.repeats):
        print(f"repeat {rep + 1}/{args.repeats}", flush=True)
        for name in names:
            if name.startswith("imagededup") and rep >= args.imagededup_repeats:
                continue
            py, env, kw = spec[name]
            tool = name.split("_")[0]
            try:
                r = one(name, tool, py, env, kw, work / f"{name}-{rep}")
            except Exception as e:  # record and go on
                print(f"  {name}: FAILED {e}", flush=True)
                r = {"error": str(e)[-2000:]}
            out["runs"].setdefault(name, []).append(r)

    # agreement: labels of each tool's first successful run
    tool_dirs = {}
    for name in names:
        for rep, r in enumerate(out["runs"].get(name, [])):
            if "error" not in r and (work / f"{name}-{rep}" / "labels.npy").exists():
                tool_dirs[name] = str(work / f"{name}-{rep}")
                break
    cmp_kw = {"ref_dir": str(ref_dir), "tool_dirs": json.dumps(tool_dirs), "ref_pairs": ref_pairs}
    out["agreement"] = measured([nd_py, me, "_worker", "compare", vec, str(t), str(work / "cmp"),
                                 "--kw", json.dumps(cmp_kw)], nd_env)
    out["agreement"].pop("peak_rss_mb"); out["agreement"].pop("peak_tree_pss_mb")

    summ = {}
    for name, rs in out["runs"].items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            summ[name] = {"error": rs[0].get("error", "")[-300:]}
            continue
        summ[name] = {"median_s": statistics.median(r["seconds"] for r in ok),
                      "all_s": [round(r["seconds"], 3) for r in ok],
                      "median_peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in ok),
                      "median_peak_tree_pss_mb": statistics.median(r["peak_tree_pss_mb"] for r in ok)}
    # ratios within each repeat (same run), then the median of those
    ratios = {}
    for name in summ:
        for base in ("gemm", "neardup"):
            if name in (base, "gemm") or base not in out["runs"] or "error" in summ[name]:
                continue
            rr = [a["seconds"] / b["seconds"] for a, b in zip(out["runs"][name], out["runs"][base])
                  if "error" not in a and "error" not in b]
            if rr:
                ratios[f"{name}/{base}"] = statistics.median(rr)
    out["summary"], out["ratios"] = summ, ratios
    out["loadavg_end"] = os.getloadavg()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"summary": summ, "ratios": ratios, "agreement": out["agreement"]}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


def make_vectors(args) -> None:
    code = ("import numpy as np; from neardup.synthetic import seed_shaped; "
            f"c = seed_shaped({args.n}); np.save({args.out!r}, np.ascontiguousarray(c.vectors, np.float32))")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    subprocess.run([args.neardup_python, "-c", code], check=True, env=env)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        return worker_main(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--neardup-python", default=str(NEARDUP_PY))
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup", help="create bench/.peers-venv with imagededup and fastdup")
    s.add_argument("--force", action="store_true")
    v = sub.add_parser("vectors", help="write seed-shaped vectors (neardup.synthetic.seed_shaped)")
    v.add_argument("--n", type=int, default=12217)
    v.add_argument("--out", required=True)
    r = sub.add_parser("run", help="run the comparison on a .npy of unit-norm float32 vectors")
    r.add_argument("vectors")
    r.add_argument("--threshold", type=float, default=0.98)
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--tools", default="gemm,neardup,imagededup,fastdup")
    r.add_argument("--imagededup-repeats", type=int, default=3)
    r.add_argument("--imagededup-no-scores", action="store_true",
                   help="also run imagededup with scores=False (its faster path)")
    r.add_argument("--fastdup-k", default="", help="extra fastdup runs with these nearest_neighbors_k, e.g. 16")
    r.add_argument("--fastdup-default", action="store_true", help="with --fastdup-k, keep the default-k run too")
    r.add_argument("--reference", choices=["scipy", "neardup"], default="scipy",
                   help="exact reference groups: numpy+scipy (small n) or neardup's exact forest")
    r.add_argument("--json", help="write all results here")
    r.add_argument("--keep", action="store_true", help="keep the work directory")
    a = p.parse_args()
    if a.cmd == "setup":
        setup(a.force)
    elif a.cmd == "vectors":
        make_vectors(a)
    else:
        run(a)


if __name__ == "__main__":
    main()
