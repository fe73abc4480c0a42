"""The pixel budget (KMEANS_MAX_PIXELS) and multi-frame inputs.

An image whose header says it is over the budget is refused before anything is decoded, so the
refusal is cheap (measured here: the max RSS of a child process). Animated GIF, PNG and WebP files
and multi-page TIFFs are decoded at their first frame and say so in the image metadata.
"""

import io
import json
import os
import struct
import subprocess
import sys
import warnings
import zlib

import cv2
import numpy as np
import PIL.Image
import pytest

from conftest import ROOT, photo_bgr, run_cli
from kmeans_ops.colours import colour_table
from kmeans_ops.errors import InputError
from kmeans_ops.ingest import MAX_COUNTED_FRAMES, ingest, read_image
from kmeans_ops.params import validate
from kmeans_ops.run import image_id_of
from kmeans_ops.workarea import WorkArea

SIDE = 30000  # 900 megapixels: under OpenCV's 2^30-pixel limit, 9 times the default budget
DECODED_BYTES = SIDE * SIDE * 3  # 2.7 GB: what decoding one of the huge files takes at the very least
SIZE_WORDS = "30000 x 30000 = 900 megapixels"
BUDGET_WORDS = "over the pixel budget of 100 megapixels (KMEANS_MAX_PIXELS=100000000)"


# ---------------------------------------------------------------------------- files with big headers
def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def black_rows(width: int, height: int) -> bytes:
    """The zlib stream (PNG IDAT data) of ``height`` black RGB rows, compressed one row at a time:
    30000 x 30000 is 2.7 GB of rows but never more than one row (90 KB) in memory, and 2.6 MB out."""
    compressor = zlib.compressobj(9)
    row = bytes(1 + 3 * width)  # filter type 0, then zero samples
    return b"".join([compressor.compress(row) for _ in range(height)]) + compressor.flush()


def black_png(path, width: int, height: int, idat: bytes, animated: bool = False) -> None:
    """A valid 8-bit RGB PNG of black pixels. ``animated``: an APNG of one frame whose disposal
    clears the canvas (acTL, then fcTL with dispose_op BACKGROUND), which Pillow's reader acts on
    while merely opening the file."""
    chunks = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    if animated:
        chunks += png_chunk(b"acTL", struct.pack(">II", 1, 0))
        chunks += png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, width, height, 0, 0, 1, 1, 1, 0))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))


def wide_screen_gif(path, width: int, height: int) -> None:
    """A valid GIF of 51 bytes: a ``width`` x ``height`` logical screen holding one 1 x 1 frame
    (disposal: restore to background). OpenCV decodes the whole screen."""
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (1, 1)).save(buffer, "GIF", disposal=2)
    raw = bytearray(buffer.getvalue())
    raw[6:10] = struct.pack("<HH", width, height)  # the logical screen descriptor
    path.write_bytes(bytes(raw))


def overflowing_gif(path, width: int, height: int) -> None:
    """A GIF of a 1 x 1 screen whose one frame says ``width`` x ``height`` (disposal: restore to
    background): Pillow's reader, with its own check lifted, fills that frame's area while opening."""
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (1, 1)).save(buffer, "GIF", disposal=2)
    raw = bytearray(buffer.getvalue())
    descriptor = raw.rindex(b",\x00\x00\x00\x00\x01\x00\x01\x00")  # image at 0, 0, size 1 x 1
    raw[descriptor + 5 : descriptor + 9] = struct.pack("<HH", width, height)
    path.write_bytes(bytes(raw))


def jpeg_saying(path, width: int, height: int) -> None:
    """A real JPEG (a photo) whose frame header (SOF0) says ``width`` x ``height``."""
    raw = bytearray(cv2.imencode(".jpg", photo_bgr("chelsea"))[1].tobytes())
    sof = raw.index(b"\xff\xc0")
    raw[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(raw))


@pytest.fixture(scope="session")
def huge(tmp_path_factory):
    """Files whose headers say 30000 x 30000, built once per session: a PNG (2.6 MB, all black), the
    same as an APNG, a GIF of 51 bytes, a GIF whose frame (not its screen) says so, and a JPEG."""
    folder = tmp_path_factory.mktemp("huge")
    idat = black_rows(SIDE, SIDE)
    files = {"png": folder / "huge.png", "apng": folder / "huge-apng.png", "gif": folder / "huge.gif",
             "gif-frame": folder / "huge-frame.gif", "jpeg": folder / "huge.jpg"}
    black_png(files["png"], SIDE, SIDE, idat)
    black_png(files["apng"], SIDE, SIDE, idat, animated=True)
    wide_screen_gif(files["gif"], SIDE, SIDE)
    overflowing_gif(files["gif-frame"], SIDE, SIDE)
    jpeg_saying(files["jpeg"], SIDE, SIDE)
    return files


