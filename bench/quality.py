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
    from neardup.find import embed
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
    ap.add_argument("--masters", action="store_true",
                    help="run the which-copy-is-kept benchmark instead (results/masters.json; see masters_bench); "
                         "with --reuse: re-score its scanned + embedded catalogs")
    ap.add_argument("--draws", type=int, default=2, help="--masters: families per photo")
    args = ap.parse_args()
    if args.masters:
        masters_bench(args.seed, args.draws, [m for m in args.models.split(",") if m][0], reuse=args.reuse)
        return
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


# -- which copy is kept (issue 11) ---------------------------------------------------------------

#: policies compared: the seed's rule, the default, and ablations of the default
MASTER_POLICIES = {
    "seed: score,brightness": "score,brightness",
    "default": None,
    "default without central": "score,border,content,jpeg_quality,colour,sharpness,clipped,brightness",
    "measures first, then central": "score,border,content,jpeg_quality,colour,sharpness,clipped,central,brightness",
    "central before jpeg_quality": "score,border,content,central,jpeg_quality,colour,sharpness,clipped,brightness",
    "content before border": "score,content,border,jpeg_quality,central,colour,sharpness,clipped,brightness",
    "central only": "score,central,brightness",
    "resolution,file_size": "score,resolution,file_size",
}
#: how copies are saved: "editor" — at a quality drawn from 75-90 (what editors and apps write; the
#: original is a q95 camera JPEG); "same" — every copy at the original's q95 (only pixels differ)
REGIMES = {"editor": (75, 90), "same": (95, 95)}


def masters_bench(seed: int, draws: int, model: str, reuse: bool = False) -> None:
    """Families of one original + its degraded copies: is the kept copy the original (or its flip)?

    Each regime runs the product path on a fresh catalog (scan, which measures; embed with
    ``model``) and then scores every policy twice: on the true families (``select_masters`` over
    the ground-truth groups, ``central`` over them too) and through ``dedup`` (dry run, the
    model's default threshold): there a family counts as kept right when the group holding
    its original has the original or its flip as master.
    """
    import shutil

    from neardup.catalog import Catalog
    from neardup.dedup import dedup
    from neardup.embed import get_model
    from neardup.find import embed
    from neardup.policy import DEFAULT_POLICY, decided_by, group_centrality, parse_policy, policy_columns, priority_rank, \
        select_masters
    from neardup.samples import DEGRADATIONS, build_degraded, read_labels
    from neardup.sources import scan

    m = get_model(model)
    out: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": m.name,
                 "threshold": m.default_threshold, "draws": draws, "seed": seed,
                 "command": " ".join(["python", "bench/quality.py", *sys.argv[1:]]), "regimes": {}}
    for regime, cq in REGIMES.items():
        root = RAW / "masters" / regime
        db = root / "catalog.duckdb"
        fresh = not (reuse and db.exists())
        if fresh:
            shutil.rmtree(root, ignore_errors=True)
            build_degraded(root / "photos", seed=seed, draws=draws, copy_quality=cq)
        labels = read_labels(root / "photos" / "labels.csv")
        kind_of = {str((root / "photos" / r["path"]).resolve()): (r["group"], r["kind"]) for r in labels}
        t0 = time.perf_counter()
        with Catalog(db) as cat:
            if fresh:
                scan(cat, [root / "photos"])
                embed(cat, m)
            seconds = time.perf_counter() - t0
            es = cat.load_embeddings(m.name)
            all_cols = sorted(set(policy_columns(parse_policy("score,quality,brightness,resolution,file_size")))
                              | {"path"})
            have = set(cat.image_columns())
            meta = cat.images([c for c in all_cols if c in have])
            pos = {k: i for i, k in enumerate(meta["id"].to_pylist())}
            meta = meta.take(np.array([pos[i] for i in es.ids.tolist()]))
            fam = [kind_of[p] for p in meta["path"].to_pylist()]
            groups = sorted({g for g, _ in fam})
            gidx = {g: i for i, g in enumerate(groups)}
            true_labels = np.array([gidx[g] for g, _ in fam])
            # labels must be node indices of a member (as dedup's are): the first node of each family
            first = {}
            for n, lab in enumerate(true_labels):
                first.setdefault(lab, n)
            true_labels = np.array([first[lab] for lab in true_labels])
            meta_true = meta.append_column("central", pa_array(group_centrality(es.vectors, true_labels, es.ids)))
            res_regime: dict = {"copy_quality": list(cq), "images": len(fam), "families": len(groups),
                                "scan_embed_seconds": round(seconds, 1) if fresh else None, "policies": {}}
            for name, spec in MASTER_POLICIES.items():
                pol = parse_policy(spec or DEFAULT_POLICY)
                rank = priority_rank(meta_true, pol)
                master = select_masters(true_labels, rank)
                dec = decided_by(true_labels, master, meta_true, pol)
                kept = {fam[first_n][0]: fam[master[first_n]][1] for first_n in set(true_labels.tolist())}
                decided = {}
                for first_n in set(true_labels.tolist()):
                    decided[str(dec[first_n])] = decided.get(str(dec[first_n]), 0) + 1
                ok = sum(k in ("original", "flip") for k in kept.values())
                # the product path: dedup's own groups at the model's default threshold
                r = dedup(cat, m.default_threshold, model=m.name, prefer=spec or DEFAULT_POLICY, dry_run=True)
                mem = r.members.to_pylist()
                path_of = dict(zip(meta["id"].to_pylist(), meta["path"].to_pylist()))
                sizes = _count(x["group_id"] for x in mem)
                masters = [x["image_id"] for x in mem if x["is_master"] and sizes[x["group_id"]] >= 2]
                ok_dedup = sum(kind_of[path_of[i]][1] in ("original", "flip") for i in masters)
                merged = sum(len({kind_of[path_of[x["image_id"]]][0] for x in mem if x["group_id"] == g}) > 1
                             for g, n in sizes.items() if n >= 2)
                # the groups that hold an original: is an original (or a flip) their master?
                with_orig = {x["group_id"] for x in mem if sizes[x["group_id"]] >= 2
                             and kind_of[path_of[x["image_id"]]][1] == "original"}
                ok_with_orig = sum(kind_of[path_of[x["image_id"]]][1] in ("original", "flip")
                                   for x in mem if x["is_master"] and x["group_id"] in with_orig)
                res_regime["policies"][name] = {
                    "policy": ",".join(k for k, _ in pol),
                    "true_groups_kept_original": ok, "true_groups_rate": round(ok / len(kept), 4),
                    "kept_kind": dict(sorted(_count(kept.values()).items(), key=lambda kv: -kv[1])),
                    "decided_by": dict(sorted(decided.items(), key=lambda kv: -kv[1])),
                    "dedup_kept_original": ok_dedup, "dedup_rate": round(ok_dedup / max(1, len(masters)), 4),
                    "dedup_groups": len(masters), "dedup_groups_mixing_families": merged,
                    "dedup_groups_with_original": len(with_orig), "dedup_kept_original_when_present": ok_with_orig,
                    "dedup_mode": r.summary.get("mode"), "dedup_bound": r.summary.get("bound"),
                }
            # what each measure says, original vs each kind (how often the original is better / equal / worse)
            res_regime["pairwise"] = _pairwise(meta_true, fam, list(DEGRADATIONS))
        out["regimes"][regime] = res_regime
    path = ROOT / "bench" / "results" / "masters.json"
    path.write_text(json.dumps(out, indent=1))
    print(masters_markdown(out))


