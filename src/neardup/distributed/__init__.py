"""Ray backend: the similarity pass as tiles on a Ray cluster, and embedding as Ray Data batches.

``ray_forest`` splits the upper triangle of the similarity matrix into (row block x column block)
tiles, runs the exact tile kernel (:mod:`neardup.distributed.tiles`) on each as a Ray task and
merges the tiles' local forests on the driver with Kruskal (``merge_forests``): only O(tile) edges
travel per task, and the result is the forest of the single-machine exact pass. The vectors are
put in the object store once (``ray.put``; workers read them zero-copy), never copied per task.

A local cluster is started when none is running (``ray.init(num_cpus=...)``), or the one named
by ``RAY_ADDRESS`` is joined. Install with ``pip install 'neardup[ray]'``.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import NeardupError
from ..similarity.canonical import canonical_vectors
from ..similarity.forest import SimilarityForest, hist_bins, merge_forests
from .tiles import TileScanner, tile_forest, upper_tiles

ProgressFn = Callable[[int, int], None]
RAY_MISSING = "Ray is not installed: install with pip install 'neardup[ray]'"


class RayMissingError(NeardupError, ImportError):
    """Ray is not installed (the CLI prints this one line and exits non-zero)."""


def _ray() -> Any:
    try:
        import ray  # noqa: F401
    except ImportError as e:
        raise RayMissingError(RAY_MISSING) from e
    return ray


def _ensure_ray(num_cpus: int | None) -> bool:
    """Connect to RAY_ADDRESS or start a local cluster; True when this call started it."""
    ray = _ray()
    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, include_dashboard=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False)
    return True


def _open(X: Any) -> np.ndarray:
    """The task's view of the vectors: the object-store array, or a memory map of a shared .npy."""
    return np.load(X, mmap_mode="r") if isinstance(X, str) else X


def _tile_task(X: Any, floor: float, rows: tuple[int, int], cols: tuple[int, int]):
    import numba

    numba.set_num_threads(1)  # one Ray CPU per task: do not oversubscribe the worker
    X = _open(X)
    t, c = time.perf_counter(), time.process_time()
    s, d, w, h = tile_forest(X, floor, rows, cols)
    return s, d, w, h, (time.perf_counter() - t, time.process_time() - c), _tile_pairs(rows, cols)


def _partition_task(X: np.ndarray, probes: np.ndarray, floor: float, qs: np.ndarray):
    import numba

    from ..similarity.ann import _partition_forest

    numba.set_num_threads(1)
    X = _open(X)
    t, c = time.perf_counter(), time.process_time()
    s, d, w, compared = _partition_forest(X, probes, floor, None, only=qs)
    return s, d, w, compared, (time.perf_counter() - t, time.process_time() - c)


def _npy_path(vectors: np.ndarray) -> str | None:
    """Path of the .npy file when ``vectors`` is a memory map of that whole file's array, else None."""
    fn = getattr(vectors, "filename", None) if isinstance(vectors, np.memmap) else None
    if fn is None or not str(fn).endswith(".npy"):
        return None
    try:
        whole = np.load(fn, mmap_mode="r")
    except Exception:
        return None
    if (whole.shape != vectors.shape or whole.dtype != np.float32 or vectors.dtype != np.float32
            or whole.strides != vectors.strides or len(whole) == 0
            or not (np.array_equal(whole[0], vectors[0]) and np.array_equal(whole[-1], vectors[-1]))):
        return None
    return str(fn)


def _share(vectors: np.ndarray, share: str) -> Any:
    ray = _ray()
    if share not in ("auto", "object_store", "mmap"):
        raise ValueError(f"share {share!r}: use auto, object_store or mmap")
    path = _npy_path(vectors) if share in ("auto", "mmap") else None
    if share == "mmap" and path is None:
        raise ValueError("share='mmap' needs the vectors as a memory map of a whole float32 .npy file")
    if path is not None:
        return path
    return ray.put(np.ascontiguousarray(vectors, dtype=np.float32))


