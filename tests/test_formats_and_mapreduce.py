"""Points and clusters files, the seed's formats, and the MapReduce functions' invariants."""

import json

import numpy as np
import pytest

from conftest import photo_bgr, run_cli
from kmeans_ops import formats, mapreduce
from kmeans_ops.colours import ColourTable, colour_table
from kmeans_ops.errors import InputError
from kmeans_ops.initialise import initial_centroids


@pytest.fixture(scope="module")
def table():
    return colour_table(photo_bgr("flower"))


def test_colour_table_counts_every_pixel(table):
    bgr = photo_bgr("flower")
    assert table.n_pixels == bgr.shape[0] * bgr.shape[1]
    expected = np.unique(bgr.reshape(-1, 3), axis=0)  # B, G, R rows sorted
    assert len(table) == len(expected)
    got = table.bgr()
    assert set(map(tuple, got.astype(int).tolist())) == set(map(tuple, expected.tolist()))


def test_weighted_points_round_trip(tmp_path, table):
    path = tmp_path / "points.tsv"
    formats.write_points(str(path), "flower", table)
    first = path.read_text().splitlines()[0]
    b, g, r = table.bgr()[0].astype(int)
    assert first == f"flower\t{b:03d} {g:03d} {r:03d} {table.counts[0]:010d}"
    back = formats.read_points(str(path))
    assert np.array_equal(back.codes, table.codes) and np.array_equal(back.counts, table.counts)


def test_many_images_in_one_stream_are_split_by_id(table):
    small = ColourTable(codes=np.array([1, 2], np.uint32), counts=np.array([5, 6]))
    data = formats.format_points("a", small) + formats.format_points("bb%20c", table) + formats.format_points("a", small)
    runs = formats.parse_points(data)
    assert [image_id for image_id, _ in runs] == ["a", "bb%20c", "a"]
    assert np.array_equal(runs[1][1].codes, table.codes)


@pytest.mark.parametrize(
    "line,why",
    [
        ("img\t001 002 003 000000000x", "malformed"),
        ("img 001 002 003 0000000001", "no tab"),
        ("img\t001 002 300 0000000001", "above 255"),
        ("img\t001 002 003 0000000000", ">= 1"),
        ("\t001 002 003 0000000001", "too short"),
    ],
)
def test_bad_points_line_names_file_and_line(line, why):
    data = b"img\t001 002 003 0000000004\n" + line.encode() + b"\n"
    with pytest.raises(InputError) as err:
        formats.parse_points(data, "some/points.tsv")
    assert "some/points.tsv" in str(err.value) and "line 2" in str(err.value) and why in str(err.value)


def test_clusters_file_round_trips_exactly(tmp_path):
    centroids = np.random.default_rng(1).uniform(0, 255, (7, 3))
    path = str(tmp_path / "clusters.txt")
    formats.write_clusters(path, centroids)
    assert open(path).readline().startswith("1 ")
    assert np.array_equal(formats.read_clusters(path), centroids)


@pytest.mark.parametrize("text,why", [("1 2 3\n", "4 columns"), ("1 0 0 0\n3 1 1 1\n", "labels must be 1..2"), ("1 0 0 999\n", "0..255")])
def test_bad_clusters_file(tmp_path, text, why):
    path = tmp_path / "clusters.txt"
    path.write_text(text)
    with pytest.raises(InputError, match=why):
        formats.read_clusters(str(path))


def test_seed_files_give_the_same_result_as_the_image(tmp_path):
    """points.txt/clusters.txt as the seed's data_prep.py wrote them == the image with that init."""
    import cv2

    bgr = photo_bgr("coffee")[::2, ::2]
    image = tmp_path / "coffee.png"
    cv2.imwrite(str(image), bgr)
    formats.write_seed_points(str(tmp_path / "points.txt"), bgr)
    assert (tmp_path / "points.txt").read_text().splitlines()[0] == " ".join(f"{v:.1f}" for v in bgr[0, 0])
    rng = np.random.default_rng(4)
    lo, hi = bgr.min(), bgr.max()
    seed_clusters = "\n".join(f"{i} {' '.join(str(v) for v in rng.uniform(lo, hi, 3))}" for i in range(1, 11))
    (tmp_path / "clusters.txt").write_text(seed_clusters + "\n")
    common = ["--init", tmp_path / "clusters.txt", "--max-iter", 50, "--delta", 0, "-q"]
    status, err = run_cli("quantize", tmp_path / "points.txt", "--out", tmp_path / "a", *common)
    assert status == 0, err
    status, err = run_cli("quantize", image, "--out", tmp_path / "b", *common)
    assert status == 0, err
    a = json.load(open(tmp_path / "a" / "points.json"))
    b = json.load(open(tmp_path / "b" / "coffee.json"))
    assert a["k"] == b["k"] == 10 and a["iterations"] == b["iterations"]
    assert a["centroids_rgb"] == b["centroids_rgb"]
    assert a["mse"] == b["mse"] and a["output"] is None


