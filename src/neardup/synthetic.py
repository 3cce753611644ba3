"""Seed-shaped synthetic collections for tests and benchmarks.

The seed: 12,217 images, at cosine 0.98 -> 450 groups, 10,054 suppressed, 2,163 retained; the
largest group (6,810) is one camera view captured thousands of times and *chained* (its ends
look nothing alike); plus hard negatives just under the threshold. The generator reproduces that
shape at any size, CLIP-like: images fall in scene clusters (pairwise cosine ~0.7 inside one),
duplicate groups are jittered copies of one view, the giant group walks a great circle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SEED_N = 12_217


@dataclass
class Collection:
    """Vectors (unit-norm float32), ids, and per-image score/brightness/cluster/planted group."""

    ids: np.ndarray
    vectors: np.ndarray
    score: np.ndarray
    brightness: np.ndarray
    scene: np.ndarray
    planted: np.ndarray  # planted group per image (-1 = planted singleton)

    def meta_table(self):  # -> pa.Table
        import pyarrow as pa

        return pa.table({"id": pa.array(self.ids.tolist(), pa.string()), "score": self.score,
                         "brightness": self.brightness})


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def seed_shaped(n: int = SEED_N, dim: int = 512, *, seed: int = 0, scenes: int = 25, giant_fraction: float = 0.5574,
                giant_span: float = 4.0, jitter: float = 0.07, hard_negatives: float = 0.05,
                shuffle: bool = True) -> Collection:
    """A collection shaped like the seed's at size ``n`` (see the module docstring).

    ``giant_span`` is the arc (radians) the giant group's camera view walks; smaller makes the
    giant group denser (more pairs per member, the worst case for pair extraction).
    """
    rng = np.random.default_rng(seed)
    a = 0.85                      # weight of the scene direction: same-scene images have cosine ~a^2
    b = np.sqrt(1 - a * a)
    centroids = _unit(rng.standard_normal((scenes, dim)))
    n_giant = int(round(giant_fraction * n))
    n_groups = max(1, int(round(0.03675 * n)))
    n_group_members = int(round(0.3024 * n))
    n_single = n - n_giant - n_group_members
    if n_single < 0 or n_group_members < 2 * n_groups:
        raise ValueError(f"n={n} is too small for a seed-shaped collection")

    def view(scene: np.ndarray, content: np.ndarray) -> np.ndarray:
        return a * centroids[scene] + b * content

    def jittered(base: np.ndarray, scale: float) -> np.ndarray:
        return _unit(base + scale * rng.standard_normal(base.shape) / np.sqrt(dim))

    vecs, scene_of, planted = [], [], []
    # the giant chained group: one scene, content walking a great circle
    sc = 0
    p, q = _unit(rng.standard_normal((2, dim)))
    q = _unit(q - (q @ p) * p)
    theta = np.sort(rng.uniform(0, giant_span, n_giant))
    content = np.cos(theta)[:, None] * p + np.sin(theta)[:, None] * q
    vecs.append(jittered(view(np.full(n_giant, sc), content), jitter))
    scene_of.append(np.full(n_giant, sc))
    planted.append(np.zeros(n_giant, dtype=np.int64))
    # the other duplicate groups: heavy-tailed sizes >= 2
    sizes = 2 + rng.zipf(1.9, n_groups).clip(max=max(2, n_group_members // 10)) - 1
    sizes = np.maximum(2, np.round(sizes * (n_group_members / sizes.sum()))).astype(int)
    sizes[0] += n_group_members - sizes.sum()
    while sizes.min() < 2:
        k = int(np.argmin(sizes))
        j = int(np.argmax(sizes))
        sizes[j] -= 2 - sizes[k]
        sizes[k] = 2
    g_scene = rng.integers(0, scenes, n_groups)
    g_content = _unit(rng.standard_normal((n_groups, dim)))
    for g, size in enumerate(sizes):
        base = view(np.full(size, g_scene[g]), np.repeat(g_content[g:g + 1], size, axis=0))
        vecs.append(jittered(base, jitter * rng.uniform(0.6, 1.2)))
        scene_of.append(np.full(size, g_scene[g]))
        planted.append(np.full(size, g + 1, dtype=np.int64))
    # singletons, some of them hard negatives: the same view moved just below the threshold
    s_scene = rng.integers(0, scenes, n_single)
    s_content = _unit(rng.standard_normal((n_single, dim)))
    n_hard = int(hard_negatives * n_single)
    if n_hard:
        g = rng.integers(0, n_groups, n_hard)
        s_scene[:n_hard] = g_scene[g]
        off = _unit(rng.standard_normal((n_hard, dim)))
        off = _unit(off - (off * g_content[g]).sum(1, keepdims=True) * g_content[g])
        ang = rng.uniform(0.42, 0.6, n_hard)  # content angle: overall cosine ~0.94-0.97 to the group
        s_content[:n_hard] = np.cos(ang)[:, None] * g_content[g] + np.sin(ang)[:, None] * off
    vecs.append(jittered(view(s_scene, s_content), jitter))
    scene_of.append(s_scene)
    planted.append(np.full(n_single, -1, dtype=np.int64))

    X = np.concatenate(vecs).astype(np.float32)
    scene_arr = np.concatenate(scene_of)
    planted_arr = np.concatenate(planted)
    order = rng.permutation(n) if shuffle else np.arange(n)
    X, scene_arr, planted_arr = X[order], scene_arr[order], planted_arr[order]
    ids = np.asarray([f"img{i:07d}" for i in range(n)], dtype=object)
    score = np.round(rng.uniform(0, 5, n), 1)          # coarse, so ties happen and tie-breaks matter
    brightness = np.round(rng.uniform(0.1, 0.9, n), 3)
    return Collection(ids, _unit(X), score, brightness, scene_arr, planted_arr)


def sparse_shaped(n: int, dim: int = 512, *, seed: int = 0, scenes: int | None = None, dup_fraction: float = 0.04,
                  mean_group: float = 3.0, jitter: float = 0.07, scene_weight: float = 0.85) -> Collection:
    """A collection with sparse duplicates: mostly distinct images, ``dup_fraction`` of them in small groups.

    The opposite of :func:`seed_shaped` for the exact pass: no giant chained group, so few pairs
    are near the floor. Images fall in scene clusters as there (cosine ~0.72 inside one; one
    scene per ~2,000 images unless ``scenes`` is given); duplicate groups are jittered copies of
    one view, sizes 2 + geometric (mean ``mean_group``). ``scene_weight`` (a) sets how tight a
    scene is: cosine ~a^2 inside one (0.95: many tight clusters, which the exact pass's ball test
    separates).
    """
    rng = np.random.default_rng(seed)
    scenes = scenes or max(25, n // 2000)
    a = float(scene_weight)
    b = np.sqrt(1 - a * a)
    centroids = _unit(rng.standard_normal((scenes, dim)))
    sizes: list[int] = []
    want = int(round(dup_fraction * n))
    while sum(sizes) < want:
        sizes.append(min(2 + int(rng.geometric(1.0 / max(mean_group - 1.0, 1.0))) - 1, want - sum(sizes) + 1))
    if sizes and sum(sizes) > want:
        sizes[-1] -= sum(sizes) - want
        if sizes[-1] < 2:
            sizes.pop()
    n_groups = len(sizes)
    n_single = n - sum(sizes)
    g_scene = rng.integers(0, scenes, n_groups)
    g_content = _unit(rng.standard_normal((max(n_groups, 1), dim)))
    vecs, scene_of, planted = [], [], []
    for g, size in enumerate(sizes):
        base = a * centroids[np.full(size, g_scene[g])] + b * np.repeat(g_content[g:g + 1], size, axis=0)
        vecs.append(_unit(base + jitter * rng.uniform(0.6, 1.2) * rng.standard_normal(base.shape) / np.sqrt(dim)))
        scene_of.append(np.full(size, g_scene[g]))
        planted.append(np.full(size, g, dtype=np.int64))
    s_scene = rng.integers(0, scenes, n_single)
    vecs.append(_unit(a * centroids[s_scene] + b * _unit(rng.standard_normal((n_single, dim)))))
    scene_of.append(s_scene)
    planted.append(np.full(n_single, -1, dtype=np.int64))
    order = rng.permutation(n)
    X = np.concatenate(vecs).astype(np.float32)[order]
    ids = np.asarray([f"img{i:07d}" for i in range(n)], dtype=object)
    return Collection(ids, _unit(X), np.round(rng.uniform(0, 5, n), 1), np.round(rng.uniform(0.1, 0.9, n), 3),
                      np.concatenate(scene_of)[order], np.concatenate(planted)[order])
