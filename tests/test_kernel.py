"""The embedded engine's kernel (Hamerly bounds), k-means++ without scikit-learn, the engine
interface and the start-up budget, on real photos, against scikit-learn and the full computation."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.cluster import KMeans, kmeans_plusplus as sk_kmeans_plusplus

from conftest import ROOT, photo_bgr
from kmeans_ops import hamerly, mapreduce
from kmeans_ops.colours import bgr_to_codes, colour_table
from kmeans_ops.initialise import initial_centroids, kmeans_plusplus
from kmeans_ops.reconstruct import label_table, palette_of, quality

NEEDS_NUMBA = pytest.mark.skipif(not hamerly.COMPILED, reason="no Numba")
# "mixed": NumPy and the compiled loops in turn on the same bounds (as while the loops load)
KERNELS = ["numpy", pytest.param("compiled", marks=NEEDS_NUMBA), pytest.param("mixed", marks=NEEDS_NUMBA)]
FIELDS = ("sums", "weights", "sse", "far_dist", "far_code", "far_weight", "far_label")


def bounded_lloyd(table, centroids, iterations, kernel):
    """Lloyd iterations with the bounded map step, checking each iteration's partials against the
    full map of the table (bit for bit). Returns the centroids and the share of colours whose K
    distances were computed in each iteration after the first."""
    data = mapreduce.block(table.bgr(), table.counts, table.codes, table.mean())
    state, shares = None, []
    for iteration in range(iterations):
        full = mapreduce.map_block(data, centroids)
        compiled = kernel == "compiled" or (kernel == "mixed" and iteration % 3 != 1)
        if state is None:
            state, part = hamerly.start(data, centroids, compiled=compiled)
        else:
            part = hamerly.step(data, state, centroids, compiled=compiled)
            shares.append(state.recomputed / len(state))
        for name in FIELDS:
            assert np.array_equal(getattr(part, name), getattr(full, name)), name
        centroids = mapreduce.reduce_image(part, centroids, delta=0.0).centroids
    return centroids, shares


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("name,init,seed,k", [
    ("china", "kmeans++", 3, 8), ("flower", "random", 3, 8), ("coffee", "kmeans++", 0, 16),
    ("rocket", "random", 3, 8), ("astronaut", "kmeans++", 1, 32), ("chelsea", "kmeans++", 2, 40),
])
def test_bounds_give_the_full_computation_and_sklearn_lloyd(kernel, name, init, seed, k):
    """Same partials as the full map at every iteration (hence the same centroids as before), and
    the centroids of scikit-learn's lloyd on all pixels from the same start, to 1e-9. K=40 takes
    the kernel's argmin path (K > 32); the random starts re-seed empty clusters."""
    bgr = photo_bgr(name)
    table = colour_table(bgr)
    start = initial_centroids(table, k, init, seed=seed)
    ours, shares = bounded_lloyd(table, start, 12, kernel)
    km = KMeans(k, init=start, n_init=1, max_iter=12, tol=0.0, algorithm="lloyd").fit(bgr.reshape(-1, 3).astype(float))
    np.testing.assert_allclose(ours, km.cluster_centers_, rtol=1e-9, atol=1e-9)
    assert shares[-1] < 0.5  # the bounds do skip colours


def test_ties_are_decided_by_the_full_kernel():
    """Colours exactly halfway between two centroids (integer colours, centroids on colours) go
    where the full kernel (and scikit-learn) sends them, with both kernels, also when they are
    the only colours that fail their bounds."""
    colours = np.array([[0, 0, 0], [2, 0, 0], [1, 0, 0], [1, 1, 1], [10, 10, 10], [12, 10, 10], [11, 10, 10]], float)
    weights = np.array([3, 1, 2, 5, 1, 4, 2], float)
    codes = bgr_to_codes(colours.astype(np.uint32))  # the compiled step reads a colour from its code
    data = mapreduce.block(colours, weights, codes, weights @ colours / weights.sum())
    for compiled in (False, True) if hamerly.COMPILED else (False,):
        centroids = np.array([[0, 0, 0], [2, 0, 0], [10, 10, 10], [12, 10, 10]], float)
        state, part = hamerly.start(data, centroids, compiled=compiled)
        for moved in ([0, 0, 0], [1e-4, 0, 0], [0, 3e-4, 0], [0, 0, 0]):
            centroids = centroids + np.array(moved)
            part = hamerly.step(data, state, centroids, compiled=compiled)
            full = mapreduce.map_block(data, centroids)
            for name in FIELDS:
                assert np.array_equal(getattr(part, name), getattr(full, name)), (compiled, name)
            assert np.array_equal(state.labels, mapreduce.nearest(data.centred_t, centroids, data.origin))


def test_embedded_engine_keeps_bounds_and_equals_full_map(tmp_path):
    """Through the engine and the driver: the same clusters files as mapping everything at each
    iteration (tasks=2 maps the whole table in threads), and later iterations recompute few colours."""
    from kmeans_ops.driver import run_iterations
    from kmeans_ops.engines import Engine, get_engine
    from kmeans_ops.formats import read_clusters, write_clusters, write_points
    from kmeans_ops.params import validate
    from kmeans_ops.workarea import WorkArea

    table = colour_table(photo_bgr("coffee"))
    params = validate(k=16, max_iter=15, delta=0.0)
    results = {}
    for tasks in (1, 2):
        area = WorkArea(str(tmp_path / f"tasks{tasks}"))
        os.makedirs(area.image_dir("coffee"))
        write_points(area.points("coffee"), "coffee", table)
        write_clusters(area.clusters("coffee", 0), kmeans_plusplus(table, 16, 0))
        engine = get_engine("local", tasks=tasks)
        assert isinstance(engine, Engine) and dict(engine.last_job) == {}
        engine.remember(area, "coffee", table)
        state = run_iterations(area, ["coffee"], engine, params)
        results[tasks] = [read_clusters(area.clusters("coffee", i)) for i in range(1, state["coffee"]["iterations"] + 1)]
        if tasks == 1:
            shares = [recomputed / n for n, recomputed, _ in engine.recomputed]
            assert shares[0] == 1 and max(shares[5:]) < 0.2, shares
    assert len(results[1]) == len(results[2]) and all(np.array_equal(a, b) for a, b in zip(results[1], results[2]))


