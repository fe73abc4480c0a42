"""One palette for a whole run (``--palette run``) and a fixed palette file (``--palette PATH``).

The shared palette equals scikit-learn's ``KMeans(algorithm="lloyd", tol=0)`` fitted on the union of
all the images' pixels from the same initial centroids (1e-6 relative, 1e-6 colour units absolute),
with k-means++ and with the seed's random rule, on the embedded engine and on the dev Hadoop cluster
(one job per iteration for the whole run); every image's JSON carries the shared centroids and its
own figures, measured here directly from the written PNG.
"""

import json
import os
import posixpath
import subprocess
import sys

import cv2
import numpy as np
import pytest
from sklearn.cluster import KMeans

from conftest import ROOT, photo_bgr, run_cli
from kmeans_ops import palette
from kmeans_ops import params as P
from kmeans_ops.colours import colour_table
from kmeans_ops.driver import run_palette
from kmeans_ops.engines.local import EmbeddedEngine
from kmeans_ops.formats import merge_tables, read_clusters, read_points, write_clusters
from kmeans_ops.ingest import ingest, read_image
from kmeans_ops.workarea import WorkArea
from test_hadoop import hadoop  # noqa: F401 - the dev cluster (started if down), a session fixture

RTOL = ATOL = 1e-6
PHOTOS = ("china.jpg", "coffee.png", "rocket.png")


def union_pixels(paths) -> np.ndarray:
    """Every pixel of the images, decoded as ingest decodes them, as one (n, 3) float B, G, R array."""
    return np.concatenate([read_image(str(p)).bgr.reshape(-1, 3) for p in paths]).astype(np.float64)


def sklearn_lloyd(pixels: np.ndarray, init_bgr: np.ndarray, iterations: int) -> np.ndarray:
    km = KMeans(n_clusters=len(init_bgr), init=init_bgr, n_init=1, max_iter=iterations, tol=0.0, algorithm="lloyd")
    return km.fit(pixels).cluster_centers_


def bgr(rgb_list) -> np.ndarray:
    return np.array(rgb_list, np.float64)[:, ::-1]


def check_own_figures(result: dict, source, output) -> None:
    """An image's figures against a direct computation from its written PNG: the MSE and PSNR of
    the output against the source, every output colour in the shared palette, and every distinct
    source colour drawn with the palette colour of one of its nearest centroids."""
    original = read_image(str(source)).bgr.reshape(-1, 3).astype(np.int64)
    written = cv2.imread(str(output), cv2.IMREAD_COLOR).reshape(-1, 3).astype(np.int64)
    mse = float(((written - original) ** 2).sum()) / original.size
    assert result["mse"] == pytest.approx(mse, rel=1e-12)
    assert result["psnr"] == pytest.approx(10 * np.log10(255**2 / mse), rel=1e-12)
    palette_bgr = np.array(result["palette_rgb"])[:, ::-1]
    assert {tuple(c) for c in np.unique(written, axis=0)} <= {tuple(c) for c in palette_bgr}
    colours, first = np.unique(original, axis=0, return_index=True)
    d = ((colours[:, None, :] - bgr(result["centroids_rgb"])[None]) ** 2).sum(axis=2)
    drawn = written[first]
    nearest_ok = (d <= d.min(axis=1, keepdims=True) + 1e-9) & (palette_bgr[None] == drawn[:, None]).all(axis=2)
    assert nearest_ok.any(axis=1).all()
    assert sum(result["cluster_pixels"]) == len(original)


