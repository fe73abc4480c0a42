"""Label maps (``--labels``) and dithering (``--dither floyd-steinberg``), on real photos.

- A label map is one channel (8-bit for K <= 256, else 16-bit) and ``palette_rgb[label]`` is the
  output image's colour, pixel for pixel: opaque, RGBA, 16-bit, K > 256, dithered or not.
- Dithered output has at most K colours (the same palette) and, locally averaged, is closer to the
  original than the undithered output; its MSE, PSNR and cluster sizes are those of the written file.
- Bad combinations are refused (exit 2, one line naming the parameters); the CLI's "never replace
  an input, never overwrite a foreign file" rules cover the label maps.
- ``finish(palette_unit=...)`` and ``reconstruct_batch(options=...)`` on a real work area.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil

import cv2
import numpy as np
import pytest

from conftest import photo_bgr, run_cli
from test_cli_safety import PAGE, fill, tmpfs  # noqa: F401 - tmpfs: a fixture (a real 1 MiB tmpfs)
from kmeans_ops import params as P
from kmeans_ops.colours import colour_table, pixel_codes
from kmeans_ops.reconstruct import dithered_labels, finish, label_table, palette_of, quality, reconstruct_batch
from kmeans_ops.workarea import WorkArea


# ------------------------------------------------------------------------------------ helpers
def read(path) -> np.ndarray:
    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert pixels is not None, path
    return pixels


def figures(out, stem: str) -> dict:
    with open(os.path.join(out, f"{stem}.json"), encoding="utf-8") as handle:
        return json.load(handle)


def palette_bgr(result: dict) -> np.ndarray:
    return np.array(result["palette_rgb"], np.uint8)[:, ::-1]


def quantize(src, out, *options, k=16) -> dict:
    """Run the CLI on one image; return its JSON figures."""
    status, err = run_cli("quantize", src, "-k", k, "--out", out, "-q", *options)
    assert status == 0, err
    return figures(out, os.path.splitext(os.path.basename(str(src)))[0])


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def rgba_photo(tmp_path_factory):
    """coffee as an RGBA PNG whose alpha is a real gradient: 0 (left) to 255 (right), darker at the top."""
    bgr = photo_bgr("coffee")
    h, w = bgr.shape[:2]
    alpha = np.outer(np.linspace(0.4, 1.0, h), np.linspace(0, 255, w)).round().astype(np.uint8)
    path = tmp_path_factory.mktemp("rgba") / "coffee-rgba.png"
    cv2.imwrite(str(path), np.dstack([bgr, alpha]))
    return path


@pytest.fixture(scope="module")
def photo16(tmp_path_factory):
    """chelsea as a 16-bit RGBA PNG with true 16-bit values (a smoothed float copy of the photo,
    x257) and a 16-bit alpha gradient."""
    smooth = cv2.GaussianBlur(photo_bgr("chelsea").astype(np.float64), (0, 0), 1.0)
    bgr16 = np.clip(np.rint(smooth * 257), 0, 65535).astype(np.uint16)
    h, w = bgr16.shape[:2]
    alpha = np.linspace(65535, 1000, h).round().astype(np.uint16)[:, None].repeat(w, axis=1)
    path = tmp_path_factory.mktemp("deep") / "chelsea16.png"
    cv2.imwrite(str(path), np.dstack([bgr16, alpha]))
    assert len(np.unique(bgr16 % 257)) > 100  # really 16-bit, not 8-bit values x257
    return path


def blurred_error(output: np.ndarray, original: np.ndarray) -> float:
    """Mean absolute difference of the two images after a Gaussian blur of sigma 1.5: how far the
    output's locally averaged colour is from the original's."""
    blur = lambda a: cv2.GaussianBlur(a.astype(np.float32), (0, 0), 1.5)  # noqa: E731
    return float(np.abs(blur(output) - blur(original)).mean())


def assert_figures_of_the_file(result: dict, output8: np.ndarray, original8: np.ndarray) -> None:
    """squared_error, mse and psnr of the JSON against a direct computation on the written pixels."""
    diff = output8.astype(np.int64) - original8.astype(np.int64)
    squared_error = int((diff * diff).sum())
    assert result["squared_error"] == squared_error
    mse = squared_error / diff.size
    assert result["mse"] == pytest.approx(mse, rel=1e-12)
    assert result["psnr"] == pytest.approx(10 * math.log10(255**2 / mse), rel=1e-12)


# ------------------------------------------------------------------------------------ label maps
@pytest.mark.parametrize("dither", ["none", "floyd-steinberg"])
def test_the_label_map_of_an_opaque_photo_reproduces_the_output(photo_dir, tmp_path, dither):
    result = quantize(photo_dir / "china.jpg", tmp_path, "--labels", "--dither", dither)
    labels = read(tmp_path / "china-labels.png")
    output = read(tmp_path / "china.png")
    original = cv2.imread(str(photo_dir / "china.jpg"))
    assert labels.dtype == np.uint8 and labels.shape == original.shape[:2]  # one channel
    assert result["labels"] == str(tmp_path / "china-labels.png") and result["dither"] == dither
    assert np.array_equal(palette_bgr(result)[labels], output)
    assert result["cluster_pixels"] == np.bincount(labels.ravel(), minlength=result["k"]).tolist()
    assert_figures_of_the_file(result, output, original)


@pytest.mark.parametrize("dither", ["none", "floyd-steinberg"])
def test_the_label_map_of_an_rgba_photo_reproduces_the_output_and_alpha_is_untouched(rgba_photo, tmp_path, dither):
    result = quantize(rgba_photo, tmp_path, "--labels", "--dither", dither, k=12)
    source = read(rgba_photo)
    labels = read(tmp_path / "coffee-rgba-labels.png")
    output = read(tmp_path / "coffee-rgba.png")
    assert labels.ndim == 2 and labels.dtype == np.uint8  # alpha is not part of it
    assert output.shape == source.shape and np.array_equal(output[..., 3], source[..., 3])
    assert np.array_equal(palette_bgr(result)[labels], output[..., :3])
    assert_figures_of_the_file(result, output[..., :3], source[..., :3])


def test_more_than_256_clusters_give_a_16_bit_label_map(photo_dir, tmp_path):
    result = quantize(photo_dir / "astronaut.png", tmp_path, "--labels", "--max-iter", 2, k=300)
    labels = read(tmp_path / "astronaut-labels.png")
    output = read(tmp_path / "astronaut.png")
    assert result["k"] == 300
    assert labels.dtype == np.uint16 and labels.ndim == 2 and labels.max() >= 256
    assert np.array_equal(palette_bgr(result)[labels], output)
    assert result["cluster_pixels"] == np.bincount(labels.ravel(), minlength=300).tolist()


def test_without_labels_no_label_map_is_written(photo_dir, tmp_path):
    result = quantize(photo_dir / "china.jpg", tmp_path)
    assert result["labels"] is None and result["dither"] == "none"
    assert sorted(os.listdir(tmp_path)) == ["china.json", "china.png"]


# ------------------------------------------------------------------------------------ dithering
@pytest.mark.parametrize("name", ["china", "astronaut", "coffee", "rocket"])
def test_dithering_keeps_the_palette_and_is_closer_to_the_original_locally(photo_dir, tmp_path, name):
    src = next(photo_dir.glob(f"{name}.*"))
    plain = quantize(src, tmp_path / "plain", k=8)
    dithered = quantize(src, tmp_path / "dithered", "--dither", "floyd-steinberg", k=8)
    assert dithered["palette_rgb"] == plain["palette_rgb"]  # same centroids, same palette
    original = cv2.imread(str(src))
    plain_out, dithered_out = read(tmp_path / "plain" / f"{name}.png"), read(tmp_path / "dithered" / f"{name}.png")
    colours = np.unique(dithered_out.reshape(-1, 3), axis=0)
    assert len(colours) <= 8
    assert {tuple(c) for c in colours} <= {tuple(c) for c in palette_bgr(dithered)}
    assert not np.array_equal(dithered_out, plain_out)
    assert blurred_error(dithered_out, original) < 0.95 * blurred_error(plain_out, original)
    # MSE and PSNR are those of what was written: dithering raises the pixel-wise error
    assert_figures_of_the_file(dithered, dithered_out, original)
    assert_figures_of_the_file(plain, plain_out, original)
    assert dithered["mse"] > plain["mse"]


def test_a_16_bit_photo_is_dithered_in_8_bits_and_written_back_in_16(photo16, tmp_path):
    result = quantize(photo16, tmp_path, "--labels", "--dither", "floyd-steinberg", k=6)
    source = read(photo16)
    output = read(tmp_path / "chelsea16.png")
    labels = read(tmp_path / "chelsea16-labels.png")
    assert output.dtype == np.uint16 and output.shape == source.shape
    assert np.array_equal(output[..., 3], source[..., 3])  # 16-bit alpha untouched
    assert not (output[..., :3] % 257).any()  # v8 * 257
    output8 = (output[..., :3] // 257).astype(np.uint8)
    assert np.array_equal(palette_bgr(result)[labels], output8)
    assert len(np.unique(output8.reshape(-1, 3), axis=0)) <= 6
    original8 = ((source[..., :3].astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)  # round(v * 255 / 65535)
    assert_figures_of_the_file(result, output8, original8)
    assert result["cluster_pixels"] == np.bincount(labels.ravel(), minlength=6).tolist()


def test_an_image_of_fewer_colours_than_k_is_written_exactly_when_dithered(tmp_path):
    """A posterised photo (6 colours) with K=8: every colour is a palette colour, there is no error to
    diffuse, and the output equals the input (Pillow's cached lookup alone would move a quarter of
    such pixels to a neighbouring palette colour)."""
    bgr = photo_bgr("chelsea")
    table = colour_table(bgr)
    rng = np.random.default_rng(5)
    palette = palette_of(table.bgr()[rng.choice(len(table), 6, replace=False)])
    nearest = label_table(table, palette.astype(np.float64))  # of each distinct colour
    image = palette[nearest[np.searchsorted(table.codes, pixel_codes(bgr))]].reshape(bgr.shape)
    src = tmp_path / "poster.png"
    cv2.imwrite(str(src), image)
    result = quantize(src, tmp_path / "out", "--labels", "--dither", "floyd-steinberg", k=8)
    assert result["k"] == len(np.unique(image.reshape(-1, 3), axis=0)) <= 6 and result["k_requested"] == 8
    assert np.array_equal(read(tmp_path / "out" / "poster.png"), image)
    assert result["mse"] == 0 and result["psnr"] is None
    assert np.array_equal(palette_bgr(result)[read(tmp_path / "out" / "poster-labels.png")], image)


# ------------------------------------------------------------------------- bad combinations
@pytest.mark.parametrize("argv, named", [
    (["-k", 300, "--dither", "floyd-steinberg"], ("dither", "k")),
    (["-k", 8, "--dither", "bayer"], ("dither",)),
    (["-k", 8, "--dither", ""], ("dither",)),
])
def test_bad_dither_options_are_refused_in_one_line(photo_dir, tmp_path, argv, named):
    out = tmp_path / "out"
    status, err = run_cli("quantize", photo_dir / "china.jpg", *argv, "--labels", "--out", out)
    lines = error_lines(err)
    assert status == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: ") and all(name in lines[0] for name in named), lines
    assert not out.exists() or not os.listdir(out)


def test_an_init_file_of_more_than_256_centroids_with_dithering_is_refused(photo_dir, tmp_path):
    init = tmp_path / "many.txt"
    bgr = colour_table(photo_bgr("china")).bgr()[:300]
    init.write_text("".join(f"{i + 1} {b:.1f} {g:.1f} {r:.1f}\n" for i, (b, g, r) in enumerate(bgr)))
    status, err = run_cli("quantize", photo_dir / "china.jpg", "--init", init, "--dither", "floyd-steinberg",
                          "--out", tmp_path / "out")
    assert status == 2 and len(error_lines(err)) == 1 and "dither" in err and "k is 300" in err, err


def test_validate_names_the_parameter():
    assert P.validate(labels=True, dither="floyd-steinberg").dither == "floyd-steinberg"
    assert P.validate(k=4096, dither="none").k == 4096
    assert P.validate(k=256, dither="floyd-steinberg").k == 256
    for kwargs, name in [({"labels": "yes"}, "labels"), ({"labels": 1}, "labels"), ({"dither": None}, "dither"),
                         ({"dither": "Floyd"}, "dither"), ({"k": 257, "dither": "floyd-steinberg"}, "dither and k")]:
        with pytest.raises(P.ParamError, match=f"^{name}"):
            P.validate(**kwargs)


# ------------------------------------------------------------------- the CLI's naming rules
def test_a_foreign_label_map_name_is_kept_and_the_result_takes_the_next_name(photo_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    foreign = out / "china-labels.png"
    cv2.imwrite(str(foreign), photo_bgr("rocket"))
    before = sha(foreign)
    quantize(photo_dir / "china.jpg", out, k=4)  # without --labels the name does not matter
    assert sorted(os.listdir(out)) == ["china-labels.png", "china.json", "china.png"]
    status, err = run_cli("quantize", photo_dir / "china.jpg", "-k", 4, "--labels", "--out", out, "-q")
    assert status == 0, err
    assert sha(foreign) == before  # its earlier JSON does not name it: not this input's label map
    assert figures(out, "china-2")["labels"] == str(out / "china-2-labels.png")
    listing = sorted(os.listdir(out))
    status, err = run_cli("quantize", photo_dir / "china.jpg", "-k", 4, "--labels", "--out", out, "-q")
    assert status == 0, err
    assert sorted(os.listdir(out)) == listing and sha(foreign) == before  # a re-run replaces its own files


def test_an_own_label_map_is_replaced_by_a_rerun(photo_dir, tmp_path):
    quantize(photo_dir / "coffee.png", tmp_path, "--labels", k=4)
    first = sha(tmp_path / "coffee-labels.png")
    quantize(photo_dir / "coffee.png", tmp_path, "--labels", "--dither", "floyd-steinberg", k=4)
    assert sorted(os.listdir(tmp_path)) == ["coffee-labels.png", "coffee.json", "coffee.png"]
    assert sha(tmp_path / "coffee-labels.png") != first  # the dithered labels replaced the first ones


def test_an_input_named_like_a_label_map_gets_its_own_names(photo_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copyfile(photo_dir / "coffee.png", folder / "a.png")
    shutil.copyfile(photo_dir / "rocket.png", folder / "a-labels.png")
    out = tmp_path / "out"
    status, err = run_cli("quantize", folder / "a.png", folder / "a-labels.png", "-k", 4, "--labels",
                          "--out", out, "-q")
    assert status == 0, err
    assert sorted(os.listdir(out)) == ["a-labels-2-labels.png", "a-labels-2.json", "a-labels-2.png",
                                       "a-labels.png", "a.json", "a.png"]
    a, other = figures(out, "a"), figures(out, "a-labels-2")
    assert a["labels"] == str(out / "a-labels.png") and other["source"] == str(folder / "a-labels.png")
    assert np.array_equal(palette_bgr(a)[read(out / "a-labels.png")], read(out / "a.png"))
    assert read(out / "a-labels-2.png").shape == photo_bgr("rocket").shape


def test_a_label_map_that_would_replace_an_input_is_refused(photo_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("coffee.png", "rocket.png"):
        shutil.copyfile(photo_dir / name, folder / name)
    out = tmp_path / "out"
    out.mkdir()
    os.link(folder / "coffee.png", out / "rocket-labels.png")  # the same file as an input
    before = sha(folder / "coffee.png")
    status, err = run_cli("quantize", folder, "-k", 4, "--labels", "--out", out)
    lines = error_lines(err)
    assert status == 2 and len(lines) == 1 and "coffee.png" in lines[0] and "rocket-labels.png" in lines[0], err
    assert sha(folder / "coffee.png") == before and sorted(os.listdir(out)) == ["rocket-labels.png"]
    quantize(folder / "rocket.png", out, k=4)  # without --labels, nothing of that name is written
    assert sha(folder / "coffee.png") == before


def test_no_lone_label_map_is_left_when_the_figures_cannot_be_written(photo_dir, tmp_path, tmpfs):
    """Room for the image and its label map but not for the JSON: both are removed (exit 3)."""
    probe = tmp_path / "probe"
    quantize(photo_dir / "astronaut.png", probe, "--labels", k=4)
    pages = sum(-(-os.path.getsize(probe / name) // PAGE) for name in ("astronaut.png", "astronaut-labels.png"))
    filler = fill(tmpfs, leave_pages=pages)
    status, err = run_cli("quantize", photo_dir / "astronaut.png", "-k", 4, "--labels", "--out", tmpfs, "-q")
    assert status == 3 and "output folder" in err, err
    assert os.listdir(tmpfs) == [os.path.basename(filler)]
    os.truncate(filler, 0)
    quantize(photo_dir / "astronaut.png", tmpfs, "--labels", k=4)
    assert sorted(os.listdir(tmpfs)) == ["astronaut-labels.png", "astronaut.json", "astronaut.png", "filler"]


# ------------------------------------------------------- finish and reconstruct_batch, directly
@pytest.fixture(scope="module")
def kept_work(photo_dir, tmp_path_factory):
    """A kept work area (--work) of china and flower, K=5, and the CLI's JSON of each."""
    root = tmp_path_factory.mktemp("kept")
    status, err = run_cli("quantize", photo_dir / "china.jpg", photo_dir / "flower.jpg", "-k", 5, "--max-iter", 6,
                          "--work", root / "work", "--out", root / "out", "-q")
    assert status == 0, err
    return WorkArea(str(root / "work")), {stem: figures(root / "out", stem) for stem in ("china", "flower")}