class _Merger:
    """Accumulates edges from tasks and compacts them with Kruskal so memory stays O(N)."""

    def __init__(self, n: int, floor: float) -> None:
        self.n, self.floor = n, floor
        self.forests: list[SimilarityForest] = []
        self.pending = 0

    def add(self, s: np.ndarray, d: np.ndarray, w: np.ndarray, h: np.ndarray | None) -> None:
        self.forests.append(SimilarityForest(self.n, s, d, w, self.floor,
                                             h if h is not None else np.zeros(hist_bins(self.floor), np.int64)))
        self.pending += len(s)
        if self.pending > 4 * self.n + 1_000_000:
            self.forests = [merge_forests(self.forests, self.n)]
            self.pending = len(self.forests[0].src)

    def result(self) -> SimilarityForest:
        if not self.forests:
            return SimilarityForest(self.n, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32),
                                    self.floor, np.zeros(hist_bins(self.floor), np.int64))
        return merge_forests(self.forests, self.n)


def _tile_pairs(rows: tuple[int, int], cols: tuple[int, int]) -> int:
    a, b = rows
    c, d = cols
    if c <= a:  # diagonal tile: pairs (i, j) with j > i inside [c, d)
        return (b - a) * (d - 1) - (b * (b - 1) // 2 - a * (a - 1) // 2)
    return (b - a) * (d - c)


def _drain(refs: list, on_result: Callable[[Any], None], max_in_flight: int, submit: Callable[[], Any | None]) -> None:
    ray = _ray()
    in_flight = list(refs)
    while True:
        while len(in_flight) < max_in_flight:
            r = submit()
            if r is None:
                break
            in_flight.append(r)
        if not in_flight:
            return
        done, in_flight = ray.wait(in_flight, num_returns=1)
        on_result(ray.get(done[0]))


def ray_forest(vectors: np.ndarray, floor: float, index: str = "exact", progress: ProgressFn | None = None, *,
               tile_rows: int = 4096, tile_cols: int = 16384, num_cpus: int | None = None,
               recall_sample: int = 2000, share: str = "auto") -> SimilarityForest:
    """The similarity forest of ``vectors`` computed as Ray tasks (exact tiles, or ANN partitions).

    ``index="exact"``: identical components, histogram and weights to ``exact_forest`` (the
    vectors are canonical, so every blocking computes the same exact similarities). ``share``: how tasks see the
    vectors: ``"object_store"`` (``ray.put`` once; zero-copy in workers on each node),
    ``"mmap"`` (each task memory-maps the ``.npy`` behind a ``np.memmap``/``np.load(mmap_mode=)``
    array, which must be on storage every node can read; nothing is copied, the only option when
    the vectors exceed a node's object store) or ``"auto"`` (mmap when the vectors are a
    file-backed ``.npy`` memory map, else object store). ``index="ann"``:
    :func:`neardup.similarity.ann.ann_forest` (the same partition, probes and recall-driven
    retries) with each try's partition tiles run as tasks; partitioning and the recall estimate
    run on the driver. ``meta`` records tiles, the tasks' summed wall and
    CPU seconds (Ray runs workers at nice 15: on a shared machine their wall time says little)
    and the driver's wall time.
    """
    ray = _ray()
    if index not in ("exact", "ann", "auto"):
        raise ValueError(f"index {index!r}: use exact, ann or auto")
    if index == "auto":
        from ..dedup import AUTO_EXACT_MAX

        index = "exact" if len(vectors) <= AUTO_EXACT_MAX else "ann"
    given, vectors = vectors, canonical_vectors(vectors)
    if vectors is not given and share == "mmap":
        raise ValueError("share='mmap' needs canonical vectors in the file (as the catalog stores them): "
                         "save neardup.similarity.canonical.canonical_vectors(X) and map that")
    n = int(vectors.shape[0])
    if n < 2:
        return SimilarityForest(n, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), float(floor),
                                np.zeros(hist_bins(floor), np.int64), {"engine": "ray", "index": index})
    started = _ensure_ray(num_cpus)
    try:
        t0 = time.perf_counter()
        X_ref = _share(vectors, share)
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        merger = _Merger(n, float(floor))
        task_s: list[tuple[float, float]] = []  # (wall, cpu) seconds per task
        if index == "exact":
            tiles = upper_tiles(n, tile_rows, tile_cols)
            total = n * (n - 1) // 2
            done = [0]
            remote = ray.remote(num_cpus=1)(_tile_task)
            it = iter(tiles)

            def submit():
                nxt = next(it, None)
                return None if nxt is None else remote.remote(X_ref, float(floor), *nxt)

            def on_result_p(res):
                s, d, w, h, sec, npairs = res
                merger.add(s, d, w, h)
                task_s.append(sec)
                if progress is not None:
                    done[0] += npairs
                    progress(min(done[0], total), total)

            _drain([], on_result_p, 2 * cpus, submit)
            forest = merger.result()
            forest.meta = {"engine": "ray", "index": "exact", "tiles": len(tiles), "tile_rows": tile_rows,
                           "tile_cols": tile_cols, "cluster_cpus": cpus, "task_seconds_sum": round(sum(x[0] for x in task_s), 2),
                           "task_cpu_seconds_sum": round(sum(x[1] for x in task_s), 2),
                           "wall_seconds": round(time.perf_counter() - t0, 2)}
            if progress is not None:
                progress(total, total)
            return forest
        # ANN: the single-process pass (two-level partition, probes doubled while the measured
        # recall misses its goal, recall on the driver) with its partitions' tiles as Ray tasks
        from ..similarity.ann import ann_forest

        tasks = [0]

        def ray_tiles(X: np.ndarray, probes: np.ndarray, fl: float, prog: ProgressFn | None):
            P = int(probes.max()) + 1
            probes_ref = ray.put(probes)
            ngroups = max(1, min(P, 8 * cpus))
            groups = iter(np.array_split(np.arange(P), ngroups))
            remote = ray.remote(num_cpus=1)(_partition_task)
            out: list = [[], [], [], 0]
            done = [0]

            def submit():
                nxt = next(groups, None)
                return None if nxt is None else remote.remote(X_ref, probes_ref, fl, nxt)

            def on_result(res):
                s, d, w, c, sec = res
                out[0].append(s)
                out[1].append(d)
                out[2].append(w)
                out[3] += c
                task_s.append(sec)
                done[0] += 1
                if prog is not None:
                    prog(done[0], ngroups)

            _drain([], on_result, 2 * cpus, submit)
            tasks[0] += ngroups
            if not out[0]:
                return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), 0
            return np.concatenate(out[0]), np.concatenate(out[1]), np.concatenate(out[2]), out[3]

        forest = ann_forest(vectors, floor, progress=progress, recall_sample=recall_sample, tiles=ray_tiles)
        forest.meta.update({"engine": "ray", "index": "ann", "tasks": tasks[0], "cluster_cpus": cpus,
                            "task_seconds_sum": round(sum(x[0] for x in task_s), 2),
                            "task_cpu_seconds_sum": round(sum(x[1] for x in task_s), 2),
                            "wall_seconds": round(time.perf_counter() - t0, 2)})
        return forest
    finally:
        if started:
            ray.shutdown()