@pytest.mark.parametrize("init,seed", [("kmeans++", 3), ("random", 5)])
def test_run_palette_equals_sklearn_on_the_union_embedded(photo_dir, tmp_path, init, seed):
    paths = [photo_dir / name for name in PHOTOS]
    work = tmp_path / "work"
    status, err = run_cli("quantize", *paths, "-k", 8, "--palette", "run", "--init", init, "--seed", seed,
                          "--max-iter", 10, "--delta", 0, "--out", tmp_path / "out", "--work", work)
    assert status == 0, err
    assert "one palette for 3 image(s)" in err
    results = {p.stem: json.load(open(tmp_path / "out" / f"{p.stem}.json")) for p in paths}
    first = results["china"]
    for result in results.values():  # one palette: the same centroids, start and history everywhere
        assert result["palette"] == {"mode": "run", "unit": palette.RUN_UNIT, "images": 3}
        assert result["params"]["palette"] == "run"
        for key in ("centroids_rgb", "initial_centroids_rgb", "palette_rgb", "iterations", "history", "k"):
            assert result[key] == first[key]
    assert first["k"] == 8 and first["iterations"] >= 1
    assert bool(first["history"][0]["reseeded"]) == (init == "random")  # a random start re-seeds one cluster
    expected = sklearn_lloyd(union_pixels(paths), bgr(first["initial_centroids_rgb"]), first["iterations"])
    np.testing.assert_allclose(bgr(first["centroids_rgb"]), expected, rtol=RTOL, atol=ATOL)
    for p in paths:
        check_own_figures(results[p.stem], p, tmp_path / "out" / f"{p.stem}.png")
    assert len({r["mse"] for r in results.values()}) == 3  # each image its own figures
    # the work area: one unit holding the union of the tables; no image got centroids of its own
    area = WorkArea(str(work))
    union = read_points(area.points(palette.RUN_UNIT))
    tables = [colour_table(read_image(str(p)).bgr) for p in paths]
    assert len(union) == len(merge_tables(tables)) < sum(len(t) for t in tables)
    assert union.n_pixels == sum(t.n_pixels for t in tables)
    assert all(not os.path.exists(area.clusters(p.stem, 0)) for p in paths)
    meta = json.load(open(area.meta(palette.RUN_UNIT)))
    assert meta["kind"] == "palette" and meta["members"] == [p.stem for p in paths]
    # the engine staged and iterated the unit alone; its final centroids came back beside the images
    assert os.listdir(os.path.join(work, "shared", "images")) == [palette.RUN_UNIT]
    np.testing.assert_array_equal(read_clusters(area.clusters(palette.RUN_UNIT, first["iterations"])),
                                  bgr(first["centroids_rgb"]))
    np.testing.assert_array_equal(meta["mean_bgr"], union_pixels(paths).mean(axis=0))


def test_run_palette_of_one_image_equals_its_own_palette(photo_dir, tmp_path):
    """With one image the union is its table: the same centroids and the same pixels as per image."""
    common = [photo_dir / "coffee.png", "-k", 6, "--max-iter", 5, "--seed", 2, "-q"]
    assert run_cli("quantize", *common, "--out", tmp_path / "run", "--palette", "run")[0] == 0
    assert run_cli("quantize", *common, "--out", tmp_path / "image")[0] == 0
    shared = json.load(open(tmp_path / "run" / "coffee.json"))
    alone = json.load(open(tmp_path / "image" / "coffee.json"))
    assert "palette" not in alone and alone["params"]["palette"] == "image"
    for key in ("centroids_rgb", "initial_centroids_rgb", "iterations", "mse", "cluster_pixels"):
        assert shared[key] == alone[key]
    assert np.array_equal(cv2.imread(str(tmp_path / "run" / "coffee.png")), cv2.imread(str(tmp_path / "image" / "coffee.png")))


def test_run_palette_leaves_out_an_image_that_cannot_be_read(photo_dir, tmp_path):
    """A bad image among the run's fails alone (exit 1); the palette is the union of the others."""
    (tmp_path / "broken.png").write_bytes((photo_dir / "coffee.png").read_bytes()[:500])
    paths = [photo_dir / "chelsea.png", tmp_path / "broken.png", photo_dir / "rocket.png"]
    status, err = run_cli("quantize", *paths, "-k", 4, "--palette", "run", "--max-iter", 3, "--out", tmp_path / "out",
                          "--work", tmp_path / "work")
    assert status == 1 and "broken.png" in err and "2 of 3 image(s) done" in err
    assert sorted(os.listdir(tmp_path / "out")) == ["chelsea.json", "chelsea.png", "rocket.json", "rocket.png"]
    assert json.load(open(tmp_path / "out" / "rocket.json"))["palette"]["images"] == 2
    meta = json.load(open(WorkArea(str(tmp_path / "work")).meta(palette.RUN_UNIT)))
    assert meta["members"] == ["chelsea", "rocket"]
    sizes = [read_image(str(photo_dir / name)).shape for name in ("chelsea.png", "rocket.png")]
    assert meta["pixels"] == sum(height * width for height, width in sizes)


