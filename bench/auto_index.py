"""Where `--index auto` should switch: the exact and the ANN pass side by side, in one process.

    .venv/bin/python bench/auto_index.py 25000 50000 100000 200000

For each size: seed-shaped vectors (``neardup.synthetic.seed_shaped``, canonical), then
``exact_forest`` and ``ann_forest`` at floor 0.98 one after the other (kernels warmed on a small
set first), wall and CPU seconds and the load average. The limit in ``neardup/dedup.py``
(``AUTO_EXACT_MAX``) is where exact stops being the faster pass; results in docs/benchmarks-scale.md.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [25_000, 50_000, 100_000, 200_000]
    from neardup.similarity.ann import ann_forest
    from neardup.similarity.canonical import canonical_vectors
    from neardup.similarity.exact import exact_forest
    from neardup.synthetic import seed_shaped

    warm = canonical_vectors(seed_shaped(20_000, seed=1).vectors)
    exact_forest(warm, 0.98)
    ann_forest(warm, 0.98)
    out = {}
    for n in sizes:
        X = canonical_vectors(seed_shaped(n, seed=0).vectors)
        for kind, fn in (("exact", exact_forest), ("ann", ann_forest)):
            t, c = time.perf_counter(), cpu()
            fn(X, 0.98)
            out[f"{n}-{kind}"] = {"wall_s": round(time.perf_counter() - t, 2), "cpu_s": round(cpu() - c, 2),
                                  "load": round(os.getloadavg()[0], 2)}
            print(n, kind, out[f"{n}-{kind}"], flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
