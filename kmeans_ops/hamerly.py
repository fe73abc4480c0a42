"""Exact bounds for the map step (Hamerly 2010): skip the colours that provably kept their centroid.

The embedded engine maps the same table at every iteration of a run, so it can keep, per colour,
its label and two bounds between iterations:

- an **upper bound** on the distance to its own centroid and
- a **lower bound** on the distance to every other centroid (the second nearest).

When the centroids move, the triangle inequality updates both without touching the colour: the
upper bound grows by its own centroid's shift, the lower bound shrinks by the largest shift of the
other centroids. While upper < lower the colour is still nearest to its centroid and is not
looked at. Only the colours whose bounds fail are recomputed: first their exact distance to their
own centroid (often enough), then, if the bounds still fail, all K distances with the same kernel
as the full computation (:func:`kmeans_ops.mapreduce.nearest_two`, so the same bits and the same
tie rule). The per-cluster sums of weighted colours, weights and weighted squared norms are exact
integers in float64 and are updated only for the colours that changed cluster, so nothing drifts:
the Partials equal, bit for bit, those of :func:`kmeans_ops.mapreduce.map_block` over the table.

Bookkeeping that keeps each iteration O(K + colours near a boundary), not O(N):

- Bounds are stored relative to per-cluster cumulative drifts (``drift``: the sum of a centroid's
  shifts; ``lower_drift``: the sum, per cluster, of the largest shift of the other centroids), so a
  shift updates K numbers, not N. A colour of cluster a fails when its ``gap`` (lower - upper, in
  that frame) is at most ``drift[a] + lower_drift[a] + MARGIN``: a threshold that only grows.
- A screen over all colours (one pass) collects the candidates whose gap is within the threshold
  plus some slack; until a threshold passes its screened limit, only the candidates can fail, and
  only they are tested.

``MARGIN`` (colour units) absorbs floating-point rounding: a colour is skipped only when its
bounds separate its two nearest centroids by more than 1e-3 (squared distances 1e-6 apart, far
above the 1e-10 error of ||c||^2 - 2 x.c), so the full kernel would certainly choose the same
centroid; colours closer to a tie are always recomputed.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass

import numpy as np

from .mapreduce import Block, Partials, nearest_two, partials

#: Whether Numba is there for the compiled loops (kmeans_ops._hamerly_jit). By default step() uses
#: them once they are loaded (in the background, see warm_up), NumPy until then or without Numba;
#: start() does not start loading them: a table mapped once (an Airflow iteration task) never pays
#: for loading Numba.
COMPILED = importlib.util.find_spec("numba") is not None
_jit = None
_loading: threading.Thread | None = None


def _load() -> None:
    global _jit
    from . import _hamerly_jit

    # The first call of each loop loads its machine code from Numba's cache (or compiles it once).
    data = Block(np.ones((4, 2)), np.ones(2), np.ones((3, 2)), np.ones(2), np.zeros(2, np.uint32), np.zeros(3),
                 np.zeros(3))
    state, _ = start(data, np.array([[0.0, 0.0, 0.0], [9.0, 9.0, 9.0]]), compiled=True, kernels=_hamerly_jit)
    step(data, state, np.array([[1.0, 1.0, 1.0], [8.0, 8.0, 8.0]]), compiled=True, kernels=_hamerly_jit)
    _jit = _hamerly_jit


def warm_up() -> None:
    """Load the compiled loops in a background thread (Numba's import and first calls take about
    half a second), so that they are ready by the second iteration. Called by the embedded engine
    when it is given a table it will iterate."""
    global _loading
    if COMPILED and _jit is None and _loading is None:
        _loading = threading.Thread(target=_load_quietly, name="kmeans-hamerly-jit", daemon=True)
        _loading.start()


def _load_quietly() -> None:
    """_load() in the background: if the compiled loops cannot be loaded, the run goes on in NumPy
    (the reason is logged)."""
    try:
        _load()
    except Exception as err:  # noqa: BLE001 - any failure of Numba only costs speed
        import logging

        logging.getLogger(__name__).warning("compiled Hamerly loops unavailable, NumPy used: %s", err)


def _kernels():
    """The compiled loops, loaded (or waited for) now."""
    if _jit is None:
        if _loading is not None:
            _loading.join()
        if _jit is None:
            _load()
    return _jit


#: Colour units by which the bounds must separate a colour's two nearest centroids to skip it.
MARGIN = 1e-3
#: A screen keeps the candidates whose gap is within this many times the last growth of the threshold.
SLACK = 4.0
#: The compiled loops' screen (a pass of a few nanoseconds per colour, so they screen often and
#: keep few candidates): per cluster, this many times the last growth of its threshold (of its
#: drift for the runner-up bounds), at least SCREEN_FLOOR times the largest growth. Chosen by
#: bench/bench_core.py's kernel figure on a 12 MP photo (slack 1 to 4, floor 0.1 to 1: within 15%).
SCREEN_SLACK = 1.0
SCREEN_FLOOR = 0.1
#: Screen again when the candidates are more than this share of the table.
MAX_CANDIDATES = 0.25
#: The compiled loops leave to nearest_two the colours whose two nearest squared distances are
#: closer than this (see kmeans_ops._hamerly_jit).
TIE = 1e-6
#: Stored per colour and read by every iteration's pass over the table, so kept small: labels and
#: runner-ups as int16 (K <= 4096), gaps as float32 rounded down (a smaller lower bound is still a
#: bound). 12 bytes per colour instead of 32: the pass is bound by memory, not by arithmetic.
LABEL = np.int16
GAP = np.float32


def rounded_down(values: np.ndarray) -> np.ndarray:
    """``values`` as GAP, each at most the float64 value it stands for."""
    stored = np.asarray(values).astype(GAP)
    return np.where(stored > values, np.nextafter(stored, GAP(-np.inf)), stored)


@dataclass
class Bounds:
    """Map-side state of one table between iterations (kept by the embedded engine)."""

    centroids: np.ndarray  # (K, 3) the centroids the bounds refer to (the last mapped)
    labels: np.ndarray  # (n,) nearest centroid
    upper: np.ndarray  # (n,) upper bound on the distance to the own centroid, minus drift[label]
    gap: np.ndarray  # (n,) lower bound + lower_drift[label] - upper (the stored one)
    drift: np.ndarray  # (K,) cumulative shift of each centroid
    lower_drift: np.ndarray  # (K,) cumulative largest shift of the other centroids
    sums: np.ndarray  # (K, 3) sum of weights * colours per cluster (exact)
    weights: np.ndarray  # (K,) pixels per cluster (exact)
    square_sums: np.ndarray  # (K,) sum of weights * ||colour - sq_origin||^2 per cluster (exact)
    runner_up: np.ndarray | None = None  # (n,) compiled loops: the second nearest centroid, or -1
    gap_runner_up: np.ndarray | None = None  # (n,) its lower bound + drift[runner_up] - upper
    candidates: np.ndarray | None = None  # colours that may fail before a threshold passes limit
    limit: np.ndarray | None = None  # (K,) the thresholds the candidates were screened for
    drift_limit: np.ndarray | None = None  # (K,) compiled loops: the drifts the candidates were screened for
    screened: np.ndarray | None = None  # (n,) int32 compiled loops: the buffer the candidates are screened into
    screens: int = 0  # compiled loops: passes over every colour (each screens the candidates)
    recomputed: int = 0  # colours whose K distances the last step computed
    tightened: int = 0  # colours whose own distance only the last step computed

    @property
    def k(self) -> int:
        return len(self.centroids)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.labels, self.upper, self.gap, self.runner_up, self.gap_runner_up,
                                      self.screened if self.screened is not None else self.candidates)
                   if a is not None)


def _cluster_sums(data: Block, labels: np.ndarray, index, k: int):
    """Per-cluster sums of weighted colours, weights and weighted squared norms of the colours
    ``index`` (a slice or indices) with ``labels``."""
    sums = np.empty((k, 3))
    for channel in range(3):
        sums[:, channel] = np.bincount(labels, data.weighted_t[channel, index], minlength=k)
    return sums, np.bincount(labels, data.weights[index], minlength=k), np.bincount(labels, data.weighted_sq[index],
                                                                                   minlength=k)


def _distances(data: Block, index, best: np.ndarray, runner_up: np.ndarray):
    """Euclidean distances from ``best`` and ``runner_up`` (values ||c||^2 - 2 x.c of the colours
    ``index``): add ||x||^2, clip rounding below 0."""
    x = data.centred_t[:3, index]
    norms = np.einsum("ij,ij->j", x, x)
    upper = np.sqrt(np.maximum(best + norms, 0.0))
    lower = np.sqrt(np.maximum(runner_up + norms, 0.0))
    return upper, lower


def start(data: Block, centroids: np.ndarray, compiled: bool | None = None, kernels=None) -> tuple[Bounds, Partials]:
    """First map of a table: every distance, exact bounds from them, the sums (by default with
    the compiled loops if they are loaded already, else NumPy: never waits for them)."""
    centroids = np.array(centroids, np.float64)
    k = len(centroids)
    if compiled is None:
        compiled = _jit is not None
    if compiled:
        loops = kernels or _kernels()
        n = len(data)
        labels, upper, gap, ties = np.zeros(n, LABEL), np.empty(n), np.empty(n, GAP), np.empty(n, np.intp)
        runner_up, gap_runner_up = np.full(n, -1, LABEL), np.empty(n, GAP)
        sums, weights, square_sums = np.zeros((k, 3)), np.zeros(k), np.zeros(k)
        n_ties = loops.start(data.centred_t, centroids - data.origin, data.weighted_t, data.weights, data.weighted_sq,
                            labels, upper, gap, runner_up, gap_runner_up, sums, weights, square_sums, ties, TIE)
        state = Bounds(centroids, labels, upper, gap, np.zeros(k), np.zeros(k), sums, weights, square_sums,
                       runner_up, gap_runner_up, recomputed=n)
        if n_ties:  # not added to the sums yet: recomputed from "cluster 0" after adding them there
            ties = ties[:n_ties].copy()
            add = _cluster_sums(data, labels[ties], ties, k)
            state.sums += add[0]
            state.weights += add[1]
            state.square_sums += add[2]
            _recompute(data, state, centroids, ties)
            state.recomputed = n
    else:
        labels, best, runner_up = nearest_two(data.centred_t, centroids, data.origin)
        upper, lower = _distances(data, slice(None), best, runner_up)
        del best, runner_up
        sums, weights, square_sums = _cluster_sums(data, labels, slice(None), k)
        lower -= upper
        state = Bounds(centroids, labels.astype(LABEL), upper, rounded_down(lower), np.zeros(k), np.zeros(k), sums,
                       weights, square_sums, recomputed=len(labels))
    return state, partials(data, centroids, state.labels, state.sums.copy(), state.weights.copy(),
                           state.square_sums.copy())


def other_shift(shift: np.ndarray) -> np.ndarray:
    """(K,) for each cluster the largest shift of the other centroids."""
    k = len(shift)
    if k < 2:
        return np.zeros(k)
    first, second = np.argpartition(-shift, 1)[:2]
    other = np.full(k, shift[first])
    other[first] = shift[second]
    return other


def separations(centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each centroid the distances to its nearest and second nearest other centroids ((2, K),
    inf where there is none) and the index of the nearest ((K,), -1 with one centroid): the
    distance from c_a to its nearest centroid other than b is the second when b is the nearest."""
    diff = centroids[:, None, :] - centroids[None, :, :]
    dist = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    np.fill_diagonal(dist, np.inf)
    k = len(centroids)
    if k < 2:
        return np.full((2, k), np.inf), np.full(k, -1, np.intp)
    two = np.argpartition(dist, 1, axis=1)[:, :2]  # the two nearest, in either order: O(K^2), not a sort
    two = np.take_along_axis(two, np.argsort(np.take_along_axis(dist, two, axis=1), axis=1), axis=1)
    nearest = np.take_along_axis(dist, two, axis=1)  # (with two centroids the second is the diagonal's inf)
    return np.ascontiguousarray(nearest.T), two[:, 0].astype(np.intp)