def ray_embed(paths: Sequence[str], model_name: str, batch_size: int = 64, *, concurrency: int | None = None
              ) -> np.ndarray:
    """Embed images as Ray Data ``map_batches`` over their paths; rows in the order of ``paths``.

    One model actor per cluster CPU by default (``concurrency``); each loads the model once.
    Unit-norm float32, ``(len(paths), dim)``.
    """
    ray = _ray()
    from ..embed import get_model

    get_model(model_name).check_usable()  # one-line error on the driver, before any task starts

    started = _ensure_ray(None)
    try:
        import ray.data

        class _Embedder:
            def __init__(self) -> None:
                from ..embed import get_model as gm

                self.model = gm(model_name)

            def __call__(self, batch: dict) -> dict:
                vecs = self.model.embed_files([str(p) for p in batch["path"]])
                return {"pos": batch["pos"], "vector": np.asarray(vecs, dtype=np.float32)}

        ds = ray.data.from_items([{"pos": i, "path": str(p)} for i, p in enumerate(paths)])
        if concurrency is None:
            concurrency = max(1, int(ray.cluster_resources().get("CPU", 1)))
        out = ds.map_batches(_Embedder, batch_size=batch_size, concurrency=concurrency, num_cpus=1).take_all()
        out.sort(key=lambda r: r["pos"])
        return np.stack([r["vector"] for r in out]) if out else np.zeros((0, 0), np.float32)
    finally:
        if started:
            ray.shutdown()


__all__ = ["ray_forest", "ray_embed", "RayMissingError", "tile_forest", "upper_tiles", "TileScanner", "RAY_MISSING"]