def test_union_table_equals_merge_tables():
    tables = [colour_table(photo_bgr(name)) for name in ("chelsea", "coffee", "astronaut")]
    tables.append(tables[0])  # an image given twice counts twice
    union, merged = palette.union_table(tables), merge_tables(tables)
    assert union.codes.dtype == np.uint32 and union.counts.dtype == np.int64
    np.testing.assert_array_equal(union.codes, merged.codes)
    np.testing.assert_array_equal(union.counts, merged.counts)


def test_run_mode_ingest_skips_per_image_centroids(photo_dir, tmp_path):
    """Ingest for a shared palette writes no initial centroids and does not load scikit-learn (its
    k-means++ costs about 1.3 s to import); k-means++ then runs once, on the union."""
    script = (
        "import json, sys\n"
        "from kmeans_ops import params as P\n"
        "from kmeans_ops.ingest import ingest\n"
        "from kmeans_ops.workarea import WorkArea\n"
        f"meta = ingest({str(photo_dir / 'china.jpg')!r}, 'china', WorkArea({str(tmp_path)!r}), "
        "P.validate(k=8, palette='run'))\n"
        "print(json.dumps({'k': meta['k'], 'palette': meta['palette'], 'sklearn': 'sklearn' in sys.modules}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(done.stdout) == {"k": None, "palette": "run", "sklearn": False}
    area = WorkArea(str(tmp_path))
    assert os.path.exists(area.points("china")) and not os.path.exists(area.clusters("china", 0))


def write_palette_file(path, k: int) -> np.ndarray:
    """A fixed palette of ``k`` colours (B, G, R), not centroids of any image here."""
    centroids = np.random.default_rng(7).uniform(0, 255, size=(k, 3))
    write_clusters(str(path), centroids)
    return centroids


def test_fixed_palette_file_is_applied_with_no_iterations(photo_dir, tmp_path):
    fixed = write_palette_file(tmp_path / "last-month.txt", 6)
    paths = [photo_dir / "china.jpg", photo_dir / "rocket.png"]
    status, err = run_cli("quantize", *paths, "--palette", tmp_path / "last-month.txt", "--out", tmp_path / "out")
    assert status == 0, err
    assert "0 iterations (fixed palette)" in err and "iteration 1/" not in err
    for p in paths:
        result = json.load(open(tmp_path / "out" / f"{p.stem}.json"))
        assert result["k"] == 6 and result["iterations"] == 0 and result["history"] == []
        assert result["palette"] == {"mode": "file", "unit": palette.FIXED_UNIT, "images": 2,
                                     "file": str(tmp_path / "last-month.txt")}
        np.testing.assert_array_equal(bgr(result["centroids_rgb"]), fixed)  # the file's colours, unmoved
        check_own_figures(result, p, tmp_path / "out" / f"{p.stem}.png")
    # a fixed palette runs no MapReduce job, on any engine
    from kmeans_ops.engines.hadoop import HadoopEngine

    params = P.validate(k=None, palette=str(tmp_path / "last-month.txt"))
    engine = HadoopEngine(framework="local")
    assert run_palette(WorkArea(str(tmp_path / "none")), palette.FIXED_UNIT, engine, params) == palette.FIXED_STATE
    assert engine.jobs == 0


def test_palette_file_k_mismatch_and_bad_files_are_refused(photo_dir, tmp_path):
    write_palette_file(tmp_path / "p8.txt", 8)
    status, err = run_cli("quantize", photo_dir / "coffee.png", "-k", 5, "--palette", tmp_path / "p8.txt",
                          "--out", tmp_path / "out")
    assert status == 2
    assert err.startswith("error: palette and k disagree:") and "p8.txt holds 8 centroids but k is 5" in err
    assert not os.path.exists(tmp_path / "out")  # refused before anything is done
    # k not given: the palette file's K; an init file that disagrees names both
    write_palette_file(tmp_path / "init5.txt", 5)
    assert P.validate(k=None, palette=str(tmp_path / "p8.txt")).k == 8
    with pytest.raises(P.ParamError, match=r"^init and palette disagree: .*init5.txt holds 5 centroids but the "
                                           r"palette file holds 8"):
        P.validate(k=None, palette=str(tmp_path / "p8.txt"), init=str(tmp_path / "init5.txt"))
    # a file that is no clusters file: named with its line, never quoted
    (tmp_path / "secret.txt").write_text("1 2 3 4\npassword=hunter2\n")
    status, err = run_cli("quantize", photo_dir / "coffee.png", "--palette", tmp_path / "secret.txt",
                          "--out", tmp_path / "out")
    assert status == 2 and err.startswith("error: palette: not a usable clusters file") and "line 2" in err
    assert "hunter2" not in err
    for bad in ("", "nowhere.txt", 3, None):
        with pytest.raises(P.ParamError, match="^palette must be 'image', 'run' or a readable clusters file"):
            P.validate(palette=bad)


# ------------------------------------------------------------------------------ the dev Hadoop cluster
@pytest.fixture(scope="module")
def small_photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("palette-photos")
    for name in ("coffee", "rocket", "chelsea"):
        cv2.imwrite(str(folder / f"{name}.png"), photo_bgr(name)[::2, ::2])
    return [folder / f"{name}.png" for name in ("coffee", "rocket", "chelsea")]


def hdfs_listing(area: WorkArea) -> list[str]:
    from kmeans_ops.hdfs import Hdfs

    return sorted(Hdfs().list(posixpath.join(area.root, "images")))


@pytest.mark.parametrize("init,seed", [("kmeans++", 0), ("random", 0)])
def test_run_palette_on_yarn_one_job_per_iteration(hadoop, small_photos, tmp_path, init, seed):  # noqa: F811
    """The run's palette on YARN: one job per iteration for all three images, the same centroids as
    the embedded engine to the bit, and scikit-learn's on the union of their pixels (the random
    start re-seeds an empty cluster in the first iteration)."""
    from kmeans_ops.engines.hadoop import HadoopEngine
    from kmeans_ops.storage import read_json

    iterations = 2
    params = P.validate(k=6, init=init, seed=seed, max_iter=iterations, delta=0, palette="run")
    local = WorkArea(str(tmp_path / "work"))
    ids = [p.stem for p in small_photos]
    for path in small_photos:
        ingest(str(path), path.stem, local, params)
    unit = palette.merge_run(local, ids, params)
    engine = HadoopEngine(framework="yarn")
    area = engine.stage(palette.unit_area(local, unit), f"test-palette-{init.replace('+', 'p')}")
    try:
        assert hdfs_listing(area) == [unit]  # the unit alone is uploaded, not the images' folders
        state = run_palette(area, unit, engine, params)
        assert state == {"iterations": iterations, "converged": False}
        assert engine.jobs == iterations  # one job per iteration for the whole run
        engine.fetch(area, unit, local.root)
    finally:
        engine.discard(area)
    yarn = read_clusters(local.clusters(unit, iterations))  # back beside the images
    start = read_clusters(local.clusters(unit, 0))
    assert run_palette(local, unit, EmbeddedEngine(), params)["iterations"] == iterations
    np.testing.assert_array_equal(yarn, read_clusters(local.clusters(unit, iterations)))
    assert bool(read_json(local.stats(unit, 1))["reseeded"]) == (init == "random")
    np.testing.assert_allclose(yarn, sklearn_lloyd(union_pixels(small_photos), start, iterations), rtol=RTOL, atol=ATOL)


def test_cli_run_palette_hadoop_equals_embedded(hadoop, small_photos, tmp_path, monkeypatch):  # noqa: F811
    """The CLI with --palette run: Hadoop Streaming (LocalJobRunner against the real HDFS) writes the
    same JSON figures and the same pixels as the embedded engine."""
    monkeypatch.setenv("KMEANS_HADOOP_FRAMEWORK", "local")
    common = ["-k", 5, "--palette", "run", "--seed", 4, "--max-iter", 2, "--delta", 0, "-q"]
    status, err = run_cli("quantize", *small_photos, "--engine", "hadoop", "--out", tmp_path / "h", *common)
    assert status == 0, err
    status, err = run_cli("quantize", *small_photos, "--engine", "local", "--out", tmp_path / "l", *common)
    assert status == 0, err
    for path in small_photos:
        h = json.load(open(tmp_path / "h" / f"{path.stem}.json"))
        l = json.load(open(tmp_path / "l" / f"{path.stem}.json"))
        assert h["engine"] == "hadoop" and l["engine"] == "local"
        for key in ("centroids_rgb", "history", "mse", "cluster_pixels", "palette"):
            assert h[key] == l[key]
        assert np.array_equal(cv2.imread(str(tmp_path / "h" / f"{path.stem}.png")),
                              cv2.imread(str(tmp_path / "l" / f"{path.stem}.png")))
