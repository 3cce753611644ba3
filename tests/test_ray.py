"""Ray tiles give the same forest as the single-machine exact pass (local 2-CPU cluster)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

from neardup.distributed import ray_forest  # noqa: E402
from neardup.similarity.exact import exact_forest  # noqa: E402
from neardup.similarity.canonical import canonical_vectors  # noqa: E402
from neardup.synthetic import seed_shaped  # noqa: E402
from reference import canonical_f64  # noqa: E402


@pytest.fixture(scope="session")
def ray_cluster():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield
    ray.shutdown()


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    return len(np.unique(np.stack([a, b], 1), axis=0)) == len(np.unique(a)) == len(np.unique(b))


def test_ray_tiles_identical_to_exact_20k(ray_cluster):
    X = seed_shaped(20_000, 128, seed=21).vectors
    floor = 0.96
    fr = ray_forest(X, floor, tile_rows=2048, tile_cols=8192)
    fe = exact_forest(X, floor)
    assert fr.meta["engine"] == "ray" and fr.meta["tiles"] > 10
    assert np.array_equal(fr.hist, fe.hist)                    # every pair counted once
    assert len(fr.src) == len(fe.src)
    assert np.array_equal(np.sort(fr.weight), np.sort(fe.weight))  # exact similarities, any tiling
    for t in (0.96, 0.975, 0.98, 0.99, 0.995):
        assert np.array_equal(fr.components(t), fe.components(t)), t
    # and against the brute-force reference at 0.98 (blocked exact float64 + scipy)
    C = canonical_f64(X)
    Is, Js = [], []
    for a in range(0, len(X), 4096):
        S = C[a:a + 4096] @ C.T
        i, j = np.nonzero(S >= 0.98)
        k = j > i + a
        Is.append(i[k] + a)
        Js.append(j[k])
    i, j = np.concatenate(Is), np.concatenate(Js)
    ref = connected_components(coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(len(X),) * 2), directed=False)[1]
    assert same_partition(fr.components(0.98), ref)
    assert fr.pair_count(0.98) == len(i)


def test_ray_ann_partitions(ray_cluster):
    """The Ray ANN pass is the single-process one (same two-level partition, probes and retries)
    with its tiles as tasks: the same forest; and against the exact pass."""
    from neardup.similarity.ann import ann_forest

    X = seed_shaped(4_000, 64, seed=22).vectors
    f = ray_forest(X, 0.97, index="ann", recall_sample=500)
    assert f.meta["engine"] == "ray" and f.meta["index"] == "ann" and f.meta["tasks"] >= 1
    assert f.meta["method"].startswith("two-level") and f.meta["tries"][0]["nprobe"] == 2
    assert f.meta["recall"]["pair_recall"] >= 0.995
    fl = ann_forest(X, 0.97, recall_sample=500)
    assert len(f.src) == len(fl.src) and np.array_equal(np.sort(f.weight), np.sort(fl.weight))
    for t in (0.97, 0.98, 0.99):
        assert np.array_equal(f.components(t), fl.components(t)), t
    fe = exact_forest(X, 0.97)
    assert same_partition(f.components(0.98), fe.components(0.98))


def test_compute_forest_dispatches_to_ray(ray_cluster):
    from neardup.dedup import compute_forest

    X = seed_shaped(3_000, 64, seed=23).vectors
    f = compute_forest(X, 0.98, engine="ray")
    assert np.array_equal(f.components(0.98), exact_forest(X, 0.98).components(0.98))


def test_ray_tiles_from_a_memory_mapped_npy(ray_cluster, tmp_path):
    """share='mmap': tasks memory-map the file instead of receiving a copy."""
    X = canonical_vectors(seed_shaped(3_000, 64, seed=24).vectors)  # as the catalog stores them
    np.save(tmp_path / "v.npy", X)
    M = np.load(tmp_path / "v.npy", mmap_mode="r")
    calls = []
    f = ray_forest(M, 0.97, share="mmap", tile_rows=512, tile_cols=1024, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (3000 * 2999 // 2,) * 2 and all(a[0] <= b[0] for a, b in zip(calls, calls[1:]))
    fe = exact_forest(X, 0.97)
    assert np.array_equal(f.hist, fe.hist)
    assert np.array_equal(f.components(0.98), fe.components(0.98))
    with pytest.raises(ValueError):
        ray_forest(np.asarray(X), 0.97, share="mmap")
    raw = seed_shaped(300, 64, seed=24).vectors
    np.save(tmp_path / "raw.npy", raw)
    with pytest.raises(ValueError, match="canonical"):
        ray_forest(np.load(tmp_path / "raw.npy", mmap_mode="r"), 0.97, share="mmap")


def test_ray_embed_matches_local_embedding(ray_cluster):
    """Ray Data map_batches over image paths = the model's own embed_files, in path order."""
    import skimage

    from neardup.distributed import ray_embed
    from neardup.embed import get_model

    model = get_model("sscd-distilled")
    if not model.availability().usable:
        pytest.skip("sscd-distilled weights not available")
    data = os.path.join(os.path.dirname(skimage.__file__), "data")
    paths = [os.path.join(data, f) for f in ("astronaut.png", "camera.png", "coffee.png", "chelsea.png", "rocket.jpg")]
    paths = [p for p in paths if os.path.exists(p)]
    V = ray_embed(paths, "sscd-distilled", batch_size=2)
    ref = model.embed_files(paths)
    assert V.shape == ref.shape
    assert np.allclose(V, ref, atol=1e-4)
