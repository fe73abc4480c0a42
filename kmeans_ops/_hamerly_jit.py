"""The compiled loops of kmeans_ops.hamerly (Numba): per iteration, a screen now and then and a
pass over the candidates it found.

- ``screen``: one tight, branch-free pass over the stored bounds of every colour that lists the
  colours whose bounds may fail before the thresholds reach the limits it is given (a few
  nanoseconds per colour); until then the other colours are not looked at.
- ``step``: per candidate what the NumPy version does with whole-array operations, without the
  temporary arrays: the bounds test, the exact distances to the own centroid and to the runner-up,
  and for the colours whose bounds still fail all K distances, in the exact form sum (x - c)^2.
  It reads a colour from its 4-byte code (0xRRGGBB, one cache line) against the centroids as they
  are, not from the three float64 rows of the centred table (three cache lines): 3.7 -> 3.4 ms
  per step on the benchmark's photo.

They keep one more bound than NumPy's Hamerly: the runner-up (second nearest) centroid
``runner_up`` with its own lower bound, which shrinks by that centroid's shift only, while the
lower bound of the others (from the third nearest) shrinks by the largest shift of the centroids
but the own one. A colour near the boundary of its two nearest clusters is then recomputed only
when those two clusters move, not whenever any centroid does. The kernel that decides labels
everywhere else (kmeans_ops.mapreduce.nearest_two, BLAS's ||c||^2 - 2 x.c, first minimum on a tie)
can differ from that form in the last bits, so a colour whose two nearest squared distances are
within ``tie`` of each other is not decided here: its index is returned and the caller runs it
through nearest_two. Everywhere else both forms certainly agree (their rounding errors are about
1e-10, ``tie`` is 1e-6). Sums move by exact integers (weights x colours). Labels are int16 and
gaps float32, rounded down when stored (kmeans_ops.hamerly.LABEL, GAP).

What made them fast, measured by bench/bench_core.py: no function call per colour (Numba passes
arrays to a call by reference counts), no libm call to round a gap down, indices as ``intp`` (no
test for negative ones), the screen's list written without a branch, and one screen buffer per
run (a new one costs its page faults at every screen).

Compiled on first use and cached beside the module (``cache=True``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

#: Colours per parallel chunk: each chunk keeps its own sums, added up at the end (exact).
CHUNK = 8192


@njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _down(x):  # pragma: no cover
    """``x`` as a float32 no larger than ``x`` (the gaps are stored in float32: a smaller gap is still
    a bound). Lowered by a relative 1.2e-7 before rounding to nearest, whose error is at most 6e-8:
    no branch and no call, the loops store two gaps per visited colour."""
    return np.float32(x - abs(x) * 1.2e-7 - 1e-30)


@njit(cache=True, nogil=True, boundscheck=False)
def _move(i, old, new, weighted_t, weights, weighted_sq, sums, cluster_weights, square_sums):  # pragma: no cover
    for channel in range(3):
        sums[old, channel] -= weighted_t[channel, i]
        sums[new, channel] += weighted_t[channel, i]
    cluster_weights[old] -= weights[i]
    cluster_weights[new] += weights[i]
    square_sums[old] -= weighted_sq[i]
    square_sums[new] += weighted_sq[i]


@njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _three(x0, x1, x2, c):  # pragma: no cover
    """Squared distances to the nearest, second and third nearest centroids, and the first two's
    indices (-1 when there is no second)."""
    best, second, third, label, runner = np.inf, np.inf, np.inf, 0, -1
    for j in range(c.shape[0]):
        d0, d1, d2 = x0 - c[j, 0], x1 - c[j, 1], x2 - c[j, 2]
        d = d0 * d0 + d1 * d1 + d2 * d2
        if d < best:
            third, second, best, runner, label = second, best, d, label, j
        elif d < second:
            third, second, runner = second, d, j
        elif d < third:
            third = d
    if c.shape[0] < 2:
        runner = -1
    return best, second, third, label, runner


@njit(cache=True, nogil=True, boundscheck=False)
def _start(lo, hi, centred_t, c, weighted_t, weights, weighted_sq, labels, upper, gap, runner_up, gap_runner_up, sums,
           cluster_weights, square_sums, ties, tie):  # pragma: no cover
    n_ties = 0
    for i in range(lo, hi):
        best, second, third, label, runner = _three(centred_t[0, i], centred_t[1, i], centred_t[2, i], c)
        if second - best <= tie:
            ties[lo + n_ties] = i
            n_ties += 1
            continue
        labels[i] = label
        runner_up[i] = runner
        upper[i] = np.sqrt(best)
        gap[i] = _down(np.sqrt(third) - upper[i])
        gap_runner_up[i] = _down(np.sqrt(second) - upper[i])
        for channel in range(3):
            sums[label, channel] += weighted_t[channel, i]
        cluster_weights[label] += weights[i]
        square_sums[label] += weighted_sq[i]
    return n_ties


@njit(cache=True, nogil=True, boundscheck=False)
def _screen(lo, hi, labels, runner_up, gap, gap_runner_up, limit, drift_limit, margin, screened):  # pragma: no cover
    """Write from ``screened[lo]`` on the colours ``lo``..``hi`` whose bounds may fail before a
    threshold passes ``limit`` or a drift ``drift_limit`` (a tight loop: no other work)."""
    n_screened = 0
    for i in range(lo, hi):
        # (b = -1, no runner-up: reads drift_limit[0], a number the mask then ignores)
        a, b = np.intp(labels[i]), np.intp(runner_up[i])
        near = b if b >= 0 else 0
        screened[lo + n_screened] = i  # kept if counted: no branch to mispredict
        n_screened += (gap[i] <= limit[a]) | ((b >= 0) & (gap_runner_up[i] <= drift_limit[a] + drift_limit[near] + margin))
    return n_screened


@njit(cache=True, nogil=True, boundscheck=False)
def _step(lo, hi, candidates, codes, c, separation, closest, threshold, drift, lower_drift, weighted_t, weights, weighted_sq,
          labels, upper, gap, runner_up, gap_runner_up, sums, cluster_weights, square_sums, ties, margin,
          tie):  # pragma: no cover
    """The colours ``candidates[lo:hi]`` of one iteration: bounds tested, own distance, all K.
    ``codes``: the colours' 0xRRGGBB; ``c``: the centroids (B, G, R); ``separation`` (2, K) and
    ``closest`` (K,): kmeans_ops.hamerly.separations."""
    tightened = recomputed = n_ties = 0
    for p in range(lo, hi):
        i = candidates[p]
        a = np.intp(labels[i])
        b = np.intp(runner_up[i])
        if gap[i] > threshold[a] and (b < 0 or gap_runner_up[i] > drift[a] + drift[b] + margin):
            continue
        code = codes[i]  # one read of 4 bytes, not 3 rows of float64
        x0, x1, x2 = np.float64(code & 0xFF), np.float64((code >> 8) & 0xFF), np.float64(code >> 16)
        d0, d1, d2 = x0 - c[a, 0], x1 - c[a, 1], x2 - c[a, 2]
        own = np.sqrt(d0 * d0 + d1 * d1 + d2 * d2)
        # Every centroid j but a and b is at least d(c_a, c_j) - own away (triangle inequality), so
        # at least the distance from c_a to its nearest centroid other than b, minus own.
        apart = separation[1, a] if b == closest[a] else separation[0, a]
        apart -= own
        near = np.inf
        if b >= 0:  # the exact distance to the runner-up too: one more distance, its bound made tight
            e0, e1, e2 = x0 - c[b, 0], x1 - c[b, 1], x2 - c[b, 2]
            near = np.sqrt(e0 * e0 + e1 * e1 + e2 * e2)
            # and at least d(c_b, c_j) - near: the same seen from the runner-up
            apart = max(apart, (separation[1, b] if a == closest[b] else separation[0, b]) - near)
        rest = max(gap[i] + upper[i] - lower_drift[a], apart)
        if own + margin < min(rest, near):  # two distances are enough: bounds tightened
            upper[i] = own - drift[a]
            gap[i] = _down(rest + lower_drift[a] - upper[i])
            if b >= 0:
                gap_runner_up[i] = _down(near + drift[b] - upper[i])
            tightened += 1
            continue
        best, second, third, label, runner = _three(x0, x1, x2, c)
        if second - best <= tie:  # left to the caller
            ties[lo + n_ties] = i
            n_ties += 1
            continue
        recomputed += 1
        if label != a:
            _move(i, a, label, weighted_t, weights, weighted_sq, sums, cluster_weights, square_sums)
            labels[i] = label
        runner_up[i] = runner
        upper[i] = np.sqrt(best) - drift[label]
        gap[i] = _down(np.sqrt(third) + lower_drift[label] - upper[i])
        if runner >= 0:
            gap_runner_up[i] = _down(np.sqrt(second) + drift[runner] - upper[i])
    return tightened, recomputed, n_ties


@njit(cache=True, nogil=True, boundscheck=False)
def _gather_chunks(ties, counts):  # pragma: no cover
    """Move each chunk's entries of ``ties`` (written from the chunk's first index) to its front."""
    n_ties = 0
    for chunk in range(len(counts)):
        lo = chunk * CHUNK
        for t in range(counts[chunk]):
            ties[n_ties] = ties[lo + t]
            n_ties += 1
    return n_ties


@njit(cache=True, nogil=True, boundscheck=False, parallel=True)
def start(centred_t, c, weighted_t, weights, weighted_sq, labels, upper, gap, runner_up, gap_runner_up, sums,
          cluster_weights, square_sums, ties, tie):  # pragma: no cover
    """Every colour against every centroid ``c`` (centred like ``centred_t``): labels, bounds and
    sums (added to); returns how many colours it left at the front of ``ties`` (their labels,
    bounds and sums are unset). Chunks of colours in parallel threads."""
    n, k = centred_t.shape[1], c.shape[0]
    chunks = (n + CHUNK - 1) // CHUNK
    part_sums, part_weights, part_squares = np.zeros((chunks, k, 3)), np.zeros((chunks, k)), np.zeros((chunks, k))
    counts = np.zeros(chunks, np.int64)
    for chunk in prange(chunks):
        lo = chunk * CHUNK
        counts[chunk] = _start(lo, min(lo + CHUNK, n), centred_t, c, weighted_t, weights, weighted_sq, labels, upper,
                               gap, runner_up, gap_runner_up, part_sums[chunk], part_weights[chunk],
                               part_squares[chunk], ties, tie)
    for chunk in range(chunks):  # exact integers: the order of the additions does not matter
        sums += part_sums[chunk]
        cluster_weights += part_weights[chunk]
        square_sums += part_squares[chunk]
    return _gather_chunks(ties, counts)


@njit(cache=True, nogil=True, boundscheck=False, parallel=True)
def screen(labels, runner_up, gap, gap_runner_up, limit, drift_limit, margin, screened):  # pragma: no cover
    """The colours whose bounds may fail before a threshold passes ``limit`` or a drift
    ``drift_limit``, at the front of ``screened`` (in order); returns how many."""
    n = len(labels)
    chunks = (n + CHUNK - 1) // CHUNK
    counts = np.zeros(chunks, np.int64)
    for chunk in prange(chunks):
        lo = chunk * CHUNK
        counts[chunk] = _screen(lo, min(lo + CHUNK, n), labels, runner_up, gap, gap_runner_up, limit, drift_limit,
                                margin, screened)
    return _gather_chunks(screened, counts)


@njit(cache=True, nogil=True, boundscheck=False, parallel=True)
def step(candidates, codes, c, separation, closest, threshold, drift, lower_drift, weighted_t, weights, weighted_sq, labels,
         upper, gap, runner_up, gap_runner_up, sums, cluster_weights, square_sums, ties, margin,
         tie):  # pragma: no cover
    """One iteration's map over the stored bounds of the ``candidates`` (see
    kmeans_ops.hamerly.step), chunks in parallel threads; returns (colours tightened, colours
    recomputed, colours left at the front of ``ties``: still to be recomputed by the caller)."""
    n, k = len(candidates), c.shape[0]
    chunks = (n + CHUNK - 1) // CHUNK
    part_sums, part_weights, part_squares = np.zeros((chunks, k, 3)), np.zeros((chunks, k)), np.zeros((chunks, k))
    counts = np.zeros((chunks, 3), np.int64)
    for chunk in prange(chunks):
        lo = chunk * CHUNK
        tightened, recomputed, n_ties = _step(
            lo, min(lo + CHUNK, n), candidates, codes, c, separation, closest, threshold, drift, lower_drift, weighted_t,
            weights, weighted_sq, labels, upper, gap, runner_up, gap_runner_up, part_sums[chunk],
            part_weights[chunk], part_squares[chunk], ties, margin, tie)
        counts[chunk, 0], counts[chunk, 1], counts[chunk, 2] = tightened, recomputed, n_ties
    for chunk in range(chunks):
        sums += part_sums[chunk]
        cluster_weights += part_weights[chunk]
        square_sums += part_squares[chunk]
    return counts[:, 0].sum(), counts[:, 1].sum(), _gather_chunks(ties, counts[:, 2].copy())
