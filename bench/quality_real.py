"""Quality targets on real labelled data (issue 11): pair precision / recall per kind, per grouping design.

    python bench/quality.py --real                     # build the sets, embed, sweep designs, check defaults
    python bench/quality.py --real --models sscd       # one model

The data is ``bench/datasets.py``'s (frames of packaged sample videos, look-alike photos of one
place, edits of scikit-image's photos; install steps in its docstring). Each model embeds it once
through the product path (``scan`` + ``embed`` on a fresh catalog, in a subprocess); then

- **designs**: every grouping mode (components, leader, bounded with each bound) at every
  threshold on a grid, grouped by :func:`neardup.grouping.group_nodes` on the catalog's vectors
  with the catalog's default master policy — the code ``dedup`` runs;
- **default**: ``dedup --dry-run`` with nothing but the model given (its default threshold, mode
  and bound), scored the same way.

Pair kinds scored (a pair is predicted when both images are in one group; pairs between two
images of one "loose" label are not scored, see bench/datasets.py):

- ``edits``: pairs inside the edit sets (recall target >= 0.90; precision reported);
- ``static``: the *same* pairs inside the fixed-camera sets: consecutive frames of a static view
  (recall target >= 0.90);
- ``enter``: all pairs inside the fixed-camera sets, where something new enters the view
  (precision target >= 0.99);
- ``places``: pairs inside the look-alike photos of one place (precision target >= 0.99: every
  pair there is *different*, so one predicted pair makes precision 0);
- ``moving``: pairs inside the moving-camera burst sets (precision and recall reported, no target);
- ``drift``: pairs inside the continuous moving-camera stretches, truth by frame distance
  (precision and recall reported, no target: this is where transitive groups chain);
- ``cross``: pairs between sets (all different): their false-pair count.

The default includes the geometric check of untimed pairs below the window link
(:mod:`neardup.verify`); the row "without the geometric check" is ``dedup --no-verify``.

Capture times are real and go through the product path: bench/datasets.py writes each video
frame's time (frame / frame rate) into its EXIF, ``scan`` reads it into ``images.captured_at``, and
``dedup`` uses it (the model's capture-time window). Rows:

- **default** — ``dedup --dry-run`` with nothing but the model (threshold, bounded grouping and its
  capture-time window); **before** — the same with ``--window 0`` (the default before the window:
  plain bounded grouping), on the same catalog;
- **without the geometric check** — the default with ``--no-verify`` (the window alone; untimed
  pairs below the window link are not checked, :mod:`neardup.verify`);
- **window** rows — ``dedup --dry-run --window W --window-link F --no-verify`` over a grid, to show
  how the choice of the window's defaults behaves;
- **stills given capture times** — the default grouping (``RunPlan``, the code dedup runs) with
  each *untimed* look-alike still given a moment of its own (a stereo pair one moment): what the
  window would do if those photos carried capture times, as photos by different people do. The
  times are assigned, not read: labelled so wherever quoted.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from datasets import OUT as REAL_DATA, Item, build as build_real, read_labels  # noqa: E402

RAW = ROOT / "bench" / "results" / "raw" / "quality-real"
RESULT = ROOT / "bench" / "results" / "quality-real.json"
#: kind -> (metric, target)
TARGETS: dict[str, tuple[str, float]] = {"edits": ("recall", 0.90), "static": ("recall", 0.90),
                                         "enter": ("precision", 0.99), "places": ("precision", 0.99)}
SCORED = ("edits", "static", "enter", "places", "moving", "drift")
GRID = tuple(round(x, 2) for x in np.arange(0.50, 0.985, 0.02))
BOUNDS = tuple(round(x, 2) for x in np.arange(0.70, 0.985, 0.02))


# ------------------------------------------------------------------------------------------------
# pairs and metrics
# ------------------------------------------------------------------------------------------------
class PairTruth:
    """Every upper-triangle pair of a labelled set: same or not, scored or not, and its kind."""

    def __init__(self, items: Sequence[Item]):
        n = len(items)
        g = np.array([it.group for it in items])
        s = np.array([it.set for it in items])
        k = np.array([it.kind for it in items])
        lo = np.array([it.loose for it in items])
        src = np.array([it.source for it in items])
        self.n = n
        self.iu = np.triu_indices(n, 1)
        a, b = self.iu
        self.same = g[a] == g[b]
        same_set = s[a] == s[b]
        self.scored = ~((lo[a] == lo[b]) & (lo[a] != "") & ~self.same)
        # two sets cut from one video (a drift stretch and bursts of the same file) share frames: unscored
        self.scored &= same_set | (src[a] != src[b]) | (src[a] == "") | (src[a] == "scikit-image")
        self.kind = np.where(same_set, k[a], "cross")
        self.set_of_pair = np.where(same_set, s[a], "")
        # edit kind of each (original, edited copy) pair of the scikit-image edits (neardup.samples file names)
        ek = np.array([it.path.rsplit("__", 1)[1].split(".")[0].split("_")[0] if "__" in it.path else
                       ("original" if "/originals/" in it.path else "") for it in items])
        self.edit_kind = np.where((ek[a] == "original") & (ek[b] != "") & (ek[b] != "original") & self.same, ek[b],
                                  np.where((ek[b] == "original") & (ek[a] != "") & (ek[a] != "original") & self.same,
                                           ek[a], ""))
        # drift sets: truth by frame distance (bench/datasets.py: drift_truth)
        fr = np.array([it.frame if it.frame is not None else -1 for it in items], dtype=np.int64)
        win = np.array([[int(x) for x in it.window.split(",")] if it.window else [0, 0] for it in items], dtype=np.int64)
        dr = self.kind == "drift"
        d = np.abs(fr[a] - fr[b])
        near, far = win[a, 0], win[a, 1]
        self.same = np.where(dr, d <= near, self.same)
        self.scored &= ~dr | (d <= near) | (d >= far)

    def masks(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per scored kind: (pairs counted for precision, pairs counted for recall)."""
        sc = self.scored
        fixed = sc & (self.kind == "fixed")
        out = {"edits": (sc & (self.kind == "edits"),) * 2, "static": (fixed & self.same, fixed & self.same),
               "enter": (fixed, fixed), "places": (sc & (self.kind == "places"),) * 2,
               "moving": (sc & (self.kind == "moving"),) * 2, "drift": (sc & (self.kind == "drift"),) * 2}
        return out

    def metrics(self, labels: np.ndarray) -> dict[str, Any]:
        """Pair precision / recall per kind for one grouping (``labels[i]`` = group of image i)."""
        a, b = self.iu
        pred = labels[a] == labels[b]
        out: dict[str, Any] = {}
        for kind, (pm, rm) in self.masks().items():
            tp_p = int((pred & self.same & pm).sum())
            fp = int((pred & ~self.same & pm).sum())
            tp_r = int((pred & self.same & rm).sum())
            fn = int((~pred & self.same & rm).sum())
            out[kind] = {"precision": tp_p / (tp_p + fp) if tp_p + fp else None,
                         "recall": tp_r / (tp_r + fn) if tp_r + fn else None, "false_pairs": fp,
                         "missed_pairs": fn, "same_pairs": tp_r + fn}
        out["cross_false_pairs"] = int((pred & self.scored & (self.kind == "cross")).sum())
        fp = pred & ~self.same & self.scored & (self.set_of_pair != "")
        names, counts = np.unique(self.set_of_pair[fp], return_counts=True)
        out["false_pairs_by_set"] = {str(k): int(v) for k, v in zip(names, counts)}
        fn = ~pred & self.same & self.scored & (self.set_of_pair != "")
        names, counts = np.unique(self.set_of_pair[fn], return_counts=True)
        out["missed_pairs_by_set"] = {str(k): int(v) for k, v in zip(names, counts)}
        out["edit_recall_by_kind"] = {str(k): float(pred[self.edit_kind == k].mean())
                                      for k in np.unique(self.edit_kind) if k}
        by_set: dict[str, dict[str, Any]] = {}
        for name in np.unique(self.set_of_pair[self.set_of_pair != ""]):
            mk = self.scored & (self.set_of_pair == name)
            tp = int((pred & self.same & mk).sum())
            fp_n = int((pred & ~self.same & mk).sum())
            fn_n = int((~pred & self.same & mk).sum())
            by_set[str(name)] = {"precision": tp / (tp + fp_n) if tp + fp_n else None,
                                 "recall": tp / (tp + fn_n) if tp + fn_n else None, "false_pairs": fp_n,
                                 "missed_pairs": fn_n, "same_pairs": tp + fn_n}
        out["by_set"] = by_set
        return out