def pa_array(x: np.ndarray):
    import pyarrow as pa

    return pa.array(x)


def _count(values) -> dict:
    c: dict = {}
    for v in values:
        c[v] = c.get(v, 0) + 1
    return c


def _pairwise(meta, fam, kinds) -> dict:
    """Per policy key and degradation: families where the original's key value is better / equal / worse."""
    from neardup.policy import POLICY_KEYS, key_values

    keys = ["content", "colour", "jpeg_quality", "border", "clipped", "sharpness", "central", "brightness", "file_size"]
    vals = {k: key_values(meta, k, POLICY_KEYS[k].descending) for k in keys}   # smaller is better
    where = {(g, k): n for n, (g, k) in enumerate(fam)}
    out: dict = {}
    for key in keys:
        row = {}
        for kind in kinds:
            b = e = w = 0
            for (g, k), n in where.items():
                if k != kind or (g, "original") not in where:
                    continue
                o, c = vals[key][where[(g, "original")]], vals[key][n]
                b += o < c
                e += o == c
                w += o > c
            row[kind] = [int(b), int(e), int(w)]
        out[key] = row
    return out


def masters_markdown(out: dict) -> str:
    lines = [f"model {out['model']} at its default threshold {out['threshold']}, {out['draws']} families per photo, "
             f"{out['date']}; command: `{out['command']}`"]
    for regime, r in out["regimes"].items():
        lines += ["", f"**{regime}** (copies saved at JPEG quality {r['copy_quality'][0]}-{r['copy_quality'][1]}, "
                  f"original at 95): {r['families']} families, {r['images']} images", "",
                  "| policy | true families: master is the original or flip | dedup's groups holding an original: master is an original or flip | dedup's groups: master is an original or flip | kept instead (true families) | decided by (true families) |",
                  "|---|---|---|---|---|---|"]
        for name, p in r["policies"].items():
            n = r["families"]
            other = ", ".join(f"{k} {v}" for k, v in p["kept_kind"].items() if k not in ("original", "flip")) or "—"
            dec = ", ".join(f"{k} {v}" for k, v in p["decided_by"].items())
            lines.append(f"| {name} | {p['true_groups_kept_original']}/{n} ({100 * p['true_groups_rate']:.1f}%) | "
                         f"{p['dedup_kept_original_when_present']}/{p['dedup_groups_with_original']} | "
                         f"{p['dedup_kept_original']}/{p['dedup_groups']} ({100 * p['dedup_rate']:.1f}%) | {other} | {dec} |")
        kinds = list(next(iter(r["pairwise"].values())))
        lines += ["", "Original vs each copy, per key (families where the original is better / equal / worse):", "",
                  "| key | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
        for key, row in r["pairwise"].items():
            lines.append(f"| {key} | " + " | ".join("/".join(map(str, row[k])) for k in kinds) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
