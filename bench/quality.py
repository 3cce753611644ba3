"""Labelled near-duplicate quality benchmark: neardup's models vs imagededup and imagehash.

    .venv/bin/python bench/quality.py                  # build data, run everything, print tables
    .venv/bin/python bench/quality.py --no-peers       # neardup's models only

The data (``bench/results/raw/quality/photos``) comes from :mod:`neardup.samples`: scikit-image's
bundled photos used whole, plus 3×3 tiles of two large ones (Hubble deep field, retina) as extra
*distinct* originals (hard negatives: tiles of one star field look alike), each with ``--copies``
independently drawn copies of every edit (JPEG, resize, brightness, flip, ≤10% crop, 2–5°
rotation, caption) and burst frames for six photos. Ground truth: a file's group is its source.

Every method runs in its own subprocess (wall time and peak RSS are its own). neardup's models
run the product path (scan + embed + dedup dry-run at the model's default threshold, components
mode); the peers run in ``bench/.peers-venv`` (created here; imagededup needs torch, pinned to
the local CPU build ``torch==2.13.0``). Metrics: pair precision / recall over all same-group
pairs, adjusted Rand index of the grouping, recall per edit kind (edit grouped with its
original), and the target subset (JPEG/resize/brightness/flip/crop). ``--calibrate`` also prints
each model's similarity quantiles per edit kind and a threshold table, as used for the
default thresholds (docs/models.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RAW = ROOT / "bench" / "results" / "raw" / "quality"
PEERS_VENV = ROOT / "bench" / ".peers-venv"
TARGET_KINDS = ("jpeg", "resize", "bright", "flip", "crop")
TILED_PREFIXES = ("hubble_deep_field_t", "retina_t")
BURST = ("astronaut", "coffee", "rocket", "camera", "moon", "hubble_deep_field_t11")


def build(copies: int, seed: int) -> Path:
    from neardup.samples import build_collection

    photos = RAW / "photos"
    build_collection(photos, seed=seed, tiles=True, copies=copies, burst=BURST, extras=False)
    return photos


def run_ours(model: str, photos: Path, mode: str = "components") -> dict:
    """Subprocess body: the product path on a fresh catalog; groups + vectors for calibration."""
    import shutil

    from neardup.catalog import Catalog
    from neardup.dedup import dedup
    from neardup.embed import get_model
    from neardup.pipeline import embed
    from neardup.sources import scan

    db = RAW / f"{model}.duckdb"
    for p in (db, Path(str(db) + ".wal")):
        if p.exists():
            p.unlink()
    shutil.rmtree(Path(str(db) + ".d"), ignore_errors=True)
    m = get_model(model)
    t0 = time.perf_counter()
    with Catalog(db) as cat:
        scan(cat, [photos])
        embed(cat, m)
        res = dedup(cat, m.default_threshold, model=m.name, mode=mode, dry_run=True)
        seconds = time.perf_counter() - t0
        members = res.members.to_pylist()
        e = cat.load_embeddings(m.name)
        np.save(RAW / f"{model}.vectors.npy", np.asarray(e.vectors))
        (RAW / f"{model}.ids.json").write_text(json.dumps(e.ids.tolist()))
    return {"groups": {r["image_id"]: int(r["group_id"]) for r in members}, "seconds": seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threshold": m.default_threshold}


def ensure_peers_venv() -> Path | None:
    py = PEERS_VENV / "bin" / "python"
    if not py.exists():
        print(f"creating {PEERS_VENV} (imagededup, imagehash, torch==2.13.0 CPU)…", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", "torch==2.13.0", "imagededup", "imagehash"])
        if r.returncode != 0:
            return None
    return py


def pair_metrics(truth: dict[str, str], groups: dict[str, int], labels: list[dict]) -> dict:
    files = sorted(truth)
    t = np.array([truth[f] for f in files])
    missing = [f for f in files if f not in groups]
    g = np.array([groups.get(f, -1 - i) for i, f in enumerate(files)])
    same_t = t[:, None] == t[None, :]
    same_g = g[:, None] == g[None, :]
    iu = np.triu_indices(len(files), 1)
    st, sg = same_t[iu], same_g[iu]
    tp = int((st & sg).sum())
    fp = int((~st & sg).sum())
    fn = int((st & ~sg).sum())
    # hard negatives: tiles of the same big photo
    parent = np.array([x.split("_t")[0] if x.startswith(("hubble_deep_field_t", "retina_t")) else x for x in t])
    sib = (parent[:, None] == parent[None, :])[iu] & ~st
    out = {"precision": tp / max(1, tp + fp), "recall": tp / max(1, tp + fn), "false_pairs": fp,
           "false_pairs_tile_siblings": int((sib & sg).sum()), "ari": ari(t, g), "missing": len(missing)}
    # per kind: is the edited copy in its original's group?
    orig = {r["group"]: r["path"] for r in labels if r["kind"] == "original"}
    gi = {f: groups.get(f) for f in files}
    kinds: dict[str, list[bool]] = {}
    for r in labels:
        if r["kind"] == "original":
            continue
        k = r["kind"].split("-")[0]
        kinds.setdefault(k, []).append(gi[r["path"]] is not None and gi[r["path"]] == gi[orig[r["group"]]])
    out["recall_by_kind"] = {k: float(np.mean(v)) for k, v in sorted(kinds.items())}
    tk = [x for k in TARGET_KINDS for x in kinds.get(k, [])]
    out["recall_target_edits"] = float(np.mean(tk)) if tk else float("nan")
    return out


def ari(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index (Hubert & Arabie), from the contingency table."""
    from scipy.special import comb

    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    cont = np.zeros((ai.max() + 1, bi.max() + 1), dtype=np.int64)
    np.add.at(cont, (ai, bi), 1)
    s = comb(cont, 2).sum()
    sa, sb = comb(cont.sum(1), 2).sum(), comb(cont.sum(0), 2).sum()
    n = comb(len(a), 2)
    exp = sa * sb / n
    mx = (sa + sb) / 2
    return float((s - exp) / (mx - exp)) if mx != exp else 1.0