def meets(m: dict[str, Any]) -> dict[str, bool]:
    """Which targets a metrics row meets (a precision with no predicted pair counts as met)."""
    out = {}
    for kind, (metric, target) in TARGETS.items():
        v = m[kind][metric]
        out[kind] = (v is None and metric == "precision") or (v is not None and v >= target)
    return out


# ------------------------------------------------------------------------------------------------
# subprocess body: embed once through the product path
# ------------------------------------------------------------------------------------------------
def embed_real(model: str, data: Path = REAL_DATA) -> dict[str, Any]:
    """scan + embed the real set into a fresh catalog; save vectors, relative paths and the master rank."""
    import shutil

    from neardup.catalog import Catalog
    from neardup.embed import get_model
    from neardup.find import embed
    from neardup.sources import scan

    RAW.mkdir(parents=True, exist_ok=True)
    db = RAW / f"{model}.duckdb"
    for p in (db, Path(str(db) + ".wal")):
        p.unlink(missing_ok=True)
    shutil.rmtree(Path(str(db) + ".d"), ignore_errors=True)
    m = get_model(model)
    t0 = time.perf_counter()
    with Catalog(db) as cat:
        scan(cat, [data])
        embed(cat, m)
        seconds = time.perf_counter() - t0
        e = cat.load_embeddings(m.name)
        meta = cat.images(["id", "path"])
        path_of = dict(zip(meta["id"].to_pylist(), meta["path"].to_pylist()))
        rel = [Path(path_of[i]).resolve().relative_to(data.resolve()).as_posix() for i in e.ids.tolist()]
        np.save(RAW / f"{model}.vectors.npy", np.asarray(e.vectors))
        (RAW / f"{model}.paths.json").write_text(json.dumps(rel))
    return {"model": model, "images": len(rel), "embed_seconds": seconds}