def test_a_palette_unit_gives_the_centroids_and_history_and_the_image_its_own_figures(kept_work, tmp_path):
    area, results = kept_work
    flower = results["flower"]
    run = {"iterations": flower["iterations"], "converged": flower["converged"]}
    result = finish(area, "china", run, str(tmp_path / "china.png"), str(tmp_path / "china.json"),
                    palette_unit="flower", labels=True)
    assert result["centroids_rgb"] == flower["centroids_rgb"] and result["history"] == flower["history"]
    assert result["initial_centroids_rgb"] == flower["initial_centroids_rgb"]
    china = read(results["china"]["source"])  # the JPEG as written (photo_bgr re-encoded)
    assert result["width"] == china.shape[1] and result["source"] == results["china"]["source"]
    table = colour_table(china)
    centroids = np.array(flower["centroids_rgb"])[:, ::-1]
    labels = label_table(table, centroids)
    expected = quality(table, labels, palette_of(centroids))
    assert result["mse"] == pytest.approx(expected["mse"], rel=1e-12)
    assert result["cluster_pixels"] == np.bincount(labels, table.counts, minlength=5).tolist()
    assert np.array_equal(palette_bgr(result)[read(tmp_path / "china-labels.png")], read(tmp_path / "china.png"))


def test_a_palette_unit_with_no_iterations_applies_its_initial_centroids(kept_work, tmp_path):
    area, results = kept_work
    result = finish(area, "china", {"iterations": 0, "converged": True}, str(tmp_path / "china.png"),
                    str(tmp_path / "china.json"), palette_unit="flower", dither="floyd-steinberg")
    assert result["centroids_rgb"] == results["flower"]["initial_centroids_rgb"] and result["history"] == []
    output = read(tmp_path / "china.png")
    assert {tuple(c) for c in np.unique(output.reshape(-1, 3), axis=0)} <= {tuple(c) for c in palette_bgr(result)}
    assert_figures_of_the_file(result, output, read(results["china"]["source"]))


def test_reconstruct_batch_passes_the_options_to_every_image(kept_work, tmp_path):
    area, results = kept_work
    staging, final = tmp_path / ".staging-run", tmp_path / "run"
    images = [{"image_id": stem, "stem": stem, "iterations": r["iterations"], "converged": r["converged"]}
              for stem, r in results.items()]
    done = reconstruct_batch(images, lambda image_id: area, str(staging), str(final), {"engine": "local"},
                             logging.getLogger("test"), options={"labels": True, "dither": "floyd-steinberg"})
    assert [r["ok"] for r in done] == [True, True]
    assert sorted(os.listdir(staging)) == ["china-labels.png", "china.json", "china.png",
                                           "flower-labels.png", "flower.json", "flower.png"]
    for stem, before in results.items():
        result = figures(staging, stem)
        assert result["labels"] == str(final / f"{stem}-labels.png") and result["dither"] == "floyd-steinberg"
        assert result["centroids_rgb"] == before["centroids_rgb"]
        assert np.array_equal(palette_bgr(result)[read(staging / f"{stem}-labels.png")], read(staging / f"{stem}.png"))
