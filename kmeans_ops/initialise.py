"""Stage 2, initial centroids: k-means++ (weighted by colour counts), the seed's random rule, or a file.

Every random choice takes ``seed``, so a run is reproducible. k-means++ is written here in NumPy
(scikit-learn's greedy rule and draws): importing scikit-learn took longer than clustering a photo.
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
    """Greedy k-means++ on the weighted table, the counts as sample weights: scikit-learn's
    ``kmeans_plusplus(colours, k, sample_weight=counts, random_state=seed)``, the same rule and the
    same random draws (a ``RandomState(seed)``), without importing scikit-learn."""
    return greedy_kmeans_plusplus(table.bgr(), k, table.counts.astype(np.float64), np.random.RandomState(seed))


def greedy_kmeans_plusplus(x: np.ndarray, k: int, weights: np.ndarray, random_state: np.random.RandomState,
                           trials: int | None = None, given: np.ndarray | None = None) -> np.ndarray:
    """(k, 3) centres chosen among the rows of ``x`` (n, d): the first one at random with
    probability proportional to its weight, each next one the best of ``trials`` (default
    2 + ln k) candidates drawn with probability proportional to weight x squared distance to the
    nearest centre so far, the best being the one that leaves the smallest weighted potential
    (Arthur and Vassilvitskii 2007, greedy as in scikit-learn's ``_kmeans_plusplus``).

    ``given``: centres there already (pinned colours), the first rows of the result; the others
    are drawn as the next centres after them."""
    n = len(x)
    if trials is None:
        trials = 2 + int(np.log(k))
    norms = np.einsum("ij,ij->i", x, x)
    centres = np.empty((k, x.shape[1]))
    if given is None or not len(given):
        first = random_state.choice(n, p=weights / weights.sum())
        centres[0] = x[first]
        closest = _squared_distances(x[[first]], x, norms)[0]
        start = 1
    else:
        centres[: len(given)] = given
        closest = _squared_distances(np.asarray(given, np.float64), x, norms).min(axis=0)
        start = len(given)
    potential = closest @ weights
    for c in range(start, k):
        draws = random_state.uniform(size=trials) * potential
        candidates = np.searchsorted(np.cumsum(weights * closest, dtype=np.float64), draws)
        np.clip(candidates, None, n - 1, out=candidates)  # rounding can draw past the last one
        to_candidates = _squared_distances(x[candidates], x, norms)
        np.minimum(closest, to_candidates, out=to_candidates)
        potentials = to_candidates @ weights
        best = int(np.argmin(potentials))
        potential, closest = potentials[best], to_candidates[best]
        centres[c] = x[candidates[best]]
    return centres


def _squared_distances(y: np.ndarray, x: np.ndarray, x_norms: np.ndarray) -> np.ndarray:
    """(len(y), len(x)) squared distances ||y||^2 - 2 y.x + ||x||^2 (at least 0), computed as
    scikit-learn's euclidean_distances computes them, so the draws follow the same cumulative sums."""
    d = -2 * (y @ x.T)
    d += np.einsum("ij,ij->i", y, y)[:, None]
    d += x_norms[None, :]
    return np.maximum(d, 0, out=d)


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


def initial_centroids(table: ColourTable, k: int, init: str, seed: int, pinned=()) -> np.ndarray:
    """(K, 3) initial centroids in B, G, R.

    ``init`` is "kmeans++", "random" or the path of a clusters file (seed format; its K wins, and a
    different ``k`` raises InputError). When the image has at most ``k`` distinct colours, they are
    all the centroids (the exact answer) whatever ``init`` says, unless ``init`` is a file.
    ``table`` is an image's table, or the union of a run's tables for a shared palette.
    ``pinned``: colours (B, G, R) that are the first centroids (:func:`with_pinned`).
    """
    if len(pinned):
        return with_pinned(table, k, init, seed, np.asarray(pinned, np.float64).reshape(-1, 3))
    if init not in ("kmeans++", "random"):
        return centroids_file(init, k)
    k = effective_k(k, table)
    if k == len(table):
        return table.bgr()
    if init == "kmeans++":
        return kmeans_plusplus(table, k, seed)
    return random_uniform(table, k, seed)


def with_pinned(table: ColourTable, k: int, init: str, seed: int, pinned: np.ndarray) -> np.ndarray:
    """(K, 3) initial centroids whose first rows are the ``pinned`` colours and the others free:
    the image's colours that are not pinned when there are at most k - n of them (then K may be
    below k), else k - n drawn by k-means++ after the pinned ones (its potential counts them as
    centres already), or by the seed's random rule."""
    from .colours import bgr_to_codes

    free = ~np.isin(table.codes, bgr_to_codes(pinned.astype(np.uint32)))
    if free.sum() <= k - len(pinned):
        return np.vstack([pinned, table.bgr()[free]])
    if init == "kmeans++":
        rest = greedy_kmeans_plusplus(table.bgr(), k, table.counts.astype(np.float64), np.random.RandomState(seed),
                                      given=pinned)[len(pinned):]
    else:
        rest = random_uniform(table, k - len(pinned), seed)
    return np.vstack([pinned, rest])


def check_cost(table: ColourTable, k: int, source: str) -> None:
    """InputError naming ``source`` when K x distinct colours exceeds the cap (settings.max_k_colours,
    KMEANS_MAX_K_COLOURS): k-means++ and every iteration cost about that many distance computations.
    Checked once the colour table is built, before any centroid is drawn."""
    from . import settings

    cap, k = settings.max_k_colours(), effective_k(k, table)
    if k * len(table) > cap:
        raise InputError(source, f"k={k} x {len(table)} distinct colours = {k * len(table):.3g} exceeds the cap of "
                                 f"{cap:.3g} (environment variable KMEANS_MAX_K_COLOURS); lower k or raise the cap")
