"""Stage 2, initial centroids: k-means++ (weighted by colour counts), the seed's random rule, or a file.

Every random choice takes ``seed``, so a run is reproducible.
"""

from __future__ import annotations

import numpy as np

from .formats import read_clusters
from .colours import ColourTable
from .errors import InputError


def effective_k(k: int, table: ColourTable) -> int:
    """Clusters actually used: ``k``, or the number of distinct colours if the image has fewer."""
    return min(k, len(table))


def kmeans_plusplus(table: ColourTable, k: int, seed: int) -> np.ndarray:
    """Greedy k-means++ on the weighted table (scikit-learn's, with the counts as sample weights)."""
    from sklearn.cluster import kmeans_plusplus as sk_kmeans_plusplus

    centroids, _ = sk_kmeans_plusplus(
        table.bgr(), n_clusters=k, sample_weight=table.counts.astype(np.float64), random_state=seed
    )
    return centroids


def random_uniform(table: ColourTable, k: int, seed: int) -> np.ndarray:
    """The seed's rule: each coordinate uniform between the image's smallest and largest value."""
    bgr = table.bgr()
    rng = np.random.default_rng(seed)
    return rng.uniform(bgr.min(), bgr.max(), size=(k, 3))


def centroids_file(path: str, k: int) -> np.ndarray:
    """The (K, 3) B, G, R centroids of the clusters file ``path`` (seed format: an ``init`` file or
    a fixed palette). InputError naming the file when it holds other than ``k`` centroids (it may
    have changed since the parameters were checked)."""
    centroids = read_clusters(path)
    if len(centroids) != k:
        raise InputError(path, f"clusters file holds {len(centroids)} centroids but k is {k}")
    return centroids


def initial_centroids(table: ColourTable, k: int, init: str, seed: int) -> np.ndarray:
    """(K, 3) initial centroids in B, G, R.

    ``init`` is "kmeans++", "random" or the path of a clusters file (seed format; its K wins, and a
    different ``k`` raises InputError). When the image has at most ``k`` distinct colours, they are
    all the centroids (the exact answer) whatever ``init`` says, unless ``init`` is a file.
    ``table`` is an image's table, or the union of a run's tables for a shared palette.
    """
    if init not in ("kmeans++", "random"):
        return centroids_file(init, k)
    k = effective_k(k, table)
    if k == len(table):
        return table.bgr()
    if init == "kmeans++":
        return kmeans_plusplus(table, k, seed)
    return random_uniform(table, k, seed)


def check_cost(table: ColourTable, k: int, source: str) -> None:
    """InputError naming ``source`` when K x distinct colours exceeds the cap (settings.max_k_colours,
    KMEANS_MAX_K_COLOURS): k-means++ and every iteration cost about that many distance computations.
    Checked once the colour table is built, before any centroid is drawn."""
    from . import settings

    cap, k = settings.max_k_colours(), effective_k(k, table)
    if k * len(table) > cap:
        raise InputError(source, f"k={k} x {len(table)} distinct colours = {k * len(table):.3g} exceeds the cap of "
                                 f"{cap:.3g} (environment variable KMEANS_MAX_K_COLOURS); lower k or raise the cap")
