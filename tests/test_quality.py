"""k auto with a quality target, pinned colours (--keep) and --skip-if-larger (issue 16).

The search is checked against a full sweep of fixed-K runs on small photos; pinned colours against
the output palettes and the written PNGs; with no pinned colours the kernel is unchanged (its
equality with scikit-learn's lloyd is tests/test_against_sklearn.py's).
"""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from conftest import photo_bgr, run_cli
from kmeans_ops import params as P
from kmeans_ops import search


@pytest.fixture(scope="module")
def small_photos(tmp_path_factory):
    """Three photos at an eighth of their size (a few thousand colours: a sweep of K is quick)."""
    folder = tmp_path_factory.mktemp("small")
    for name in ("coffee", "rocket", "chelsea"):
        bgr = photo_bgr(name)
        small = cv2.resize(bgr, (bgr.shape[1] // 8, bgr.shape[0] // 8), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"{name}.png"), small)
    return folder


def _figures(folder, stem):
    with open(os.path.join(folder, f"{stem}.json"), encoding="utf-8") as handle:
        return json.load(handle)


# ------------------------------------------------------------------------------------ the search
def _walk(final_curve, probe_curve, lowest, highest, target):
    """Run next_steps against given curves: {K: (PSNR, final)} as the search would see it."""
    tried, steps, candidates = {}, [], []
    while todo := search.next_steps(tried, lowest, highest, target, search.gain(candidates)):
        for k, step in todo:
            assert (step == "probe") == (k not in tried) and not (k in tried and tried[k][1])
            tried[k] = (probe_curve[k], False) if step == "probe" else (final_curve[k], True)
            if step == "finish":
                candidates.append({"psnr": final_curve[k], "probe_psnr": probe_curve[k], "finished": True})
            steps.append((k, step))
    return tried, steps


@pytest.mark.parametrize("gap", [0.0, 0.3, 2.0])
def test_next_steps_search_on_probes_then_finish_the_neighbours(gap):
    import math

    final = {k: 20 + 3 * math.log2(k) for k in range(2, 257)}  # reaches 33 dB at K=21
    probe = {k: final[k] - gap for k in final}  # probes below the finished candidates
    tried, steps = _walk(final, probe, 2, 256, 33)
    assert [k for k, _ in steps[:3]] == [2, 4, 8]
    assert search.choose(tried, (20, 33)) == 21
    assert tried[21] == (final[21], True) and tried[20] == (final[20], True)  # both finished
    assert len(steps) <= (11 if gap < 1 else 14) and sum(step == "finish" for _, step in steps) <= 3 + (gap > 1)


def test_next_steps_go_on_when_a_finished_candidate_changes_sides():
    final = {k: 10 + k for k in range(2, 257)}  # finals reach 33 at K=23
    probe = {k: final[k] - 4.2 for k in final}  # probes far below: reach 33 at K=28
    tried, steps = _walk(final, probe, 2, 256, 33)
    assert search.choose(tried, (20, 33)) == 23
    assert tried[23][1] and tried[22][1] and tried[22][0] < 33 <= tried[23][0]
    bumpy = {k: v + (1.5 if k == 30 else 0) for k, v in probe.items()}  # a probe above its neighbours
    tried, steps = _walk(final, bumpy, 2, 256, 33)
    assert search.choose(tried, (20, 33)) == 23


def test_next_steps_stop_at_highest_and_choose_takes_the_minimum_or_refuses():
    curve = {k: 20 + k / 10 for k in range(2, 101)}
    tried, steps = _walk(curve, curve, 2, 100, 50)
    assert max(tried) == 100 and steps[-1] == (100, "finish") and tried[100][1]
    assert search.choose(tried, (29, 50)) == 100  # below MAX, above MIN: the most colours
    assert search.choose(tried, (31, 50)) is None
    assert search.choose({2: (None, True)}, (28, 32)) == 2  # an exact output (PSNR infinite) reaches anything


def test_starts_share_kmeans_plusplus_draws_with_the_same_centres():
    from kmeans_ops.colours import colour_table
    from kmeans_ops.initialise import Starts, initial_centroids

    table = colour_table(photo_bgr("chelsea")[::4, ::4].copy())
    for pins in ((), ((0, 0, 255), (255, 255, 255))):
        starts = Starts(table, "kmeans++", 3, pins)
        for k in (2, 4, 8, 16, 32, 24, 20, 21, 60, 40, 55, 9):  # out of order, across numbers of trials
            assert np.array_equal(starts(k), initial_centroids(table, k, "kmeans++", 3, pins)), (pins, k)


def test_auto_chooses_the_fewest_colours_of_a_full_sweep(small_photos, tmp_path):
    status, err = run_cli("quantize", small_photos, "-k", "auto", "--quality", "28-32", "--max-k", "48",
                          "--out", tmp_path / "auto", "-q")
    assert status == 0, err
    for stem in ("coffee", "rocket", "chelsea"):
        chosen = _figures(tmp_path / "auto", stem)
        sweep = {}
        for k in range(2, 49):
            status, err = run_cli("quantize", small_photos / f"{stem}.png", "-k", k, "--out", tmp_path / f"k{k}", "-q")
            assert status == 0, err
            sweep[k] = _figures(tmp_path / f"k{k}", stem)["psnr"]
        k = chosen["k"]
        # the search's rule, exactly: the fixed-K run at the chosen K reaches MAX, at K - 1 it does not
        assert chosen["quality"]["chosen_k"] == k and sweep[k] >= 32 > sweep[k - 1], (stem, sweep)
        assert k == min(j for j, psnr in sweep.items() if psnr >= 32), (stem, sweep)  # PSNR grew with K here
        assert chosen["psnr"] == sweep[k] and chosen["k_requested"] == "auto"
        for candidate in chosen["quality"]["candidates"]:
            if candidate["final"]:  # a finished candidate is exactly the fixed-K run
                assert candidate["psnr"] == sweep[candidate["k"]]
            else:  # a probe: a few iterations of it, below the finished PSNR (but for the palette's rounding)
                assert candidate["iterations"] == search.PROBE_ITERATIONS
                assert candidate["psnr"] < sweep[candidate["k"]] + 0.05
        finished = [c["k"] for c in chosen["quality"]["candidates"] if c["final"]]
        assert k in finished and k - 1 in finished
        assert len(chosen["quality"]["candidates"]) < 47 / 3  # far fewer runs than the sweep
        fixed = cv2.imread(str(tmp_path / f"k{k}" / f"{stem}.png"))
        assert np.array_equal(cv2.imread(str(tmp_path / "auto" / f"{stem}.png")), fixed)


def test_auto_refuses_an_image_below_min_with_one_line_and_goes_on(small_photos, tmp_path):
    flat = tmp_path / "flat.png"  # four colours: exact with 4, so it reaches any target
    cv2.imwrite(str(flat), np.repeat(np.array([[[0, 0, 0], [255, 0, 0], [0, 255, 0], [9, 9, 9]]], np.uint8), 8, axis=0))
    out = tmp_path / "out"
    status, err = run_cli("quantize", small_photos / "coffee.png", flat, "-k", "auto", "--quality", "40-45",
                          "--max-k", "16", "--out", out, "-q")
    assert status == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "coffee.png" in lines[0]
    assert "40 dB" in lines[0] and "45 dB" in lines[0] and "16 colours" in lines[0]
    assert not (out / "coffee.png").exists() and not (out / "coffee.json").exists()
    done = _figures(out, "flat")
    assert done["k"] == 4 and done["psnr"] is None


@pytest.mark.parametrize("argv, words", [
    (["-k", "auto"], ["quality", "28-32"]),
    (["-k", "8", "--quality", "28-32"], ["quality", "auto"]),
    (["-k", "auto", "--quality", "32-28"], ["quality", "MIN <= MAX"]),
    (["-k", "auto", "--quality", "high"], ["quality", "MIN-MAX"]),
    (["-k", "auto", "--quality", "28-32", "--max-k", "1"], ["max_k", "between 2"]),
    (["-k", "auto", "--quality", "28-32", "--palette", "run"], ["auto", "palette"]),
    (["-k", "auto", "--quality", "28-32", "--dither", "floyd-steinberg"], ["auto", "dither"]),
    (["-k", "2", "--keep", "#ff0000,#00ff00"], ["keep", "k"]),
    (["-k", "4", "--keep", "#ff000"], ["keep", "#ff000"]),
    (["-k", "4", "--keep", "#ff0000,#FF0000"], ["keep", "twice"]),
])
def test_bad_quality_and_keep_params_are_refused_naming_them(small_photos, tmp_path, argv, words):
    status, err = run_cli("quantize", small_photos / "coffee.png", *argv, "--out", tmp_path / "out")
    assert status == 2, err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1
    for word in words:
        assert word in err
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_keep_file_is_checked_and_never_quoted(tmp_path):
    secret = tmp_path / "keep.txt"
    secret.write_text("1 10 20 30\n2 0.5 SECRET 3\n")
    with pytest.raises(P.ParamError) as err:
        P.validate(k=4, keep=str(secret))
    assert "keep" in str(err.value) and "SECRET" not in str(err.value)
    secret.write_text("1 10 20 30\n2 0.5 1 3\n")
    with pytest.raises(P.ParamError, match="whole values"):
        P.validate(k=4, keep=str(secret))
    with pytest.raises(P.ParamError, match="keep"):
        P.validate(k=4, keep=str(tmp_path / "missing.txt"))
    secret.write_text("1 30 20 10\n2 255 255 255\n")
    assert P.validate(k=4, keep=str(secret)).keep == ((30, 20, 10), (255, 255, 255))


# ------------------------------------------------------------------------------- pinned colours
PINS = ["#ff0000", "#000000", "#00ff7f"]


def _rgb(hex_colour):
    return [int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)]


@pytest.mark.parametrize("extra", [["-k", "8"], ["-k", "8", "--palette", "run"],
                                   ["-k", "auto", "--quality", "26-30", "--max-k", "32"]])
def test_pinned_colours_are_exactly_in_every_output(small_photos, tmp_path, extra):
    out = tmp_path / "out"
    status, err = run_cli("quantize", small_photos, *extra, "--keep", ",".join(PINS), "--out", out, "-q")
    assert status == 0, err
    for stem in ("coffee", "rocket", "chelsea"):
        figures = _figures(out, stem)
        assert figures["palette_rgb"][:3] == [_rgb(c) for c in PINS]
        assert figures["centroids_rgb"][:3] == [_rgb(c) for c in PINS]  # never moved
        assert figures["initial_centroids_rgb"][:3] == [_rgb(c) for c in PINS]
        from PIL import Image

        with Image.open(out / f"{stem}.png") as png:  # the written file's palette holds them
            palette = np.array(png.getpalette()[: 3 * figures["k"]]).reshape(-1, 3).tolist()
        assert all(_rgb(c) in palette for c in PINS)
        if extra[1] != "auto":
            assert figures["k"] == 8


def test_pinned_colours_get_the_pixels_nearest_to_them(tmp_path):
    bgr = photo_bgr("rocket")[::8, ::8].copy()
    bgr[:4, :4] = (0, 0, 255)  # a red patch: its pixels go to the pinned red, which stays red
    cv2.imwrite(str(tmp_path / "r.png"), bgr)
    status, err = run_cli("quantize", tmp_path / "r.png", "-k", "6", "--keep", "#ff0000", "--labels",
                          "--out", tmp_path / "out", "-q")
    assert status == 0, err
    labels = cv2.imread(str(tmp_path / "out" / "r-labels.png"), cv2.IMREAD_UNCHANGED)
    assert (labels[:4, :4] == 0).all()
    assert _figures(tmp_path / "out", "r")["cluster_pixels"][0] >= 16


def test_reduce_never_moves_pinned_centroids_nor_reseeds_them():
    from kmeans_ops.mapreduce import map_colours, reduce_image

    from kmeans_ops.colours import bgr_to_codes

    colours = np.array([[10, 10, 10], [12, 12, 12], [200, 200, 200], [90, 90, 90]], float)
    weights, codes = np.array([3, 1, 2, 1]), bgr_to_codes(colours.astype(np.uint32))
    # cluster 0 (pinned black) gets no colour, 1 (pinned white) gets 200, 2 gets 10 and 12, 3 gets 90
    centroids = np.array([[0, 0, 0], [255, 255, 255], [11, 11, 11], [100, 100, 100]], float)
    part = map_colours(colours, weights, codes, centroids, colours.mean(axis=0))
    free = reduce_image(part, centroids, 0.5)
    pinned = reduce_image(part, centroids, 0.5, pinned=2)
    assert 0 in free.reseeded and not np.array_equal(free.centroids[1], centroids[1])  # unpinned, they move
    assert np.array_equal(pinned.centroids[:2], centroids[:2]) and (pinned.shift[:2] == 0).all()
    assert pinned.reseeded == [] and pinned.centroids[2].tolist() == [10.5] * 3 and pinned.centroids[3].tolist() == [90] * 3


def test_no_pinned_colours_leave_the_initial_centroids_unchanged():
    from kmeans_ops.colours import colour_table
    from kmeans_ops.initialise import initial_centroids

    table = colour_table(photo_bgr("chelsea")[::4, ::4].copy())
    assert np.array_equal(initial_centroids(table, 12, "kmeans++", 3),
                          initial_centroids(table, 12, "kmeans++", 3, pinned=()))


def test_streaming_reduce_keeps_pinned_centroids(tmp_path):
    """The Hadoop engine's reducer gets the pinned count from the centroids file's M line."""
    import io

    from kmeans_ops import mapreduce
    from kmeans_ops.streaming import format_centroids, run_reduce

    colours = np.array([[10, 10, 10], [200, 200, 200]], float)
    centroids = np.array([[0, 0, 0], [190, 190, 190]], float)
    part = mapreduce.map_colours(colours, np.array([1, 1]), np.arange(2), centroids, colours.mean(axis=0))
    path = tmp_path / "centroids.tsv"
    for pins, moved in ((0, True), (1, False)):
        path.write_text(format_centroids({"a": centroids}, {"a": colours.mean(axis=0).tolist()}, {"a": pins}))
        out = io.StringIO()
        run_reduce(str(path), 0.0, io.StringIO(mapreduce.encode("a", part)), out)
        first = [line for line in out.getvalue().splitlines() if "\tC 0 " in line][0]
        assert (first.split()[3:] != ["0.0", "0.0", "0.0"]) == moved


# ----------------------------------------------------------------------------- skip if larger
def test_skip_if_larger_writes_no_output_bigger_than_its_input(tmp_path):
    jpeg = tmp_path / "coffee.jpg"
    cv2.imwrite(str(jpeg), photo_bgr("coffee")[::2, ::2].copy(), [cv2.IMWRITE_JPEG_QUALITY, 60])
    png = tmp_path / "flat.png"  # a bigger PNG than its quantised self
    cv2.imwrite(str(png), np.kron(photo_bgr("rocket")[::16, ::16], np.ones((4, 4, 1), np.uint8)),
                [cv2.IMWRITE_PNG_COMPRESSION, 0])
    plain = tmp_path / "plain"
    assert run_cli("quantize", jpeg, png, "-k", "64", "--out", plain, "-q")[0] == 0
    assert _figures(plain, "coffee")["output_bytes"] > jpeg.stat().st_size  # the case to skip
    out = tmp_path / "out"
    status, err = run_cli("quantize", jpeg, png, "-k", "64", "--skip-if-larger", "--labels", "--out", out)
    assert status == 0, err
    skipped, kept = _figures(out, "coffee"), _figures(out, "flat")
    assert skipped["skipped"] == "larger" and skipped["output"] is None and skipped["labels"] is None
    assert skipped["output_bytes"] is None and skipped["output_bytes_would_be"] > skipped["source_bytes"]
    assert not (out / "coffee.png").exists() and not (out / "coffee-labels.png").exists()
    assert "skipped" in err and "--skip-if-larger" in err
    assert "skipped" not in kept and kept["output_bytes"] == (out / "flat.png").stat().st_size
    assert kept["source_bytes"] == png.stat().st_size and kept["size_ratio"] < 1
    for figures in (skipped, kept):
        if figures["output"]:
            assert os.path.getsize(figures["output"]) <= figures["source_bytes"]
    # the input's earlier output of a run without the option is removed, not left beside the JSON
    assert run_cli("quantize", jpeg, "-k", "64", "--out", plain, "--skip-if-larger", "-q")[0] == 0
    assert not (plain / "coffee.png").exists() and _figures(plain, "coffee")["skipped"] == "larger"


# ---------------------------------------------------------------------------------- the report
def test_report_shows_chosen_k_its_chart_and_sizes(small_photos, tmp_path):
    from kmeans_ops.report import render_report

    out = tmp_path / "out"
    status, err = run_cli("quantize", small_photos / "coffee.png", "-k", "auto", "--quality", "28-32",
                          "--max-k", "40", "--out", out, "-q")
    assert status == 0, err
    auto = _figures(out, "coffee")
    skipped = {**auto, "source": "/x/big.png", "output": None, "skipped": "larger", "output_bytes": None,
               "output_bytes_would_be": 5000, "source_bytes": 4096, "size_ratio": None, "quality": None,
               "k_requested": 8}
    page = render_report([auto, skipped], [], {"run_id": "r"}, str(out))
    assert f"Quality search: {auto['k']} colours, the fewest of {len(auto['quality']['candidates'])} K tried" in page
    assert "PSNR of each K the search tried" in page and "target 32 dB" in page
    assert page.count("Quality search:") == 1  # the image of a fixed K has no search chart
    for c in auto["quality"]["candidates"]:  # every candidate is a point of the chart, with its tooltip
        assert f"K {c['k']}: {c['psnr']:.2f} dB" in page
    assert f"({auto['size_ratio']:.0%})" in page and "(auto)" in page
    assert "skipped: 4.9 kB &gt; input 4.0 kB" in page


# ------------------------------------------------------------------------------ the DAG (dag.test)
def _published(dag_run, output):
    from kmeans_ops.run import run_key

    return os.path.join(output, run_key(dag_run.run_id))


def test_dag_auto_equals_the_cli_per_image(airflow_db, small_photos, tmp_path):
    """k auto through the DAG: the search step instead of the iterations; each image's chosen K
    (different ones here), centroids, PSNR and quality entry are the CLI's on the same images."""
    from conftest import run_dag

    conf = {"input": [str(small_photos)], "k": "auto", "quality": "28-32", "max_k": 48,
            "output": str(tmp_path / "out")}
    dag_run = run_dag("kmeans_image_clustering", conf)
    assert dag_run.state == "success"
    st = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert st["search"] == "success" and st["iteration_01.mapreduce"] == "skipped"
    status, err = run_cli("quantize", small_photos, "-k", "auto", "--quality", "28-32", "--max-k", "48",
                          "--out", tmp_path / "cli", "-q")
    assert status == 0, err
    folder, chosen = _published(dag_run, conf["output"]), set()
    for stem in ("coffee", "rocket", "chelsea"):
        dag_json, cli_json = _figures(folder, stem), _figures(tmp_path / "cli", stem)
        for key in ("k", "k_requested", "iterations", "converged", "centroids_rgb", "psnr", "quality"):
            assert dag_json[key] == cli_json[key], (stem, key)
        assert np.array_equal(cv2.imread(os.path.join(folder, f"{stem}.png")), cv2.imread(str(tmp_path / "cli" / f"{stem}.png")))
        chosen.add(dag_json["k"])
    assert len(chosen) > 1  # the search chose different K for different images
    assert "Quality search" in open(os.path.join(folder, "report.html"), encoding="utf-8").read()


def test_dag_auto_refuses_an_image_below_min_and_publishes_the_others(airflow_db, small_photos, tmp_path):
    from conftest import run_dag

    conf = {"input": [str(small_photos / "coffee.png"), str(small_photos / "rocket.png")], "k": "auto",
            "quality": "28-32", "max_k": 8, "output": str(tmp_path / "out")}
    dag_run = run_dag("kmeans_image_clustering", conf)
    assert dag_run.state == "success"
    folder = _published(dag_run, conf["output"])
    assert sorted(n for n in os.listdir(folder) if n.endswith(".json")) == ["rocket.json", "summary.json"]
    assert _figures(folder, "rocket")["k"] == 8
    failures = json.load(open(os.path.join(folder, "summary.json")))["failures"]
    assert [f["stage"] for f in failures] == ["search"] and failures[0]["source"].endswith("coffee.png")
    line = failures[0]["error"]
    assert "\n" not in line and "28 dB" in line and "32 dB" in line and "8 colours" in line


@pytest.mark.parametrize("conf, words", [({"k": "auto"}, ["quality", "28-32"]),
                                         ({"k": 8, "quality": "28-32"}, ["quality", "auto"]),
                                         ({"k": "auto", "quality": "28-32", "palette": "run"}, ["auto", "palette"])])
def test_dag_refuses_bad_auto_params_at_prepare_naming_them(airflow_db, small_photos, tmp_path, conf, words):
    from kmeans_ops.params import ParamError
    from kmeans_ops.run import plan

    full = {"input": [str(small_photos)], "output": str(tmp_path / "out"), "init": "kmeans++", "seed": 0,
            "max_iterations": 30, "delta": 0.5, "engine": "local", "batch_size": 8, **conf}
    with pytest.raises(ParamError) as err:
        plan(full, "manual__x", "kmeans_image_clustering")
    assert all(word in str(err.value) for word in words)


def test_auto_ingests_and_reconstructs_hdfs_images_in_the_task():
    """With k auto the search reads every image from the local work area: no cluster stage."""
    from kmeans_ops import placement

    class Hadoopish:
        remote_stages = ("ingest", "reconstruct")

    fixed, auto = P.validate(k=8).to_json(), P.validate(k="auto", quality="28-32").to_json()
    image = {"path": "hdfs://nn:8020/in/a.png"}
    assert placement.ingested_on_cluster(Hadoopish(), fixed, image)
    assert not placement.ingested_on_cluster(Hadoopish(), auto, image)
    assert not placement.reconstructed_on_cluster(Hadoopish(), {"params": auto, "output": "hdfs://nn:8020/out",
                                                                "on_cluster": []})