def test_the_builders_write_images_opencv_decodes(tmp_path):
    """The huge files are real images: the same code at a small size decodes to what it says."""
    width, height = 300, 200
    idat = black_rows(width, height)
    for animated in (False, True):
        path = tmp_path / f"small-{animated}.png"
        black_png(path, width, height, idat, animated)
        pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert pixels.shape == (height, width, 3) and not pixels.any()
    wide_screen_gif(tmp_path / "small.gif", width, height)
    assert cv2.imread(str(tmp_path / "small.gif"), cv2.IMREAD_UNCHANGED).shape[:2] == (height, width)
    assert os.path.getsize(tmp_path / "small.gif") == 51


# ---------------------------------------------------------------------------- refusals from the header
@pytest.mark.parametrize("kind", ["png", "apng", "gif", "jpeg"])
def test_header_over_the_budget_is_refused(huge, kind, monkeypatch):
    monkeypatch.delenv("KMEANS_MAX_PIXELS", raising=False)
    with pytest.raises(InputError) as caught:
        read_image(huge[kind])
    message = str(caught.value)
    assert message.startswith(f"{huge[kind]}: image too large: ") and "\n" not in message
    assert SIZE_WORDS in message and BUDGET_WORDS in message


# What a child process does: read one image, say how it went, how long it took and its peak memory.
# The peak is VmHWM of /proc/self/status (this process's own high-water mark, reset by exec); the
# max RSS of getrusage is not: Linux keeps the parent's across fork and exec, so under a big pytest
# process it would report the parent's size.
CHILD = """
import sys, time
sys.path.insert(0, sys.argv[1])
from kmeans_ops.errors import InputError
from kmeans_ops.ingest import read_image
started = time.perf_counter()
try:
    read_image(sys.argv[2])
    outcome = "decoded"
except InputError:
    outcome = "refused"
seconds = time.perf_counter() - started
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(outcome, seconds, peak_kb * 1024)
"""


@pytest.mark.parametrize("kind", ["png", "apng", "gif", "gif-frame", "jpeg"])
def test_refusal_costs_almost_nothing(huge, kind):
    """Peak memory (max RSS) of a fresh process that reads the file: far below one decode (2.7 GB;
    measured without the budget: 26 s and 5.2 GB for the PNG, 17 s and 6.1 GB for the GIF; with
    Pillow's check lifted for GIF, 0.9 GB for the frame that overflows its screen, which OpenCV
    then refuses as not decodable)."""
    env = {name: value for name, value in os.environ.items() if name != "KMEANS_MAX_PIXELS"}
    child = subprocess.run([sys.executable, "-c", CHILD, ROOT, str(huge[kind])], env=env,
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr
    outcome, seconds, peak = child.stdout.split()
    assert outcome == "refused"
    assert int(peak) < 400e6 < DECODED_BYTES, f"max RSS {int(peak) / 1e6:.0f} MB"


def test_cli_refuses_the_huge_png_and_does_the_rest(huge, tmp_path, monkeypatch):
    monkeypatch.delenv("KMEANS_MAX_PIXELS", raising=False)
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), photo_bgr("chelsea")[::2, ::2])
    out = tmp_path / "out"
    status, err = run_cli("quantize", huge["png"], good, "-k", 4, "--out", out, "-q")
    assert status == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {huge['png']}: image too large: {SIZE_WORDS}, {BUDGET_WORDS}"], err
    assert sorted(os.listdir(out)) == ["good.json", "good.png"]


@pytest.mark.parametrize("name", ["china.jpg", "coffee.png"])
def test_budget_boundary(photo_dir, name, monkeypatch):
    """Exactly the budget is accepted, one pixel more is refused (a JPEG, whose size Pillow reads, and
    a PNG, whose size is read at its fixed offset)."""
    path = photo_dir / name
    height, width = cv2.imread(str(path)).shape[:2]
    monkeypatch.setenv("KMEANS_MAX_PIXELS", str(width * height - 1))
    with pytest.raises(InputError) as caught:
        read_image(path)
    assert f"{width} x {height} = " in str(caught.value)
    assert f"(KMEANS_MAX_PIXELS={width * height - 1})" in str(caught.value)
    monkeypatch.setenv("KMEANS_MAX_PIXELS", str(width * height))
    assert read_image(path).shape == (height, width)


