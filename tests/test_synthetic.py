"""neardup.synthetic.sparse_shaped: the sparse-duplicate benchmark set is what its docstring says."""

from __future__ import annotations

import numpy as np
import pytest

from neardup.synthetic import sparse_shaped


@pytest.mark.parametrize("scene_weight", [0.85, 0.95])
def test_sparse_shaped_plants_small_groups_in_scenes(scene_weight):
    c = sparse_shaped(3000, 128, seed=2, scenes=6, scene_weight=scene_weight)
    X = np.asarray(c.vectors, dtype=np.float64)
    assert X.shape == (3000, 128) and len(set(c.ids.tolist())) == 3000
    assert np.allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    planted = c.planted
    groups, sizes = np.unique(planted[planted >= 0], return_counts=True)
    assert abs(sizes.sum() - 0.04 * 3000) <= 1 and sizes.min() >= 2  # 4% of the rows, in groups of 2 or more
    S = X @ X.T
    same_group = (planted[:, None] == planted[None, :]) & (planted[:, None] >= 0)
    np.fill_diagonal(same_group, False)
    assert S[same_group].min() > 0.9  # copies of one view
    same_scene = (c.scene[:, None] == c.scene[None, :]) & ~same_group
    np.fill_diagonal(same_scene, False)
    a2 = scene_weight ** 2  # distinct images of one scene: cosine ~ a^2
    assert abs(np.median(S[same_scene]) - a2) < 0.03
    assert np.median(S[~same_scene & ~same_group]) < 0.1  # different scenes: unrelated