def _rank(model: str, paths: list[str], data: Path) -> np.ndarray:
    """Master priority of each image under the catalog's default policy (what dedup uses)."""
    import pyarrow as pa

    from neardup.catalog import Catalog
    from neardup.policy import DEFAULT_POLICY, parse_policy, policy_columns, priority_rank

    policy = parse_policy(DEFAULT_POLICY)
    with Catalog(RAW / f"{model}.duckdb", read_only=True) as cat:
        have = set(cat.image_columns())
        meta = cat.images(sorted({"id", "path"} | {c for c in policy_columns(policy) if c in have}))
    rel = [Path(p).resolve().relative_to(data.resolve()).as_posix() for p in meta["path"].to_pylist()]
    pos = {p: i for i, p in enumerate(rel)}
    meta = meta.take(pa.array([pos[p] for p in paths]))
    return priority_rank(meta, policy)


def _aligned(model: str, data: Path) -> tuple[np.ndarray, list[str], list[Item]]:
    from neardup.similarity.canonical import canonical_vectors

    V = canonical_vectors(np.load(RAW / f"{model}.vectors.npy"))  # what a pass compares (exact dots)
    paths = json.loads((RAW / f"{model}.paths.json").read_text())
    lab = {it.path: it for it in read_labels(data / "labels.csv")}
    missing = [p for p in paths if p not in lab]
    if missing:
        raise SystemExit(f"{missing[0]}: not in {data / 'labels.csv'} (rebuild the data set)")
    return V, paths, [lab[p] for p in paths]


def design_sweep(model: str, data: Path = REAL_DATA) -> list[dict[str, Any]]:
    """Every mode x threshold (x bound) on the grid, scored per kind."""
    from neardup.grouping import group_nodes
    from neardup.similarity.exact import exact_forest

    V, paths, items = _aligned(model, data)
    truth = PairTruth(items)
    rank = _rank(model, paths, data)
    forest = exact_forest(np.ascontiguousarray(V, dtype=np.float32), min(GRID))
    from neardup.embed import get_model

    em = get_model(model)
    grid = sorted(set(GRID) | {em.default_threshold})
    bounds = sorted(set(BOUNDS) | ({em.default_bound} if em.default_bound else set()))
    rows = []
    for mode in ("components", "leader", "bounded"):
        for t in grid:
            for b in ([None] if mode != "bounded" else bounds):
                G = group_nodes(forest, V, t, rank, mode, b)
                m = truth.metrics(G.labels)
                rows.append({"mode": mode, "threshold": t, "bound": b, **m, "meets": meets(m)})
    return rows


