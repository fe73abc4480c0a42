"""Bad and unusual inputs through the CLI: a clear one-line error naming the file, the other images
still done, a non-zero exit, nothing half-written, inputs untouched."""

import hashlib
import json
import os
import struct
import zlib

import cv2
import numpy as np
import pytest

from conftest import photo_bgr, run_cli


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture()
def good(tmp_path):
    path = tmp_path / "in" / "good.png"
    path.parent.mkdir()
    cv2.imwrite(str(path), photo_bgr("chelsea")[::2, ::2])
    return path


def huge_png(path, width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def truncated_jpeg(path):
    ok, data = cv2.imencode(".jpg", photo_bgr("china"))
    path.write_bytes(data.tobytes()[: len(data) // 2])


BAD = {
    "empty.jpg": (lambda p: p.write_bytes(b""), "empty file"),
    "truncated.jpg": (truncated_jpeg, "truncated"),
    "notes.jpg": (lambda p: p.write_text("this is not an image\n"), "not an image"),
    "huge.png": (lambda p: huge_png(p, 100_000, 100_000), "too large"),
    "truncated.png": (lambda p: p.write_bytes(cv2.imencode(".png", photo_bgr("coffee"))[1].tobytes()[:5000]), "not an image"),
    "float.tiff": (lambda p: cv2.imwrite(str(p), np.random.rand(8, 8, 3).astype(np.float32)), "float32"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_image_is_named_and_the_batch_goes_on(name, good, tmp_path):
    make, words = BAD[name]
    bad = good.parent / name
    make(bad)
    before = {p: digest(p) for p in (good, bad)}
    out = tmp_path / "out"
    status, err = run_cli("quantize", good.parent, "-k", 4, "--out", out, "-q")
    assert status == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(bad) in lines[0] and words in lines[0], err
    assert (out / "good.png").is_file() and json.load(open(out / "good.json"))["k"] == 4
    assert not (out / f"{bad.stem}.png").exists()
    assert sorted(os.listdir(out)) == ["good.json", "good.png"]  # no temporary files left
    assert before == {p: digest(p) for p in (good, bad)}  # inputs untouched


def quantize_one(tmp_path, pixels, *args, name="img.png"):
    path = tmp_path / name
    assert cv2.imwrite(str(path), pixels)
    out = tmp_path / "out"
    status, err = run_cli("quantize", path, "--out", out, "-q", *args)
    assert status == 0, err
    stem = os.path.splitext(name)[0]
    return json.load(open(out / f"{stem}.json")), cv2.imread(str(out / f"{stem}.png"), cv2.IMREAD_UNCHANGED)


def distinct(pixels):
    return len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0))


def test_one_pixel_image(tmp_path):
    figures, out = quantize_one(tmp_path, np.array([[[10, 20, 30]]], np.uint8), "-k", 16)
    assert figures["k"] == 1 and figures["k_requested"] == 16 and figures["mse"] == 0 and figures["psnr"] is None
    assert out.tolist() == [[[10, 20, 30]]]


def test_single_colour_image(tmp_path):
    figures, out = quantize_one(tmp_path, np.full((40, 50, 3), 77, np.uint8), "-k", 8)
    assert figures["k"] == 1 and figures["converged"] and out.shape == (40, 50, 3) and (out == 77).all()


def test_k_equal_one_gives_the_mean_colour(tmp_path):
    pixels = photo_bgr("coffee")[::4, ::4]
    figures, out = quantize_one(tmp_path, pixels, "-k", 1)
    mean_rgb = pixels.reshape(-1, 3).mean(axis=0)[::-1]
    np.testing.assert_allclose(figures["centroids_rgb"][0], mean_rgb, rtol=1e-9)
    assert distinct(out) == 1


@pytest.mark.parametrize("k", ["0", "-3", "2.5", "many"])
def test_invalid_k_is_refused_naming_k(tmp_path, good, k):
    status, err = run_cli("quantize", good, "-k", k, "--out", tmp_path / "out")
    assert status == 2 and "k must be" in err
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


@pytest.mark.parametrize("delta", ["-1", "1e8", "nan"])
def test_invalid_delta_is_refused(tmp_path, good, delta):
    status, err = run_cli("quantize", good, "--delta", delta, "--out", tmp_path / "out")
    assert status == 2 and "delta must be" in err


def test_k_above_distinct_colours_keeps_every_colour(tmp_path):
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (5, 3), dtype=np.uint8)
    pixels = colours[rng.integers(0, 5, (30, 30))]
    for init in ("kmeans++", "random"):
        figures, out = quantize_one(tmp_path, pixels, "-k", 12, "--init", init)
        assert figures["k"] == 5 and figures["k_requested"] == 12
        assert (out == pixels).all() and figures["mse"] == 0


@pytest.mark.parametrize("init", ["kmeans++", "random"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exactly_k_colours_in_the_output(tmp_path, init, seed):
    """Empty clusters are re-seeded, never lost (the seed's outputs had 7-9 of 10 colours)."""
    figures, out = quantize_one(tmp_path, photo_bgr("rocket")[::2, ::2], "-k", 10, "--init", init, "--seed", seed)
    assert distinct(out) == 10 and figures["k"] == 10
    assert min(figures["cluster_pixels"]) > 0


def test_greyscale_image(tmp_path):
    grey = cv2.cvtColor(photo_bgr("astronaut"), cv2.COLOR_BGR2GRAY)
    figures, out = quantize_one(tmp_path, grey, "-k", 6)
    assert out.shape == grey.shape + (3,) and distinct(out) == 6
    assert all(c[0] == c[1] == c[2] for c in figures["palette_rgb"])


def test_rgba_keeps_alpha_untouched(tmp_path):
    bgr = photo_bgr("chelsea")
    alpha = np.tile(np.linspace(0, 255, bgr.shape[1]).astype(np.uint8), (bgr.shape[0], 1))
    figures, out = quantize_one(tmp_path, np.dstack([bgr, alpha]), "-k", 8)
    assert out.shape == bgr.shape[:2] + (4,) and (out[..., 3] == alpha).all()
    assert distinct(out[..., :3]) == 8


def test_16_bit_image_is_clustered_in_8_bits_and_written_in_16(tmp_path):
    rgb16 = photo_bgr("coffee").astype(np.uint16) * 257 + 100
    alpha16 = np.full(rgb16.shape[:2], 40000, np.uint16)
    figures, out = quantize_one(tmp_path, np.dstack([rgb16, alpha16]), "-k", 5)
    assert out.dtype == np.uint16 and (out[..., 3] == 40000).all()
    assert (out[..., :3] % 257 == 0).all() and distinct(out[..., :3]) == 5


def test_names_with_spaces_and_non_ascii_letters(tmp_path):
    figures, out = quantize_one(tmp_path, photo_bgr("coffee")[::3, ::3], "-k", 4, name="café au lait ☕ 1.png")
    assert figures["k"] == 4 and out is not None


def test_unwritable_output_folder(tmp_path, good):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    status, err = run_cli("quantize", good, "--out", blocker / "out")
    assert status == 2 and "cannot write to the output folder" in err and str(blocker / "out") in err


def test_same_stem_twice_gets_two_outputs(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cv2.imwrite(str(tmp_path / "a" / "x.png"), photo_bgr("chelsea")[::4, ::4])
    cv2.imwrite(str(tmp_path / "b" / "x.jpg"), photo_bgr("coffee")[::4, ::4])
    status, err = run_cli("quantize", tmp_path / "a", tmp_path / "b", "-k", 3, "--out", tmp_path / "out", "-q")
    assert status == 0, err
    assert {"x.png", "x.json", "x-2.png", "x-2.json"} == set(os.listdir(tmp_path / "out"))


def test_exif_orientation_is_honoured(tmp_path):
    """A phone JPEG stored landscape with 'rotate 90' in EXIF comes out as viewers show it."""
    from PIL import Image as PILImage

    rgb = photo_bgr("coffee")[::4, ::4, ::-1]  # 100 x 150 stored
    exif = PILImage.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 clockwise to display
    path = tmp_path / "phone.jpg"
    PILImage.fromarray(np.ascontiguousarray(rgb)).save(path, exif=exif, quality=95)
    status, err = run_cli("quantize", path, "-k", 4, "--out", tmp_path / "out", "-q")
    assert status == 0, err
    out = cv2.imread(str(tmp_path / "out" / "phone.png"))
    assert out.shape[:2] == (rgb.shape[1], rgb.shape[0])  # rotated: 150 x 100


def test_file_name_that_is_not_utf8(tmp_path):
    """Linux allows any bytes in a name: it is processed and its outputs written."""
    folder = tmp_path / "in"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes, not UTF-8
    cv2.imwrite(os.path.join(str(folder), "x.png"), photo_bgr("chelsea")[::4, ::4])
    os.rename(os.path.join(str(folder), "x.png"), os.path.join(str(folder), name))
    status, err = run_cli("quantize", folder, "-k", 3, "--out", tmp_path / "out", "-q")
    assert status == 0, err
    assert sorted(os.listdir(tmp_path / "out")) == sorted([os.fsdecode(b"caf\xe9.json"), os.fsdecode(b"caf\xe9.png")])