def test_budget_holds_for_a_format_pillow_cannot_read(tmp_path, monkeypatch):
    """A PAM file: Pillow does not read it, OpenCV does; the decoded size is checked instead."""
    path = tmp_path / "coffee.pam"
    pixels = photo_bgr("coffee")
    assert cv2.imwrite(str(path), pixels)
    with pytest.raises(PIL.UnidentifiedImageError):
        PIL.Image.open(path)
    height, width = pixels.shape[:2]
    monkeypatch.setenv("KMEANS_MAX_PIXELS", str(width * height - 1))
    with pytest.raises(InputError, match=f"{width} x {height} = "):
        read_image(path)
    monkeypatch.setenv("KMEANS_MAX_PIXELS", str(width * height))
    assert (read_image(path).bgr == pixels).all()


def test_pillow_limit_is_neither_applied_nor_changed(photo_dir, tmp_path, monkeypatch):
    """Pillow's own limit (here as strict as another user of Pillow in the process might set it)
    neither refuses an image within our budget nor warns, and is the same afterwards."""
    monkeypatch.delenv("KMEANS_MAX_PIXELS", raising=False)
    liar = tmp_path / "liar.jpg"
    jpeg_saying(liar, 20000, 20000)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_image(photo_dir / "china.jpg").shape == (427, 640)
        with pytest.raises(InputError, match="20000 x 20000 = 400 megapixels, over the pixel budget"):
            read_image(liar)
    assert not [w for w in caught if issubclass(w.category, PIL.Image.DecompressionBombWarning)]
    assert PIL.Image.MAX_IMAGE_PIXELS == 1000


# ---------------------------------------------------------------------------- multi-frame inputs
FRAME = (slice(0, 200), slice(0, 300))  # every frame: a 300 x 200 crop of a different photo


def write_frames(path, kind: str) -> np.ndarray:
    """A 3-frame file of real photos; returns its first frame as Pillow decodes it (B, G, R)."""
    frames = [PIL.Image.fromarray(photo_bgr(name)[FRAME][..., ::-1]) for name in ("chelsea", "coffee", "rocket")]
    options = {"webp": {"lossless": True}}.get(kind, {})
    frames[0].save(path, save_all=True, append_images=frames[1:], **options)
    with PIL.Image.open(path) as written:
        assert written.n_frames == 3
        return np.ascontiguousarray(np.asarray(written.convert("RGB"))[..., ::-1])


@pytest.mark.parametrize("kind", ["gif", "tiff", "png", "webp"])
def test_multi_frame_file_uses_its_first_frame_and_says_so(tmp_path, kind):
    path = tmp_path / f"anim.{kind}"
    first = write_frames(path, kind)
    out, work = tmp_path / "out", tmp_path / "work"
    status, err = run_cli("quantize", path, "-k", 4, "--out", out, "--work", work)
    assert status == 0, err
    assert cv2.imread(str(out / "anim.png"), cv2.IMREAD_UNCHANGED).shape[:2] == first.shape[:2]
    meta = json.load(open(WorkArea(str(work)).meta(image_id_of("anim"))))
    assert meta["frames"] == 3 and meta["warnings"] == ["first frame of 3 used"]
    table = colour_table(first)  # the colours are the first frame's, not another's
    assert meta["distinct_colours"] == len(table) and meta["pixels"] == first.shape[0] * first.shape[1]
    np.testing.assert_allclose(meta["mean_bgr"], table.mean(), rtol=1e-12)


def test_single_frame_file_has_no_warning(photo_dir, tmp_path):
    area = WorkArea(str(tmp_path / "work"))
    meta = ingest(str(photo_dir / "china.jpg"), "china", area, validate(k=4))
    assert meta["frames"] == 1 and "warnings" not in meta
    assert json.load(open(area.meta("china"))) == meta


def test_frames_are_counted_up_to_a_cap(tmp_path):
    """Pillow counts a TIFF's pages in quadratic time: they are counted up to MAX_COUNTED_FRAMES."""
    photo = photo_bgr("rocket")[..., ::-1]
    pages = [PIL.Image.fromarray(np.ascontiguousarray(photo[i % 400 : i % 400 + 4, :4])) for i in range(MAX_COUNTED_FRAMES + 50)]
    path = tmp_path / "pages.tiff"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    meta = ingest(str(path), "pages", WorkArea(str(tmp_path / "work")), validate(k=2))
    assert meta["frames"] == MAX_COUNTED_FRAMES
    assert meta["warnings"] == [f"first frame of {MAX_COUNTED_FRAMES} or more used"]