def original_first(model: str, bounds: Sequence[float] = (0.75, 0.76, 0.80, 0.84), data: Path = REAL_DATA) -> list[dict[str, Any]]:
    """Bounded grouping at the model's threshold with each edit set's unedited photo ranked first as master.

    What a quality-first master policy aims at; shows how the bound's cost on edits depends on the
    master (the bound is measured to it). Elsewhere the catalog's default policy orders the masters.
    """
    from neardup.embed import get_model
    from neardup.grouping import group_nodes
    from neardup.similarity.exact import exact_forest

    V, paths, items = _aligned(model, data)
    truth = PairTruth(items)
    base = _rank(model, paths, data)
    order = np.lexsort((base, np.array([0 if "/originals/" in p else 1 for p in paths])))
    rank = np.empty(len(paths), np.int64)
    rank[order] = np.arange(len(paths))
    t = get_model(model).default_threshold
    forest = exact_forest(np.ascontiguousarray(V, dtype=np.float32), t)
    out = []
    for b in bounds:
        m = truth.metrics(group_nodes(forest, V, t, rank, "bounded", b).labels)
        out.append({"mode": "bounded", "threshold": t, "bound": b, "masters": "original first", **m})
    return out


def _labels_of(res: Any, paths: list[str], rel: dict[str, str]) -> np.ndarray:
    gid = {rel[i]: g for i, g in zip(res.members["image_id"].to_pylist(), res.members["group_id"].to_pylist())}
    return np.array([gid.get(p, -1 - k) for k, p in enumerate(paths)])


def _rel_paths(cat: Any, data: Path) -> dict[str, str]:
    meta = cat.images(["id", "path"])
    return {i: Path(p).resolve().relative_to(data.resolve()).as_posix()
            for i, p in zip(meta["id"].to_pylist(), meta["path"].to_pylist())}


def window_rows(model: str, windows: Sequence[float] = (0.5, 1.0, 2.0, 5.0),
                links: Sequence[float] = (0.88, 0.90, 0.92, 0.93, 0.94, 0.95, 0.96, 0.98), data: Path = REAL_DATA) -> list[dict[str, Any]]:
    """``dedup --dry-run --window W --window-link F --no-verify`` at the model's threshold and bound, over a grid
    (real times; the window alone: the geometric check only changes the untimed places, see the default rows)."""
    from neardup.catalog import Catalog
    from neardup.dedup import dedup
    from neardup.embed import get_model

    V, paths, items = _aligned(model, data)
    truth = PairTruth(items)
    m = get_model(model)
    out = []
    with Catalog(RAW / f"{model}.duckdb", read_only=True) as cat:
        rel = _rel_paths(cat, data)
        for w in windows:
            for f in links:
                res = dedup(cat, m.default_threshold, model=m.name, dry_run=True, window=w, window_link=f, verify=False)
                met = truth.metrics(_labels_of(res, paths, rel))
                out.append({"mode": "bounded + window", "threshold": m.default_threshold, "bound": res.summary["bound"],
                            "window_s": w, "far": f, **met, "meets": meets(met)})
    return out


def assigned_still_times(model: str, data: Path = REAL_DATA) -> dict[str, Any]:
    """The default grouping with each untimed look-alike still given a moment of its own (assigned, not read)."""
    from neardup.catalog import Catalog
    from neardup.dedup import plan_run, similarity_forest
    from neardup.embed import get_model

    V, paths, items = _aligned(model, data)
    truth = PairTruth(items)
    m = get_model(model)
    by_path = {it.path: it for it in items}
    with Catalog(RAW / f"{model}.duckdb", read_only=True) as cat:
        rel = _rel_paths(cat, data)
        plan = plan_run(cat, model=m.name)
        forest = similarity_forest(cat, m.default_threshold, scope=plan.scope, use_cache=False)
        times = plan.times.copy()
        assigned = 0
        for k, i in enumerate(plan.scope.ids.tolist()):
            it = by_path[rel[i]]
            if it.kind == "places" and np.isnan(times[k]):
                moment = it.loose or it.path          # a stereo pair: one instant; every other still its own
                times[k] = 1e6 * (1 + int(hashlib.sha1(moment.encode()).hexdigest()[:6], 16))
                assigned += 1
        plan.times = times
        g = plan.group_at(forest, m.default_threshold)[0]
    node_path = [rel[i] for i in plan.scope.ids.tolist()]
    pos = {p: k for k, p in enumerate(node_path)}
    labels = np.array([g.labels[pos[p]] for p in paths])
    met = truth.metrics(labels)
    return {"mode": "bounded + window, stills given times", "threshold": m.default_threshold, "bound": plan.bound,
            "window_s": plan.window_s, "far": plan.window_link, "assigned": assigned, **met, "meets": meets(met)}


