"""Throughput: end-to-end ``scan + embed`` images/s vs bare onnxruntime on pre-decoded tensors.

    .venv/bin/python bench/throughput.py --model sscd --n 256 --repeats 3

Builds ``--n`` distinct camera-sized JPEGs (default 2000×1500, from scikit-image's photos with a
per-file crop offset and noise so no two are byte-identical) in ``bench/results/raw/throughput``.
Then, alternating in each repeat so that background load hits both alike:

- **bare**: the model's onnxruntime session on tensors decoded and resized beforehand
  (batch ``--batch-size``), i.e. the model alone;
- **scan, then embed**: a fresh catalog, ``neardup scan`` (hash, decode, thumbnail, brightness)
  then ``neardup embed`` (read, hash check and decode again in a thread pool, batches through the
  same session, commits);
- **find path** (``scan_and_embed``, what ``neardup find`` and ``demo`` run): one read and decode
  per file feeding both the scan and the model, the model on one chunk while the pool decodes
  the next.

Prints medians and the ratio; ``--memory`` also runs the find path in subprocesses at n and 4n
images and prints each peak RSS (flat = streamed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RAW = ROOT / "bench" / "results" / "raw" / "throughput"


def make_images(n: int, size: tuple[int, int]) -> Path:
    from PIL import Image

    from neardup.samples import load_photo

    d = RAW / f"photos_{n}_{size[0]}x{size[1]}"
    if d.exists() and len(list(d.glob("*.jpg"))) == n:
        return d
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    bases = [load_photo(p).resize((int(size[0] * 1.1), int(size[1] * 1.1)), Image.BICUBIC)
             for p in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "stereo_motorcycle")]
    for i in range(n):
        b = bases[i % len(bases)]
        x, y = int(rng.integers(0, b.width - size[0])), int(rng.integers(0, b.height - size[1]))
        a = np.asarray(b.crop((x, y, x + size[0], y + size[1])), dtype=np.int16)
        a = a + rng.integers(-3, 4, size=a.shape, dtype=np.int16)
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(d / f"img_{i:05d}.jpg", quality=90)
    return d


def cpu_s() -> float:
    """CPU seconds used by this process so far, all threads (onnxruntime's and the decode pool's)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def fresh_catalog_path(tag: str) -> Path:
    """A catalog path under RAW with no catalog (or sidecar folder) left from an earlier repeat."""
    db = RAW / f"{tag}.duckdb"
    db.unlink(missing_ok=True)
    shutil.rmtree(Path(str(db) + ".d"), ignore_errors=True)
    return db


def bare(model, tensors: np.ndarray, batch: int) -> float:
    t0 = time.perf_counter()
    for s in range(0, len(tensors), batch):
        model.embed_prepared(list(tensors[s:s + batch]))
    return len(tensors) / (time.perf_counter() - t0)


def fused(model_name: str, photos: Path, batch: int, tag: str = "fused") -> float:
    """``scan_and_embed`` (what ``neardup find``/``demo`` run): one read and decode per file."""
    from neardup.catalog import Catalog
    from neardup.find import scan_and_embed

    db = fresh_catalog_path(tag)
    t0 = time.perf_counter()
    with Catalog(db) as cat:
        _, er = scan_and_embed(cat, [photos], model_name, batch_size=batch)
    return er.embedded / (time.perf_counter() - t0)


def end_to_end(model_name: str, photos: Path, batch: int, tag: str = "e2e") -> tuple[float, float, float]:
    from neardup.catalog import Catalog
    from neardup.find import embed
    from neardup.sources import scan

    db = fresh_catalog_path(tag)
    t0 = time.perf_counter()
    with Catalog(db) as cat:
        scan(cat, [photos])
        t1 = time.perf_counter()
        er = embed(cat, model_name, batch_size=batch)
    t2 = time.perf_counter()
    n = er.embedded
    return n / (t2 - t0), t1 - t0, t2 - t1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="sscd")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--size", default="2000x1500")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--_e2e", help=argparse.SUPPRESS)
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    if args._e2e:
        rate = fused(args.model, Path(args._e2e), args.batch_size, tag=f"mem_{Path(args._e2e).name}")
        print(json.dumps({"rate": rate, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return
    from neardup.embed import get_model
    from neardup.embed.base import load_rgb

    photos = make_images(args.n, size)
    m = get_model(args.model)
    files = sorted(str(p) for p in photos.glob("*.jpg"))
    tensors = np.stack([m.prepare(load_rgb(f, m.input_size)) for f in files])
    m.embed_prepared(list(tensors[:2]))  # session warm-up
    bares, e2es, scans, embeds, fuseds = [], [], [], [], []
    cpu = {"bare": [], "fused": [], "two_step": []}
    n = len(files)
    for _ in range(args.repeats):
        c0 = cpu_s()
        bares.append(bare(m, tensors, args.batch_size))
        c1 = cpu_s()
        fuseds.append(fused(args.model, photos, args.batch_size))
        c2 = cpu_s()
        r, ts, te = end_to_end(args.model, photos, args.batch_size)
        c3 = cpu_s()
        e2es.append(r), scans.append(ts), embeds.append(te)
        cpu["bare"].append(1000 * (c1 - c0) / n)
        cpu["fused"].append(1000 * (c2 - c1) / n)
        cpu["two_step"].append(1000 * (c3 - c2) / n)
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f} at the end",
           "command": " ".join(["python", "bench/throughput.py", *sys.argv[1:]]), "model": args.model, "n": args.n,
           "size": args.size, "bare_img_s": bares, "e2e_img_s": e2es, "scan_s": scans, "embed_s": embeds,
           "fused_img_s": fuseds, "bare_median": statistics.median(bares), "e2e_median": statistics.median(e2es),
           "fused_median": statistics.median(fuseds),
           "ratio_median": statistics.median(e / b for e, b in zip(e2es, bares)),
           "fused_ratio_median": statistics.median(f / b for f, b in zip(fuseds, bares)),
           "cpu_ms_per_image": cpu,
           "cpu_ratio_fused": statistics.median(cpu["bare"]) / statistics.median(cpu["fused"]),
           "cpu_ratio_two_step": statistics.median(cpu["bare"]) / statistics.median(cpu["two_step"])}
    if args.memory:
        mem = {}
        for n in (args.n, 4 * args.n):
            ph = make_images(n, size)
            r = subprocess.run([sys.executable, __file__, "--model", args.model, "--batch-size", str(args.batch_size),
                                "--_e2e", str(ph)], capture_output=True, text=True)
            mem[n] = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {"error": r.stderr[-300:]}
        out["memory"] = mem
    RAW.mkdir(parents=True, exist_ok=True)
    dest = ROOT / "bench" / "results" / f"throughput-{args.model}-{args.size}.json"
    dest.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
