"""Similarity passes (exact blocks, ANN, Ray tiles) that all produce a :class:`SimilarityForest`."""

from .exact import exact_forest
from .forest import SimilarityForest, merge_forests

__all__ = ["SimilarityForest", "exact_forest", "merge_forests"]
