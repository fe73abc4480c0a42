"""Stage 3, one K-means iteration as map, combine and reduce: the one implementation every engine runs.

- **map** (:func:`map_block`): weighted colours of one image plus its current centroids ->
  per-cluster partial sums, weights and squared error, and, when a cluster got no colour, the
  task's farthest colours (candidates to re-seed it). In-mapper combining: one :class:`Partials`
  per image per map task, i.e. at most K sum records and K candidates, however many colours the
  task read.
- **combine** (:func:`combine`): adds partials and keeps the K farthest candidates.
- **reduce** (:func:`reduce_image`): new centroids, each centroid's shift, squared error,
  re-seeding of empty clusters and the convergence test.

Colours are integers and counts are integers, so partial sums are exact in float64: the new
centroids do not depend on how the colours were split between tasks, and every engine gets the
same bits. The text wire format (:func:`encode`/:func:`decode`) carries partials through Hadoop
Streaming with floats written exactly (``repr``).
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

#: Colours per step of the assignment kernel: a (K, CHUNK) distance block stays in cache.
CHUNK = 16384


@dataclass
class Partials:
    """What map emits for one image: per-cluster sums (B, G, R), weights and squared error, plus
    far candidates (distance to own centroid, colour code, weight, label), farthest first."""

    sums: np.ndarray  # (K, 3) float64
    weights: np.ndarray  # (K,) float64 (pixel counts, exact integers)
    sse: np.ndarray  # (K,) float64
    far_dist: np.ndarray = field(default_factory=lambda: np.zeros(0))
    far_code: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    far_weight: np.ndarray = field(default_factory=lambda: np.zeros(0))
    far_label: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @classmethod
    def zeros(cls, k: int) -> "Partials":
        return cls(np.zeros((k, 3)), np.zeros(k), np.zeros(k))

    @property
    def k(self) -> int:
        return len(self.weights)


@dataclass
class Update:
    """What reduce produces for one image."""

    centroids: np.ndarray  # (K, 3) new centroids, B, G, R
    shift: np.ndarray  # (K,) Euclidean distance each centroid moved
    weights: np.ndarray  # (K,) pixels per cluster after re-seeding
    sse: float  # squared error of the assignment to the old centroids
    reseeded: list[int]  # clusters that were empty and got a far colour
    converged: bool

    @property
    def max_shift(self) -> float:
        return float(self.shift.max()) if len(self.shift) else 0.0

    def figures(self, iteration: int) -> dict:
        return {
            "iteration": iteration,
            "sse": self.sse,
            "max_shift": self.max_shift,
            "reseeded": self.reseeded,
            "converged": self.converged,
        }


# ---------------------------------------------------------------- map
@dataclass
class Block:
    """An image's weighted colours (or a slice of them) with what every iteration reuses.

    Built once per map task by :func:`block` (and kept between iterations by the embedded engine):
    the colours centred on ``origin`` (the image's mean colour, see :func:`nearest`), stored
    channel-major, the weighted colours ``weights * colours`` and the weighted squared norms
    ``weights * ||colour - sq_origin||^2`` around ``sq_origin``, the mean rounded to integers: both
    exact integers in float64, so their per-cluster sums are exact whatever the order of the rows.
    """

    centred_t: np.ndarray  # (4, n) colours - origin, one row per channel, then a row of ones
    weights: np.ndarray  # (n,) pixel counts
    weighted_t: np.ndarray  # (3, n) weights * colours (B, G, R), one row per channel
    weighted_sq: np.ndarray  # (n,) weights * ||colour - sq_origin||^2 (exact integers)
    codes: np.ndarray  # (n,) 0xRRGGBB of the colours: names far candidates; the compiled step reads a colour from it
    origin: np.ndarray  # (3,)
    sq_origin: np.ndarray  # (3,) origin rounded to integers

    def __len__(self) -> int:
        return len(self.weights)

    def slice(self, lo: int, hi: int) -> "Block":
        return Block(self.centred_t[:, lo:hi], self.weights[lo:hi], self.weighted_t[:, lo:hi], self.weighted_sq[lo:hi],
                     self.codes[lo:hi], self.origin, self.sq_origin)


def _centred_rows(colours: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """(4, n): the colours minus ``origin``, one row per channel, then a row of ones (see nearest)."""
    rows = np.ones((4, len(colours)))
    rows[:3] = (colours - origin).T
    return rows


def block(colours: np.ndarray, weights: np.ndarray, codes: np.ndarray, origin) -> Block:
    """Prepare (n, 3) float B, G, R colours with their pixel counts and codes for mapping."""
    origin = np.asarray(origin, np.float64)
    sq_origin = np.rint(origin)
    weights = np.asarray(weights, np.float64)
    centred_t = _centred_rows(colours, origin)
    around = colours - sq_origin  # small integers: exact
    weighted_t = np.empty((3, len(weights)))
    np.multiply(colours.T, weights, out=weighted_t)
    return Block(centred_t, weights, weighted_t, weights * np.einsum("ij,ij->i", around, around), np.asarray(codes),
                 origin, sq_origin)


def _distance_weights(centroids: np.ndarray, origin) -> np.ndarray:
    """(K, 4) [-2c | ||c||^2] for centroids c centred on ``origin``: against a column [x; 1] of
    centred_t, one product gives ||c||^2 - 2 x.c, added in the same order as scikit-learn's gemm
    (checked: identical labels, ties included, tests/test_against_sklearn.py)."""
    c = centroids - np.asarray(origin, np.float64)
    return np.hstack([-2.0 * c, np.einsum("ij,ij->i", c, c)[:, None]])


def _products(weights: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """(K, m) ||c||^2 - 2 x.c for m columns of centred_t. Always through BLAS's matrix-matrix
    product: a single column would go through its matrix-vector product, whose last bits differ,
    so it is computed as two, and every colour gets the same bits whatever block it is in."""
    if columns.shape[1] == 1:
        return (weights @ np.repeat(columns, 2, axis=1))[:, :1]
    return weights @ columns

def nearest(centred_t: np.ndarray, centroids: np.ndarray, origin) -> np.ndarray:
    """Label of each colour (given centred on ``origin``, channel-major, with a 4th row of ones):
    its nearest centroid.

    The nearest centroid is found as scikit-learn's lloyd finds it, in a frame centred at
    ``origin`` (the image's mean colour; sklearn centres the data on its mean), by the smallest
    ||c||^2 - 2 x.c, the first one on a tie. A colour exactly halfway between two centroids (integer
    colours and k-means++ centroids make such ties common) therefore goes where scikit-learn sends
    it. Blocks of CHUNK colours, cluster-major, so each step runs over contiguous rows.
    """
    return nearest_two(centred_t, centroids, origin, second=False)[0]


def nearest_two(centred_t: np.ndarray, centroids: np.ndarray, origin, second: bool = True):
    """(labels, best, runner_up): each colour's nearest centroid as :func:`nearest` chooses it, and
    the values ||c||^2 - 2 x.c of that centroid and of the next nearest (add ||x||^2 for squared
    distances; ``runner_up`` is None unless ``second``; both are +inf with one centroid)."""
    weights = _distance_weights(centroids, origin)
    k, n = len(centroids), centred_t.shape[1]
    labels = np.empty(n, np.intp)
    best = np.empty(n)
    runner_up = np.full(n, np.inf) if second else None
    near = np.empty(min(n, CHUNK), bool)
    for lo in range(0, n, CHUNK):
        d = _products(weights, centred_t[:, lo : lo + CHUNK])  # (K, block)
        lab, low = labels[lo : lo + CHUNK], best[lo : lo + CHUNK]
        if k > 32:
            lab[:] = d.argmin(axis=0)
            columns = np.arange(d.shape[1])
            low[:] = d[lab, columns]
            if second and k > 1:
                d[lab, columns] = np.inf
                runner_up[lo : lo + CHUNK] = d.min(axis=0)
            continue
        low[:] = d[0]
        lab[:] = 0
        closer = near[: d.shape[1]]
        up = runner_up[lo : lo + CHUNK] if second else None
        for j in range(1, k):  # strict "<": the first minimum wins, as argmin's
            if second:  # the runner-up: the smaller of itself and the larger of (best, d_j)
                np.minimum(up, np.maximum(low, d[j]), out=up)
            np.less(d[j], low, out=closer)
            np.minimum(low, d[j], out=low)
            np.copyto(lab, j, where=closer)
    return labels, best, runner_up


def assign(colours: np.ndarray, centroids: np.ndarray, origin=None) -> np.ndarray:
    """Labels of (n, 3) B, G, R colours: their nearest centroid (see :func:`nearest`)."""
    origin = np.zeros(3) if origin is None else np.asarray(origin, np.float64)
    return nearest(_centred_rows(colours, origin), centroids, origin)


def map_block(data: Block, centroids: np.ndarray) -> Partials:
    """Map one block of an image's weighted colours against its centroids (in-mapper combining):
    one Partials with K sums and, if a cluster got no colour here, up to K far candidates."""
    k = len(centroids)
    labels = nearest(data.centred_t, centroids, data.origin)
    sums = np.empty((k, 3))
    for channel in range(3):
        sums[:, channel] = np.bincount(labels, data.weighted_t[channel], minlength=k)
    weights = np.bincount(labels, data.weights, minlength=k)
    square_sums = np.bincount(labels, data.weighted_sq, minlength=k)
    return partials(data, centroids, labels, sums, weights, square_sums)


def cluster_sse(sums: np.ndarray, weights: np.ndarray, square_sums: np.ndarray, centroids: np.ndarray,
                sq_origin: np.ndarray) -> np.ndarray:
    """Squared error per cluster without a per-colour distance: around the integer point o,
    sum w |x - c|^2 = sum w |x - o|^2 - 2 (c - o) . sum w (x - o) + W |c - o|^2 (the sums exact)."""
    c = centroids - sq_origin
    centred_sums = sums - weights[:, None] * sq_origin
    sse = square_sums - 2 * np.einsum("ij,ij->i", c, centred_sums) + weights * np.einsum("ij,ij->i", c, c)
    return np.maximum(sse, 0.0)


def partials(data: Block, centroids: np.ndarray, labels: np.ndarray, sums: np.ndarray, weights: np.ndarray,
             square_sums: np.ndarray) -> Partials:
    """The Partials of a block whose colours have ``labels``, from its exact per-cluster sums of
    weighted colours, weights and weighted squared norms; far candidates if a cluster is empty."""
    k = len(centroids)
    part = Partials(sums=sums, weights=weights, sse=cluster_sse(sums, weights, square_sums, centroids, data.sq_origin))
    if (weights == 0).any():
        # A cluster empty here may be empty everywhere (a cluster empty in the whole image is empty
        # in every map task): send the farthest colours, by their exact distance (as scikit-learn
        # measures it when it relocates an empty cluster), to re-seed it in reduce.
        c = centroids - data.origin
        diff = data.centred_t[:3] - c[labels].T
        dist = np.einsum("ij,ij->j", diff, diff)
        far = _farthest(dist, data.codes, k)
        part.far_dist, part.far_code = dist[far], data.codes[far].astype(np.int64)
        part.far_weight, part.far_label = data.weights[far], labels[far].astype(np.int64)
    return part


def map_colours(colours: np.ndarray, weights: np.ndarray, codes: np.ndarray, centroids: np.ndarray, origin) -> Partials:
    """:func:`map_block` on colours given as arrays (``origin``: the image's mean colour)."""
    return map_block(block(colours, weights, codes, origin), centroids)


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Sorted indices of (at least) the ``k`` largest values: ties at the boundary all kept."""
    if len(values) <= k:
        return np.arange(len(values))
    threshold = np.partition(values, len(values) - k)[len(values) - k]
    return np.flatnonzero(values >= threshold)


def _farthest(dist: np.ndarray, codes: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest distances, ties broken by the smaller code, farthest first.

    Deterministic whatever the order of the rows, so engines that split the data differently pick
    the same candidates.
    """
    pool = _top(dist, k)
    order = np.lexsort((codes[pool], -dist[pool]))
    return pool[order[:k]]


# ---------------------------------------------------------------- combine
def combine(parts: list[Partials]) -> Partials:
    """Add partial sums, weights and errors; keep the K farthest candidates."""
    if len(parts) == 1:
        return parts[0]
    k = parts[0].k
    out = Partials(
        sums=np.sum([p.sums for p in parts], axis=0),
        weights=np.sum([p.weights for p in parts], axis=0),
        sse=np.sum([p.sse for p in parts], axis=0),
    )
    dist = np.concatenate([p.far_dist for p in parts])
    code = np.concatenate([p.far_code for p in parts])
    keep = _farthest(dist, code, k)
    out.far_dist, out.far_code = dist[keep], code[keep]
    out.far_weight = np.concatenate([p.far_weight for p in parts])[keep]
    out.far_label = np.concatenate([p.far_label for p in parts])[keep]
    return out


# ---------------------------------------------------------------- reduce
def reduce_image(part: Partials, centroids: np.ndarray, delta: float, pinned: int = 0) -> Update:
    """New centroids from the combined partials of one image.

    An empty cluster is re-seeded as scikit-learn does it: it gets one pixel of the colour farthest
    from its centroid, taken from the cluster that had it. Each empty cluster gets a different
    colour, and a pixel whose cluster would become empty is passed over, so clusters never vanish.
    A cluster left empty (too few distinct colours) keeps its centroid. Converged: no cluster was
    re-seeded and every centroid moved at most ``delta``.

    ``pinned``: the first ``pinned`` centroids are pinned colours: they never move and are never
    re-seeded (map assigned colours to them as to any other); only the free ones move.
    """
    sums, weights = part.sums.copy(), part.weights.copy()
    reseeded = []
    empty = np.flatnonzero(weights == 0)
    empty = empty[empty >= pinned]
    if empty.size:
        from .colours import codes_to_bgr

        candidates = iter(range(len(part.far_dist)))
        for cluster in empty:
            for c in candidates:
                donor = int(part.far_label[c])
                if part.far_dist[c] <= 0 or weights[donor] <= 1:
                    continue
                colour = codes_to_bgr(part.far_code[c : c + 1])[0]
                sums[donor] -= colour
                weights[donor] -= 1
                sums[cluster] = colour
                weights[cluster] = 1
                reseeded.append(int(cluster))
                break
    new = centroids.astype(np.float64, copy=True)
    filled = weights > 0
    filled[:pinned] = False
    new[filled] = sums[filled] / weights[filled, None]
    shift = np.sqrt(((new - centroids) ** 2).sum(axis=1))
    converged = not reseeded and bool(shift.max() <= delta)
    return Update(new, shift, weights, float(part.sse.sum()), reseeded, converged)


# ---------------------------------------------------------------- in-process map over a whole table
_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="kmeans-map")
    return _POOL


def map_table(data: Block, centroids: np.ndarray, tasks: int = 1) -> Partials:
    """Map a whole prepared table as ``tasks`` map tasks in threads, then combine (``tasks=0``: one
    per core). One task is the default: the kernel is many short NumPy calls and, measured on two
    cores, threads made it slower (bench/bench_core.py)."""
    if tasks <= 0:
        tasks = os.cpu_count() or 1
    if tasks == 1:
        return map_block(data, centroids)
    bounds = np.linspace(0, len(data), tasks + 1).astype(int)
    slices = [data.slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
    return combine(list(_pool().map(lambda part: map_block(part, centroids), slices)))


# ---------------------------------------------------------------- wire format (Hadoop Streaming)
def encode(image_id: str, part: Partials) -> str:
    """Text records of one image's partials, one per line, keyed by image id (tab-separated key).

    ``<id>\\tP <cluster> <sum B> <sum G> <sum R> <weight> <sse>`` for each non-empty cluster and
    ``<id>\\tF <dist> <code> <weight> <label>`` for each far candidate.
    """
    lines = [
        f"{image_id}\tP {j} {s[0]!r} {s[1]!r} {s[2]!r} {w!r} {e!r}"
        for j, (s, w, e) in enumerate(zip(part.sums.tolist(), part.weights.tolist(), part.sse.tolist()))
        if w > 0
    ]
    lines += [
        f"{image_id}\tF {d!r} {c} {w!r} {lab}"
        for d, c, w, lab in zip(part.far_dist.tolist(), part.far_code.tolist(), part.far_weight.tolist(), part.far_label.tolist())
    ]
    return "".join(line + "\n" for line in lines)


#: The records of the map output (and of the combiners' output), for messages.
MAP_OUTPUT_LINE = ("'<image id>\\tP <cluster> <sum B> <sum G> <sum R> <weight> <sse>' or "
                   "'<image id>\\tF <dist> <code> <weight> <label>'")


def decode(lines, k_of, numbers=None) -> dict[str, Partials]:
    """Parse records (any order, any number of map tasks) into one combined Partials per image.

    ``k_of(image_id)`` gives the image's K (KeyError for an image the job does not hold);
    ``numbers`` the line number of each record in its input (default 1, 2, ...). A malformed record
    raises ValueError naming its line number and the expected format, never the record.
    """
    acc: dict[str, Partials] = {}
    far: dict[str, list] = {}
    for number, line in zip(numbers or itertools.count(1), lines):
        line = line.rstrip("\n")
        if not line:
            continue
        try:
            image_id, value = line.split("\t", 1)
            kind, *fields = value.split(" ")
            if image_id not in acc:
                acc[image_id] = Partials.zeros(k_of(image_id))
                far[image_id] = []
            part = acc[image_id]
            if kind == "P" and len(fields) == 6:
                j = int(fields[0])
                part.sums[j] += [float(v) for v in fields[1:4]]
                part.weights[j] += float(fields[4])
                part.sse[j] += float(fields[5])
            elif kind == "F" and len(fields) == 4:
                far[image_id].append((float(fields[0]), int(fields[1]), float(fields[2]), int(fields[3])))
            else:
                raise ValueError("unknown record kind")
        except KeyError:
            raise ValueError(f"map output line {number}: an image id the job's centroids file does not hold") from None
        except (ValueError, IndexError):
            raise ValueError(f"map output line {number}: expected {MAP_OUTPUT_LINE}") from None
    for image_id, part in acc.items():
        if far[image_id]:
            dist, code, weight, label = (np.array(col) for col in zip(*far[image_id]))
            keep = _farthest(dist, code, part.k)
            part.far_dist, part.far_code = dist[keep], code[keep].astype(np.int64)
            part.far_weight, part.far_label = weight[keep], label[keep].astype(np.int64)
    return acc