def _screen(state: Bounds, threshold: np.ndarray, growth: float) -> None:
    state.limit = threshold + SLACK * growth
    state.candidates = np.flatnonzero(state.gap <= state.limit[state.labels])


def step(data: Block, state: Bounds, centroids: np.ndarray, compiled: bool | None = None, kernels=None) -> Partials:
    """Map the table against new ``centroids`` (any, of the state's K), updating ``state``: the
    same Partials as :func:`kmeans_ops.mapreduce.map_block` on the whole table."""
    centroids = np.array(centroids, np.float64)
    shift = np.sqrt(np.einsum("ij,ij->i", centroids - state.centroids, centroids - state.centroids))
    other = other_shift(shift)
    state.drift += shift
    state.lower_drift += other
    threshold = state.drift + state.lower_drift + MARGIN
    if compiled is None:  # the compiled loops once loaded; NumPy while they load in the background
        warm_up()
        compiled = _jit is not None
    if compiled:
        loops = kernels or _kernels()
        if state.runner_up is None:  # bounds made by NumPy: no runner-up bound yet
            state.runner_up, state.gap_runner_up = np.full(len(state), -1, LABEL), np.empty(len(state), GAP)
        if state.candidates is not None and state.drift_limit is None:  # a NumPy screen: not valid here
            state.candidates = None
        screen = (state.candidates is None or (threshold > state.limit).any()
                  or (state.drift > state.drift_limit).any() or len(state.candidates) > MAX_CANDIDATES * len(state))
        if screen:  # one tight pass over every colour: the candidates until a limit is passed
            growth = np.maximum(shift + other, SCREEN_FLOOR * float((shift + other).max()))
            state.limit = threshold + SCREEN_SLACK * growth
            state.drift_limit = state.drift + SCREEN_SLACK * np.maximum(shift, SCREEN_FLOOR * float(shift.max()))
            if state.screened is None:  # one buffer per run: a new one costs its page faults at every screen
                state.screened = np.empty(len(state), np.int32)
            n_screened = loops.screen(state.labels, state.runner_up, state.gap, state.gap_runner_up, state.limit,
                                      state.drift_limit, MARGIN, state.screened)
            state.candidates = state.screened[:n_screened]
            state.screens += 1
        ties = np.empty(len(state.candidates), np.intp)
        state.tightened, state.recomputed, n_ties = loops.step(
            state.candidates, data.codes, centroids, *separations(centroids), threshold, state.drift,
            state.lower_drift, data.weighted_t, data.weights, data.weighted_sq, state.labels, state.upper, state.gap,
            state.runner_up, state.gap_runner_up, state.sums, state.weights, state.square_sums, ties, MARGIN, TIE)
        if n_ties:
            _recompute(data, state, centroids, ties[:n_ties].copy())
    else:
        _step_numpy(data, state, centroids, threshold, float((shift + other).max()))
    state.centroids = centroids
    return partials(data, centroids, state.labels, state.sums.copy(), state.weights.copy(), state.square_sums.copy())