def test_both_engines_implement_the_interface():
    from kmeans_ops.engines import Engine
    from kmeans_ops.engines.hadoop import HadoopEngine
    from kmeans_ops.engines.local import EmbeddedEngine

    for cls in (EmbeddedEngine, HadoopEngine):
        assert issubclass(cls, Engine) and not getattr(cls, "__abstractmethods__", None)
    with pytest.raises(TypeError):
        Engine()


@pytest.mark.parametrize("name", ["china", "flower", "coffee", "rocket"])
def test_kmeans_plusplus_same_draws_as_sklearn(name):
    """The same seed gives the same centroids, and they are scikit-learn's kmeans_plusplus's
    (same greedy rule, same random draws) with the counts as sample weights."""
    table = colour_table(photo_bgr(name))
    for seed in (0, 1, 7):
        ours = kmeans_plusplus(table, 16, seed)
        assert np.array_equal(ours, kmeans_plusplus(table, 16, seed))
        theirs, _ = sk_kmeans_plusplus(table.bgr(), 16, sample_weight=table.counts.astype(float), random_state=seed)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=0)
    assert not np.array_equal(kmeans_plusplus(table, 16, 0), kmeans_plusplus(table, 16, 1))


def test_kmeans_plusplus_quality_over_20_seeds_within_1_percent_of_sklearn():
    """Over 20 seeds on the suite's photos, K=16: the mean final MSE after the same 10 Lloyd
    iterations from our k-means++ is within 1% of that from scikit-learn's kmeans_plusplus."""
    for name in ("china", "flower", "astronaut", "coffee", "chelsea", "rocket"):
        table = colour_table(photo_bgr(name))
        colours, weights = table.bgr(), table.counts.astype(float)
        ours, theirs = [], []
        for seed in range(20):
            for start, out in ((kmeans_plusplus(table, 16, 100 + seed), ours),
                               (sk_kmeans_plusplus(colours, 16, sample_weight=weights, random_state=100 + seed)[0],
                                theirs)):
                km = KMeans(16, init=start, n_init=1, max_iter=10, tol=0.0, algorithm="lloyd").fit(
                    colours, sample_weight=weights)
                out.append(quality(table, label_table(table, km.cluster_centers_), palette_of(km.cluster_centers_))["mse"])
        assert np.mean(ours) <= 1.01 * np.mean(theirs), (name, np.mean(ours), np.mean(theirs))


def _modules_of(argv, tmp_path):
    """Top-level modules a fresh ``python -X importtime`` process imports running ``argv``."""
    done = subprocess.run([sys.executable, "-X", "importtime", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    names = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines()
             if line.startswith("import time:")}
    return done, names


def test_start_up_imports_only_what_the_run_uses(photo_dir, tmp_path):
    """--help and a one-image run import no scikit-learn, no Airflow, no Jinja2 (a CLI run writes
    no report); --help imports neither NumPy nor OpenCV."""
    done, names = _modules_of(["-m", "kmeans_ops", "quantize", "--help"], tmp_path)
    assert done.returncode == 0 and "usage" in done.stdout
    assert not names & {"sklearn", "scipy", "airflow", "jinja2", "numpy", "cv2", "numba"}, names
    done, names = _modules_of(["-m", "kmeans_ops", "quantize", str(photo_dir / "coffee.png"), "-k", "8", "--out",
                               str(tmp_path / "out"), "-q"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.load(open(tmp_path / "out" / "coffee.json"))["k"] == 8
    assert not names & {"sklearn", "airflow", "jinja2"}, names & {"sklearn", "airflow", "jinja2"}


def test_separations_are_the_two_nearest_centroids():
    """hamerly.separations, the bound the compiled step takes from the centroids' distances: per
    centroid the distances to its nearest and second nearest other centroid and the nearest's index
    (any of several at the same distance), inf where there is none (K = 1 and 2)."""
    rng = np.random.default_rng(3)
    for k in (1, 2, 3, 16, 65):
        centroids = rng.integers(0, 256, (k, 3)).astype(float)
        if k > 3:
            centroids[3] = centroids[1]  # a centroid at distance 0, and a tie for the others
        far, closest = hamerly.separations(centroids)
        dist = np.sqrt(((centroids[:, None] - centroids[None]) ** 2).sum(-1))
        np.fill_diagonal(dist, np.inf)
        ordered = np.sort(dist, axis=1)
        assert far.shape == (2, k) and closest.shape == (k,)
        if k == 1:
            assert np.isinf(far).all()
            continue
        assert np.array_equal(far[0], ordered[:, 0]) and np.array_equal(far[1], ordered[:, 1]), k
        assert np.array_equal(dist[np.arange(k), closest], ordered[:, 0]) and (closest != np.arange(k)).all()