def timed_counts(model: str, data: Path = REAL_DATA) -> dict[str, list[int]]:
    """Per set: [images with a capture time read by scan, images]."""
    from neardup.catalog import Catalog

    _, paths, items = _aligned(model, data)
    with Catalog(RAW / f"{model}.duckdb", read_only=True) as cat:
        rel = _rel_paths(cat, data)
        t = cat.images(["id", "captured_at"])
        have = {rel[i]: c is not None for i, c in zip(t["id"].to_pylist(), t["captured_at"].to_pylist())}
    out: dict[str, list[int]] = {}
    for it in items:
        c = out.setdefault(f"{it.kind}/{it.set}", [0, 0])
        c[0] += int(have.get(it.path, False))
        c[1] += 1
    return out


def default_run(model: str, data: Path = REAL_DATA, **options: Any) -> dict[str, Any]:
    """The product path with the model's defaults: ``dedup(catalog, model=...)`` dry run, scored
    (``options``: e.g. ``window=0`` for the plain bounded grouping, the default before capture times)."""
    from neardup.catalog import Catalog
    from neardup.dedup import dedup
    from neardup.embed import get_model

    V, paths, items = _aligned(model, data)
    m = get_model(model)
    with Catalog(RAW / f"{model}.duckdb", read_only=True) as cat:
        t0 = time.perf_counter()
        res = dedup(cat, m.default_threshold, model=m.name, dry_run=True, **options)
        seconds = time.perf_counter() - t0
        rel = _rel_paths(cat, data)
    metrics = PairTruth(items).metrics(_labels_of(res, paths, rel))
    return {"threshold": res.threshold, "mode": res.mode, "bound": res.summary.get("bound"),
            "window_s": res.summary.get("window_s"), "far": res.summary.get("window_link"),
            "grouping": res.summary.get("grouping"), "geometric_check": res.summary.get("geometric_check"),
            "seconds": seconds, **metrics,
            "meets": meets(metrics), "largest_groups": res.summary.get("largest_groups")}


def similarity_quantiles(model: str, data: Path = REAL_DATA) -> dict[str, dict[str, float]]:
    """Pair similarity per (kind, same/different): min, 5th percentile, median, max."""
    V, _, items = _aligned(model, data)
    truth = PairTruth(items)
    a, b = truth.iu
    s = np.einsum("ij,ij->i", V[a], V[b])
    out = {}
    for kind in ("edits", "fixed", "moving", "drift", "places", "cross"):
        for same in (True, False):
            mk = truth.scored & (truth.kind == kind) & (truth.same == same)
            if mk.any():
                v = s[mk]
                out[f"{kind} {'same' if same else 'different'}"] = {
                    "pairs": int(mk.sum()), "min": float(v.min()), "p05": float(np.quantile(v, .05)),
                    "median": float(np.median(v)), "p95": float(np.quantile(v, .95)), "max": float(v.max())}
    return out