def _step_numpy(data: Block, state: Bounds, centroids: np.ndarray, threshold: np.ndarray, growth: float) -> None:
    """step() with whole-array operations over the candidates of the last screen."""
    if state.runner_up is not None:  # bounds from the compiled loops: one lower bound for all others
        near = np.flatnonzero(state.runner_up >= 0)
        state.gap[near] = np.minimum(state.gap[near], rounded_down(
            state.gap_runner_up[near] - state.drift[state.runner_up[near]] + state.lower_drift[state.labels[near]]))
        state.runner_up = state.gap_runner_up = state.candidates = state.drift_limit = None
    if (state.candidates is None or (threshold > state.limit).any()
            or len(state.candidates) > MAX_CANDIDATES * len(state)):
        _screen(state, threshold, growth)
    candidates = state.candidates
    fail = candidates[state.gap[candidates] <= threshold[state.labels[candidates]]]
    state.recomputed = state.tightened = 0
    if fail.size:
        label = state.labels[fail]
        # Tighten: the exact distance to the own centroid, against the lower bound and against
        # Hamerly's second one: the distance to any other centroid is at least the distance between
        # the two centroids minus this one.
        own = data.centred_t[:3, fail] - (centroids - data.origin)[label].T
        own = np.sqrt(np.einsum("ij,ij->j", own, own))
        lower = np.maximum(state.gap[fail] + state.upper[fail] - state.lower_drift[label],
                           separations(centroids)[0][0, label] - own)
        tight = own + MARGIN < lower
        upper = own - state.drift[label]
        state.upper[fail] = upper
        state.gap[fail] = rounded_down(lower + state.lower_drift[label] - upper)
        state.tightened = int(tight.sum())
        todo = fail[~tight]
        if todo.size:
            _recompute(data, state, centroids, todo)


def _recompute(data: Block, state: Bounds, centroids: np.ndarray, todo: np.ndarray) -> None:
    """All K distances of the colours ``todo``: new labels and exact bounds; the sums follow the
    colours that changed cluster."""
    k = len(centroids)
    labels, best, runner_up = nearest_two(data.centred_t[:, todo], centroids, data.origin)
    upper, lower = _distances(data, todo, best, runner_up)
    old = state.labels[todo]
    moved = labels != old
    if moved.any():
        index = todo[moved]
        add = _cluster_sums(data, labels[moved], index, k)
        remove = _cluster_sums(data, old[moved], index, k)
        state.sums += add[0] - remove[0]
        state.weights += add[1] - remove[1]
        state.square_sums += add[2] - remove[2]
        state.labels[todo] = labels
    upper -= state.drift[labels]
    if state.runner_up is not None:  # one lower bound for all the other centroids
        state.runner_up[todo] = -1
    state.upper[todo] = upper
    state.gap[todo] = rounded_down(lower + state.lower_drift[labels] - upper)
    state.recomputed += len(todo)