def test_result_does_not_depend_on_how_the_colours_are_split(table):
    """Map tasks over any split of the data, combined in any order, give the same bits."""
    centroids = initial_centroids(table, 12, "random", seed=7)
    colours, weights, origin = table.bgr(), table.counts.astype(float), table.mean()
    whole = mapreduce.reduce_image(mapreduce.map_colours(colours, weights, table.codes, centroids, origin), centroids, 1.0)
    order = np.random.default_rng(0).permutation(len(colours))
    parts = [
        mapreduce.map_colours(colours[idx], weights[idx], table.codes[idx], centroids, origin)
        for idx in np.array_split(order, 7)
    ]
    text = "".join(mapreduce.encode("flower", p) for p in parts[::-1])
    decoded = mapreduce.decode(text.splitlines(), lambda _: 12)["flower"]
    for part in (mapreduce.combine(parts), decoded):
        split = mapreduce.reduce_image(part, centroids, 1.0)
        assert np.array_equal(split.centroids, whole.centroids)
        assert split.reseeded == whole.reseeded and np.array_equal(split.weights, whole.weights)
        assert split.sse == pytest.approx(whole.sse, rel=1e-12)


def test_map_emits_at_most_k_records_per_image(table):
    centroids = initial_centroids(table, 16, "kmeans++", seed=0)
    part = mapreduce.map_colours(table.bgr(), table.counts.astype(float), table.codes, centroids, table.mean())
    lines = mapreduce.encode("img", part).splitlines()
    assert sum(line.split("\t")[1].startswith("P") for line in lines) <= 16
    assert sum(line.split("\t")[1].startswith("F") for line in lines) <= 16


def test_empty_cluster_is_reseeded_at_the_farthest_colour():
    colours = np.array([[0, 0, 0], [10, 0, 0], [200, 0, 0]], float)
    codes = np.array([0, 10, 200], np.uint32)  # B is the low byte
    weights = np.array([5.0, 5.0, 2.0])
    centroids = np.array([[5.0, 0, 0], [255.0, 255, 255], [250.0, 250, 250]])
    part = mapreduce.map_colours(colours, weights, codes, centroids, np.zeros(3))
    update = mapreduce.reduce_image(part, centroids, 1.0)
    # every colour is nearest to cluster 0, so clusters 1 and 2 are empty. Cluster 1 gets one pixel of
    # the farthest colour (200,0,0); cluster 2 one pixel of the next farthest, (0,0,0) or (10,0,0),
    # both at distance 5 (tie: the smaller code). Cluster 0 keeps the rest.
    assert update.reseeded == [1, 2] and not update.converged
    np.testing.assert_allclose(update.centroids[1], [200, 0, 0])
    np.testing.assert_allclose(update.centroids[2], [0, 0, 0])
    assert update.weights.tolist() == [10.0, 1.0, 1.0]
    np.testing.assert_allclose(update.centroids[0], [(0 * 4 + 10 * 5 + 200 * 1) / 10, 0, 0])


@pytest.mark.parametrize("delta,converged", [(0.0, False), (1.0, True)])
def test_convergence_is_the_largest_shift_against_delta(delta, converged):
    colours = np.array([[0, 0, 0], [100, 100, 100]], float)
    centroids = np.array([[0.5, 0, 0], [100, 100, 100]])
    part = mapreduce.map_colours(colours, np.ones(2), np.array([0, 0x646464], np.uint32), centroids, np.zeros(3))
    update = mapreduce.reduce_image(part, centroids, delta)
    assert update.max_shift == 0.5 and update.converged is converged