# ------------------------------------------------------------------------------------------------
# driver and report
# ------------------------------------------------------------------------------------------------
def best_rows(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per mode, the configuration with the highest worst-target margin (min over targets of value - target)."""
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        margin = min((r[k][metric] if r[k][metric] is not None else 1.0) - target
                     for k, (metric, target) in TARGETS.items())
        r["margin"] = margin
        if r["mode"] not in best or margin > best[r["mode"]]["margin"]:
            best[r["mode"]] = r
    return best


def run(models: Sequence[str], *, rebuild: bool = False, out: Path = RESULT, reuse: bool = False) -> dict[str, Any]:
    """Build (if needed) and embed the sets, sweep the designs and score the defaults; write ``out``."""
    if rebuild or not (REAL_DATA / "labels.csv").exists():
        build_real(REAL_DATA)
    items = read_labels(REAL_DATA / "labels.csv")
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "command": " ".join(["python", "bench/quality.py", *sys.argv[1:]]), "images": len(items),
        "groups": len({i.group for i in items}), "sets": {}, "models": {}}
    for it in items:
        report["sets"].setdefault(f"{it.kind}/{it.set}", 0)
        report["sets"][f"{it.kind}/{it.set}"] += 1
    for model in models:
        if reuse and (RAW / f"{model}.paths.json").exists():
            info = {"model": model, "images": len(json.loads((RAW / f"{model}.paths.json").read_text())),
                    "embed_seconds": None}
        else:
            r = subprocess.run([sys.executable, str(ROOT / "bench" / "quality.py"), "--_real", model],
                               capture_output=True, text=True)
            if r.returncode != 0:
                report["models"][model] = {"error": (r.stderr.strip().splitlines() or ["failed"])[-1]}
                continue
            info = json.loads(r.stdout.strip().splitlines()[-1])
        rows = design_sweep(model)
        best = best_rows(rows)
        # the sweep, compact: per kind [precision, recall, false pairs, missed pairs]
        slim = [{"mode": r["mode"], "threshold": r["threshold"], "bound": r["bound"], "margin": round(r["margin"], 4),
                 **{k: [None if r[k][x] is None else round(r[k][x], 4) for x in ("precision", "recall")]
                    + [r[k]["false_pairs"], r[k]["missed_pairs"]] for k in SCORED}} for r in rows]
        report["models"][model] = {**info, "default": default_run(model), "no_check": default_run(model, verify=False),
                                   "before": default_run(model, window=0),
                                   "best": best, "original_first": original_first(model),
                                   "window": window_rows(model), "stills_given_times": assigned_still_times(model),
                                   "timed": timed_counts(model),
                                   "quantiles": similarity_quantiles(model), "sweep": slim, "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = {**report, "models": {k: {x: y for x, y in v.items() if x != "rows"} for k, v in report["models"].items()}}
    out.write_text(json.dumps(saved, default=float, separators=(",", ":")) + "\n")
    return report


def _f(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def row_cells(r: dict[str, Any]) -> str:
    """Markdown cells: the five kinds' precision / recall and the false pairs between sets."""
    return (f"{_f(r['edits']['precision'])} / **{_f(r['edits']['recall'])}** | **{_f(r['static']['recall'])}** | "
            f"**{_f(r['enter']['precision'])}** ({r['enter']['false_pairs']}) | **{_f(r['places']['precision'])}** "
            f"({r['places']['false_pairs']}) | {_f(r['moving']['precision'])} / {_f(r['moving']['recall'])} | "
            f"{_f(r['drift']['precision'])} / {_f(r['drift']['recall'])} | {r['cross_false_pairs']}")


HEADER = ("| edits P / **R** | static **R** | enter **P** (false pairs) | places **P** (false pairs) | "
          "moving P / R | drift P / R | false pairs between sets |")


def picks_for(model: str, default: dict[str, Any]) -> list[tuple[str, float, float | None]]:
    """The configurations each model's table shows beside its default."""
    t, b = default["threshold"], default.get("bound") or 0.84
    return [("components", t, None), ("leader", t, None), ("bounded", t, 0.70), ("bounded", t, 0.80),
            ("bounded", t, 0.84), ("bounded", t, 0.90), ("components", 0.86, None), ("components", 0.92, None),
            ("components", 0.94, None)]


def markdown(report: dict[str, Any], picks: Sequence[tuple[str, float, float | None]] | None = None) -> str:
    """Tables: defaults, best configuration per mode, chosen configurations, similarity quantiles."""
    lines = [f"{report['images']} images in {report['groups']} groups, {report['date']}, {report['machine']}",
             f"command: `{report['command']}`", "",
             "Sets: " + ", ".join(f"{k} {v}" for k, v in sorted(report["sets"].items())), ""]
    for model, m in report["models"].items():
        if "error" in m:
            lines += [f"### {model}: not run ({m['error']})", ""]
            continue
        d = m["default"]
        bf = m.get("before")
        nc = m.get("no_check")
        lines += [f"### {model}", "", "| configuration | " + HEADER[2:], "|---|---|---|---|---|---|---|---|",
                  f"| **default**: {d.get('grouping') or d['mode']} t={d['threshold']:.2f}, capture times read by scan"
                  + f" | {row_cells(d)}"]
        if nc:
            lines.append(f"| the default without the geometric check (`--no-verify`): {nc.get('grouping') or nc['mode']} "
                         f"t={nc['threshold']:.2f} | {row_cells(nc)}")
        if bf:
            lines.append(f"| before (the default without capture times): {bf.get('grouping') or bf['mode']} "
                         f"t={bf['threshold']:.2f} | {row_cells(bf)}")
        st = m.get("stills_given_times")
        if st:
            lines.append(f"| default, {st['assigned']} untimed look-alike stills given a moment each (assigned, not "
                         f"read) | {row_cells(st)}")
        for mode, r in m["best"].items():
            lines.append(f"| best {mode}: t={r['threshold']:.2f}" + (f" bound={r['bound']:.2f}" if r["bound"] else "")
                         + f" | {row_cells(r)}")
        for mode, t, b in (picks if picks is not None else picks_for(model, d)):
            for r in m.get("rows", []):
                if r["mode"] == mode and abs(r["threshold"] - t) < 1e-9 and (r["bound"] == b or (
                        b is not None and r["bound"] is not None and abs(r["bound"] - b) < 1e-9)):
                    lines.append(f"| {mode} t={t:.2f}" + (f" bound={b:.2f}" if b else "") + f" | {row_cells(r)}")
        for r in m.get("original_first", []):
            lines.append(f"| bounded t={r['threshold']:.2f} bound={r['bound']:.2f}, the unedited photo as master "
                         f"| {row_cells(r)}")
        for r in m.get("window", []):
            if r["window_s"] == 1.0 or r["far"] == 0.95:
                lines.append(f"| window {r['window_s']:g} s, linked across it from {r['far']:.2f} (bound "
                             f"{r['bound']:.2f}; no geometric check) | {row_cells(r)}")
        if m.get("timed"):
            lines += ["", "Images with a capture time read by scan, per set: " + ", ".join(
                f"{k} {v[0]}/{v[1]}" for k, v in sorted(m["timed"].items())) + "."]
        if d.get("geometric_check") is not None:
            gc = d["geometric_check"]
            lines += ["", f"Geometric check at the default: {gc['pairs_checked']} untimed pairs checked, {gc['rejected']} "
                      f"rejected; dedup --dry-run {d['seconds']:.1f} s with it, {nc['seconds']:.1f} s without "
                      "(shared machine: see the load where quoted)." if nc else ""]
        if nc and d.get("by_set"):
            bf = nc
            lines += ["", "Per set, without the geometric check → default (pair precision P, recall R; false / missed pairs):", "",
                      "| set | P before | P default | R before | R default | false pairs | missed pairs |",
                      "|---|---|---|---|---|---|---|"]
            for name in sorted(d["by_set"]):
                a, b = bf["by_set"].get(name, {}), d["by_set"][name]
                lines.append(f"| {name} | {_f(a.get('precision'))} | {_f(b['precision'])} | {_f(a.get('recall'))} | "
                             f"{_f(b['recall'])} | {a.get('false_pairs', '—')} → {b['false_pairs']} | "
                             f"{a.get('missed_pairs', '—')} → {b['missed_pairs']} |")
        lines += ["", "At the default: false pairs by set " + json.dumps(d["false_pairs_by_set"]) + "; missed pairs by set "
                  + json.dumps(d["missed_pairs_by_set"]) + "; recall of each edit kind (copy grouped with its original) "
                  + json.dumps({k: round(v, 3) for k, v in d["edit_recall_by_kind"].items()}) + "."]
        lines += ["", "Pair similarity (min / p05 / median / p95 / max):", "", "| pairs | n | min | p05 | median | p95 | max |",
                  "|---|---|---|---|---|---|---|"]
        for k, q in m["quantiles"].items():
            lines.append(f"| {k} | {q['pairs']} | {q['min']:.3f} | {q['p05']:.3f} | {q['median']:.3f} | {q['p95']:.3f} | {q['max']:.3f} |")
        lines.append("")
    return "\n".join(lines)
