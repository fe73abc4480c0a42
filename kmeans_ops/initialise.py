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
    return PlusPlus(x, weights, random_state, 2 + int(np.log(k)) if trials is None else trials, given).take(k)


class PlusPlus:
    """The draws of :func:`greedy_kmeans_plusplus`, extended on demand: ``take(k)`` is its result
    for ``k`` centres with the same ``trials``, and the first k' < k rows of ``take(k)`` are
    ``take(k')``, so the centres of every K with the same number of trials come from one sequence
    of draws (each centre depends only on the ones before it and the random state)."""

    def __init__(self, x: np.ndarray, weights: np.ndarray, random_state: np.random.RandomState, trials: int,
                 given: np.ndarray | None = None):
        self.x, self.weights, self.random_state, self.trials = x, weights, random_state, trials
        self.norms = np.einsum("ij,ij->i", x, x)
        if given is None or not len(given):
            first = random_state.choice(len(x), p=weights / weights.sum())
            self.centres = [x[first].astype(np.float64)]
            self.closest = _squared_distances(x[[first]], x, self.norms)[0]
        else:
            self.centres = [row for row in np.asarray(given, np.float64)]
            self.closest = _squared_distances(np.asarray(given, np.float64), x, self.norms).min(axis=0)
        self.potential = self.closest @ weights

    def take(self, k: int) -> np.ndarray:
        x, weights, n = self.x, self.weights, len(self.x)
        while len(self.centres) < k:
            draws = self.random_state.uniform(size=self.trials) * self.potential
            candidates = np.searchsorted(np.cumsum(weights * self.closest, dtype=np.float64), draws)
            np.clip(candidates, None, n - 1, out=candidates)  # rounding can draw past the last one
            to_candidates = _squared_distances(x[candidates], x, self.norms)
            np.minimum(self.closest, to_candidates, out=to_candidates)
            potentials = to_candidates @ weights
            best = int(np.argmin(potentials))
            self.potential, self.closest = potentials[best], to_candidates[best]
            self.centres.append(x[candidates[best]].astype(np.float64))
        return np.array(self.centres[:k], dtype=np.float64).reshape(k, x.shape[1])


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


class Starts:
    """``starts(k)`` = ``initial_centroids(table, k, init, seed, pinned)`` for many K of one table
    (the quality search's candidates), cheaper: with k-means++ the K of the same number of trials
    (2 + ln K: 8-20, 21-54, 55-148, ...) share one :class:`PlusPlus` sequence of draws, so a K
    costs only the centres its sequence does not hold yet. The results are those of
    :func:`initial_centroids`, row for row (tests/test_quality.py)."""

    def __init__(self, table: ColourTable, init: str, seed: int, pinned=()):
        self.table, self.init, self.seed = table, init, seed
        self.pinned = np.asarray(pinned, np.float64).reshape(-1, 3)
        self._sequences: dict[int, PlusPlus] = {}

    def __call__(self, k: int) -> np.ndarray:
        table, pinned = self.table, self.pinned
        if self.init != "kmeans++":
            return initial_centroids(table, k, self.init, self.seed, pinned)
        if len(pinned):
            from .colours import bgr_to_codes

            free = ~np.isin(table.codes, bgr_to_codes(pinned.astype(np.uint32)))
            if free.sum() <= k - len(pinned):  # with_pinned's exact case
                return initial_centroids(table, k, self.init, self.seed, pinned)
        else:
            k = effective_k(k, table)
            if k == len(table):
                return table.bgr()
        trials = 2 + int(np.log(k))
        if trials not in self._sequences:
            self._sequences[trials] = PlusPlus(table.bgr(), table.counts.astype(np.float64),
                                               np.random.RandomState(self.seed), trials, pinned if len(pinned) else None)
        return self._sequences[trials].take(k)
