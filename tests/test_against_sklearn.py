"""The algorithm against scikit-learn's KMeans on real photos.

Tolerance: centroids agree to 1e-9 relative (rtol) and 1e-9 colour units absolute. Sums of integer
colours times integer counts are exact in float64, so in practice they agree to the last few bits.
The iterations map as the embedded engine does (Hamerly bounds, kmeans_ops.hamerly);
tests/test_kernel.py checks that against the full map of every colour.
"""

import numpy as np
import pytest
from sklearn.cluster import KMeans

from conftest import photo_bgr
from kmeans_ops import hamerly, mapreduce
from kmeans_ops.colours import colour_table
from kmeans_ops.initialise import initial_centroids
from kmeans_ops.reconstruct import label_table, palette_of, quality

RTOL = 1e-9
ATOL = 1e-9


def lloyd(table, centroids, iterations):
    """Our map/combine/reduce for a fixed number of iterations, no early stop, the map step with
    the embedded engine's bounds.

    Returns the centroids and how many clusters were re-seeded in all."""
    data = mapreduce.block(table.bgr(), table.counts, table.codes, table.mean())
    reseeded, state = 0, None
    for _ in range(iterations):
        if state is None:
            state, part = hamerly.start(data, centroids)
        else:
            part = hamerly.step(data, state, centroids)
        update = mapreduce.reduce_image(part, centroids, delta=0.0)
        centroids, reseeded = update.centroids, reseeded + len(update.reseeded)
    return centroids, reseeded


# (photo, init, seed). The random starts leave 1 or 2 clusters empty at the first step, which both
# implementations re-seed at the farthest pixel (with 3 or more at once, sklearn's pairing of empty
# clusters and far pixels follows its argpartition's internal order, which we do not copy).
CASES = [
    ("china", "kmeans++", 3), ("flower", "kmeans++", 3), ("coffee", "kmeans++", 3), ("rocket", "kmeans++", 1),
    ("china", "random", 3), ("china", "random", 5), ("flower", "random", 3), ("coffee", "random", 3),
    ("rocket", "random", 3),
]


@pytest.mark.parametrize("name,init,seed", CASES)
def test_same_centroids_as_sklearn_lloyd_on_all_pixels(name, init, seed):
    bgr = photo_bgr(name)
    table = colour_table(bgr)
    start = initial_centroids(table, 8, init, seed=seed)
    ours, reseeded = lloyd(table, start, iterations=10)
    km = KMeans(n_clusters=8, init=start, n_init=1, max_iter=10, tol=0.0, algorithm="lloyd")
    km.fit(bgr.reshape(-1, 3).astype(np.float64))
    np.testing.assert_allclose(ours, km.cluster_centers_, rtol=RTOL, atol=ATOL)
    if (name, init, seed) in [("china", "random", 5), ("flower", "random", 3)]:
        assert reseeded > 0  # these starts do exercise the re-seeding of empty clusters


def test_weighted_table_equals_all_pixels():
    """sklearn itself: weighted distinct colours give the same centroids as all pixels."""
    bgr = photo_bgr("chelsea")
    table = colour_table(bgr)
    start = initial_centroids(table, 12, "kmeans++", seed=0)
    all_pixels = KMeans(12, init=start, n_init=1, max_iter=15, tol=0.0, algorithm="lloyd").fit(
        bgr.reshape(-1, 3).astype(np.float64)
    )
    weighted = KMeans(12, init=start, n_init=1, max_iter=15, tol=0.0, algorithm="lloyd").fit(
        table.bgr(), sample_weight=table.counts.astype(np.float64)
    )
    np.testing.assert_allclose(weighted.cluster_centers_, all_pixels.cluster_centers_, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(lloyd(table, start, 15)[0], all_pixels.cluster_centers_, rtol=RTOL, atol=ATOL)
    assert table.n_pixels == bgr.shape[0] * bgr.shape[1]


def test_quality_within_two_percent_of_sklearn_kmeanspp(photo_dir, tmp_path):
    """k-means++ at K=16 through the CLI: MSE on average at most 2% above sklearn's k-means++."""
    from conftest import run_cli
    import json

    names = ["china", "flower", "astronaut", "coffee", "chelsea", "rocket"]
    ratios = []
    for name in names:
        bgr = photo_bgr(name)
        path = next(photo_dir.glob(f"{name}.*"))
        status, err = run_cli("quantize", path, "-k", 16, "--seed", 0, "--out", tmp_path, "-q")
        assert status == 0, err
        ours = json.load(open(tmp_path / f"{name}.json"))["mse"]
        km = KMeans(16, init="k-means++", n_init=1, random_state=0, algorithm="lloyd").fit(
            bgr.reshape(-1, 3).astype(np.float64)
        )
        table = colour_table(bgr)
        theirs = quality(table, label_table(table, km.cluster_centers_), palette_of(km.cluster_centers_))["mse"]
        ratios.append(ours / theirs)
    assert np.mean(ratios) <= 1.02, ratios


def test_cli_json_reproduces_with_sklearn_from_its_initial_centroids(photo_dir, tmp_path):
    """What a user can check by hand: the JSON's initial centroids, given to scikit-learn for the
    same number of iterations, give the JSON's centroids."""
    import json

    from conftest import run_cli

    status, err = run_cli("quantize", photo_dir / "rocket.png", "-k", 7, "--seed", 11, "--max-iter", 6,
                          "--delta", 0, "--out", tmp_path, "-q")
    assert status == 0, err
    result = json.load(open(tmp_path / "rocket.json"))
    start = np.array(result["initial_centroids_rgb"])[:, ::-1]  # JSON is R, G, B; pixels are B, G, R
    km = KMeans(7, init=start, n_init=1, max_iter=result["iterations"], tol=0.0, algorithm="lloyd")
    km.fit(photo_bgr("rocket").reshape(-1, 3).astype(np.float64))
    np.testing.assert_allclose(np.array(result["centroids_rgb"])[:, ::-1], km.cluster_centers_, rtol=RTOL, atol=ATOL)
