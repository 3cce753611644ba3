"""Run one peer near-duplicate finder on a folder; print JSON {groups, seconds, peak_rss_mb, error}.

Runs inside bench/.peers-venv (made by bench/quality.py), never in neardup's own venv.
``groups`` maps each file's path relative to the folder to a group number (connected components
of the pairs the method calls duplicates). Methods:

- ``imagededup-phash``: imagededup's PHash, ``max_distance_threshold=10`` (its default)
- ``imagededup-cnn``: imagededup's CNN, ``min_similarity_threshold=0.9`` (its default)
- ``imagehash-phash``: imagehash.phash (64-bit), pairs with Hamming distance <= 10
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import types
from pathlib import Path


def _components(names: list[str], pairs: list[tuple[str, str]]) -> dict[str, int]:
    parent = {n: n for n in names}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots: dict[str, int] = {}
    return {n: roots.setdefault(find(n), len(roots)) for n in names}


def _stub_torchvision_for_hashing() -> None:
    """imagededup imports its CNN models (torchvision) even for hashing; the hashing code needs none."""
    try:
        import torchvision  # noqa: F401
        return
    except Exception:
        pass
    for k in [k for k in sys.modules if k.startswith("torchvision")]:
        del sys.modules[k]
    models = types.ModuleType("imagededup.utils.models")
    models.CustomModel = object
    models.DEFAULT_MODEL_NAME = "default_model"
    sys.modules["imagededup.utils.models"] = models
    cnn = types.ModuleType("imagededup.methods.cnn")
    cnn.CNN = None
    sys.modules["imagededup.methods.cnn"] = cnn


def run(method: str, folder: Path) -> dict:
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg"))
    t0 = time.perf_counter()
    pairs: list[tuple[str, str]] = []
    if method == "imagehash-phash":
        import imagehash
        from PIL import Image

        hashes = {}
        for f in files:
            with Image.open(folder / f) as im:
                hashes[f] = imagehash.phash(im)
        import numpy as np

        bits = np.array([h.hash.flatten() for h in hashes.values()], dtype=np.uint8)
        d = (bits[:, None, :] != bits[None, :, :]).sum(-1)
        keys = list(hashes)
        ii, jj = np.nonzero(np.triu(d <= 10, 1))
        pairs = [(keys[i], keys[j]) for i, j in zip(ii, jj)]
    elif method == "imagededup-phash":
        _stub_torchvision_for_hashing()
        from imagededup.methods.hashing import PHash

        ph = PHash(verbose=False)
        enc = ph.encode_images(image_dir=str(folder), recursive=True)
        dups = ph.find_duplicates(encoding_map=enc, max_distance_threshold=10)
        pairs = [(a, b) for a, bs in dups.items() for b in bs]
        files = sorted(set(files) | set(enc))
    elif method == "imagededup-cnn":
        from imagededup.methods import CNN

        cnn = CNN(verbose=False)
        enc = cnn.encode_images(image_dir=str(folder), recursive=True)
        dups = cnn.find_duplicates(encoding_map=enc, min_similarity_threshold=0.9)
        pairs = [(a, b) for a, bs in dups.items() for b in bs]
    else:
        raise SystemExit(f"unknown method {method}")
    seconds = time.perf_counter() - t0
    groups = _components(files, [(a, b) for a, b in pairs if a in files and b in files])
    return {"groups": groups, "seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


if __name__ == "__main__":
    method, folder = sys.argv[1], Path(sys.argv[2])
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    try:
        out = run(method, folder)
    except Exception as exc:  # report, don't hide: the parent prints the error in the table
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        out = {"error": f"{type(exc).__name__}: {msg}"[:300]}
    print(json.dumps(out))