def calibrate(model: str, labels: list[dict]) -> dict:
    """Similarity quantiles per edit kind (vs the original) and pairwise P/R over thresholds."""
    V = np.load(RAW / f"{model}.vectors.npy")
    ids = json.loads((RAW / f"{model}.ids.json").read_text())
    pos = {k: i for i, k in enumerate(ids)}
    lab = {r["path"]: r for r in labels}
    orig = {r["group"]: r["path"] for r in labels if r["kind"] == "original"}
    per_kind: dict[str, list[float]] = {}
    for r in labels:
        if r["kind"] != "original":
            per_kind.setdefault(r["kind"].split("-")[0], []).append(float(V[pos[r["path"]]] @ V[pos[orig[r["group"]]]]))
    S = V @ V.T
    g = np.array([lab[i]["group"] for i in ids])
    parent = np.array([x.split("_t")[0] if x.startswith(("hubble_deep_field_t", "retina_t")) else x for x in g])
    iu = np.triu_indices(len(ids), 1)
    same = (g[:, None] == g[None, :])[iu]
    sib = (parent[:, None] == parent[None, :])[iu] & ~same
    s = S[iu]
    pos_s, neg_s, sib_s = s[same], s[~same & ~sib], s[sib]
    rows = []
    for t in (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8):
        tp, fp, fps = int((pos_s >= t).sum()), int((neg_s >= t).sum()), int((sib_s >= t).sum())
        rows.append({"t": t, "pair_recall": tp / len(pos_s), "fp_distinct_photos": fp, "fp_tile_siblings": fps,
                     "precision_excl_siblings": tp / max(1, tp + fp)})
    return {"per_kind": {k: {"min": float(np.min(v)), "p10": float(np.quantile(v, .1)), "median": float(np.median(v))}
                         for k, v in sorted(per_kind.items())},
            "neg_distinct_max": float(neg_s.max()), "neg_distinct_p999": float(np.quantile(neg_s, .999)),
            "neg_sibling_max": float(sib_s.max()) if len(sib_s) else None,
            "neg_sibling_median": float(np.median(sib_s)) if len(sib_s) else None, "thresholds": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="sscd,sscd-distilled",
                    help="neardup models; NAME:leader runs dedup in leader mode instead of components")
    ap.add_argument("--peers", default="imagededup-phash,imagededup-cnn,imagehash-phash")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "quality.json"))
    ap.add_argument("--real", action="store_true",
                    help="real labelled sets (bench/datasets.py): per-kind targets and grouping designs (quality_real.py)")
    ap.add_argument("--reuse", action="store_true", help="with --real: reuse the vectors of the last --real run")
    ap.add_argument("--_run", help=argparse.SUPPRESS)
    ap.add_argument("--_real", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._real or args.real:
        real_main(args)
        return
    if args._run:
        name, _, mode = args._run.partition(":")
        print(json.dumps(run_ours(name, RAW / "photos", mode or "components")))
        return
    from neardup.samples import read_labels

    RAW.mkdir(parents=True, exist_ok=True)
    photos = build(args.copies, args.seed)
    labels = read_labels(photos / "labels.csv")
    truth = {r["path"]: r["group"] for r in labels}
    print(f"{len(truth)} images, {len(set(truth.values()))} distinct originals", file=sys.stderr)
    results: dict[str, dict] = {}
    env = dict(os.environ)
    for model in [m for m in args.models.split(",") if m]:
        r = subprocess.run([sys.executable, __file__, "--_run", model], capture_output=True, text=True, env=env)
        results[model] = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {"error": r.stderr.strip().splitlines()[-1]}
    if not args.no_peers:
        py = ensure_peers_venv()
        for peer in [p for p in args.peers.split(",") if p]:
            if py is None:
                results[peer] = {"error": "peers venv could not be installed"}
                continue
            r = subprocess.run([str(py), str(ROOT / "bench" / "peers_runner.py"), peer, str(photos)],
                               capture_output=True, text=True, timeout=3600)
            try:
                results[peer] = json.loads(r.stdout.strip().splitlines()[-1])
            except Exception:
                results[peer] = {"error": (r.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    table = []
    for name, r in results.items():
        row = {"method": name, **{k: v for k, v in r.items() if k != "groups"}}
        if "groups" in r:
            row.update(pair_metrics(truth, r["groups"], labels))
            whole = {f: g for f, g in truth.items() if not g.startswith(TILED_PREFIXES)}
            sub = pair_metrics(whole, r["groups"], [x for x in labels if x["path"] in whole])
            row["whole_photos"] = {k: sub[k] for k in ("precision", "recall", "recall_target_edits", "ari", "false_pairs")}
        table.append(row)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
              "command": " ".join(["python", "bench/quality.py", *sys.argv[1:]]), "images": len(truth),
              "originals": len(set(truth.values())),
              "whole_images": sum(1 for g in truth.values() if not g.startswith(TILED_PREFIXES)), "results": table}
    if args.calibrate:
        report["calibration"] = {m: calibrate(m, labels) for m in args.models.split(",")
                                 if m and ":" not in m and "error" not in results.get(m, {})}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(markdown(report))


def real_main(args: argparse.Namespace) -> None:
    """``--real``: the issue-11 targets on real labelled sets (see bench/quality_real.py)."""
    import quality_real

    if args._real:
        print(json.dumps(quality_real.embed_real(args._real)))
        return
    report = quality_real.run([m for m in args.models.split(",") if m and ":" not in m], reuse=args.reuse)
    print(quality_real.markdown(report))


def markdown(report: dict) -> str:
    lines = [f"{report['images']} images ({report['originals']} distinct originals), {report['date']}, {report['machine']}",
             f"command: `{report['command']}`", "",
             "| method | threshold | pair precision | pair recall | recall (JPEG/resize/bright/flip/crop) | ARI | false pairs (of which tile siblings) | wall s | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['method']} | — | not run: {r['error']} | | | | | | |")
            continue
        th = r.get("threshold", "default")
        lines.append(f"| {r['method']} | {th} | {r['precision']:.4f} | {r['recall']:.4f} | {r['recall_target_edits']:.4f} | "
                     f"{r['ari']:.4f} | {r['false_pairs']} ({r['false_pairs_tile_siblings']}) | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} |")
    lines += ["", f"Whole photos only ({report.get('whole_images', '?')} images: the tiles and their edits left out of the scoring, "
              "same runs):", "",
              "| method | pair precision | pair recall | recall (JPEG/resize/bright/flip/crop) | ARI | false pairs |",
              "|---|---|---|---|---|---|"]
    for r in report["results"]:
        w = r.get("whole_photos")
        if w:
            lines.append(f"| {r['method']} | {w['precision']:.4f} | {w['recall']:.4f} | {w['recall_target_edits']:.4f} | "
                         f"{w['ari']:.4f} | {w['false_pairs']} |")
    kinds = sorted({k for r in report["results"] for k in r.get("recall_by_kind", {})})
    if kinds:
        lines += ["", "Recall per edit kind (edited copy grouped with its original):", "",
                  "| method | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
        for r in report["results"]:
            if "recall_by_kind" in r:
                lines.append(f"| {r['method']} | " + " | ".join(f"{r['recall_by_kind'].get(k, float('nan')):.3f}" for k in kinds) + " |")
    for m, c in (report.get("calibration") or {}).items():
        lines += ["", f"Calibration, {m}: similarity of each edit to its original (min / p10 / median)", "",
                  "| edit | min | p10 | median |", "|---|---|---|---|"]
        for k, q in c["per_kind"].items():
            lines.append(f"| {k} | {q['min']:.3f} | {q['p10']:.3f} | {q['median']:.3f} |")
        lines += ["", f"different photos: max {c['neg_distinct_max']:.3f}, 99.9th percentile {c['neg_distinct_p999']:.3f}; "
                  f"tiles of the same star field / retina: max {c['neg_sibling_max']:.3f}, median {c['neg_sibling_median']:.3f}", "",
                  "| t | pair recall | false pairs (different photos) | false pairs (tile siblings) | precision excl. siblings |",
                  "|---|---|---|---|---|"]
        for row in c["thresholds"]:
            lines.append(f"| {row['t']:.2f} | {row['pair_recall']:.4f} | {row['fp_distinct_photos']} | {row['fp_tile_siblings']} | {row['precision_excl_siblings']:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
