"""Stage 1, ingest: find and decode images, build their weighted colour tables, and write each
image's points file, initial clusters file and metadata into the work area."""

from __future__ import annotations

import io
import os
import struct
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import cv2
import numpy as np

from . import settings
from .errors import InputError, native_stderr_captured, quiet_opencv
from .paths import IMAGE_EXTENSIONS, is_hdfs  # noqa: F401 - IMAGE_EXTENSIONS: kept for importers


@dataclass
class Image:
    """A decoded image: 8-bit B, G, R planes, the untouched alpha plane if any, the source depth, and
    how many frames (pages) the file holds: only the first is decoded."""

    path: str
    bgr: np.ndarray  # (H, W, 3) uint8, C-contiguous
    alpha: np.ndarray | None  # (H, W) in the source dtype (uint8 or uint16), or None
    bit_depth: int  # 8 or 16
    frames: int = 1  # frames of an animated GIF/PNG/WebP, pages of a TIFF; 1 when the header does not say

    @property
    def shape(self) -> tuple[int, int]:
        return self.bgr.shape[:2]


def _jpeg_is_truncated(raw: bytes) -> bool:
    """A JPEG whose last scan (after its last SOS marker FFDA) has no end-of-image marker FFD9.

    libjpeg decodes such files with a grey lower part and only a warning, so check it ourselves.
    """
    last_scan = raw.rfind(b"\xff\xda")
    return last_scan < 0 or raw.find(b"\xff\xd9", last_scan) < 0


#: Pillow readers asked for an image's header: the formats OpenCV decodes. Other files go straight
#: to OpenCV (fewer parsers see untrusted files, and none reads a format OpenCV would not decode).
_HEADER_FORMATS = ("JPEG", "PNG", "GIF", "TIFF", "WEBP", "BMP", "DIB", "PPM", "SUN", "JPEG2000", "AVIF")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_GIF_MAGICS = (b"GIF87a", b"GIF89a")
#: Held while Pillow's process-wide size limit is changed (see _pillow_limit).
_pillow_lock = threading.Lock()
quiet_opencv()
#: Frames counted at most (a bigger count is reported as this many): Pillow counts a TIFF's pages in
#: quadratic time (20 000 one-pixel pages, a 2.9 MB file: 5 s).
MAX_COUNTED_FRAMES = 1000


def _megapixels(pixels: int) -> str:
    value = pixels / 1e6
    return f"{value:.1f}".removesuffix(".0") if value >= 10 else f"{value:.3g}"


def _check_budget(path: str, width: int, height: int, budget: int) -> None:
    """Refuse (InputError) an image of ``width`` x ``height`` pixels over ``budget`` pixels
    (settings.max_pixels, environment variable KMEANS_MAX_PIXELS); exactly the budget is accepted."""
    if width * height > budget:
        raise InputError(path, f"image too large: {width} x {height} = {_megapixels(width * height)} megapixels, "
                               f"over the pixel budget of {_megapixels(budget)} megapixels (KMEANS_MAX_PIXELS={budget})")


def _fixed_size(raw: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG (its IHDR chunk, always first) or a GIF (its logical screen, the size
    OpenCV decodes), read at their fixed offsets; None for any other format.

    Pillow's readers of these two formats can allocate a whole frame while merely opening a file
    (an APNG's or a GIF's first-frame disposal), so an oversize one is refused before Pillow sees it.
    """
    if raw[:8] == _PNG_MAGIC and raw[12:16] == b"IHDR" and len(raw) >= 24:
        return struct.unpack(">II", raw[16:24])
    if raw[:6] in _GIF_MAGICS and len(raw) >= 10:
        return struct.unpack("<HH", raw[6:10])
    return None


@contextmanager
def _pillow_limit(limit: int | None):
    """Pillow's own decompression-bomb check (``PIL.Image.MAX_IMAGE_PIXELS``: a warning above it, an
    error above twice it; None: no check) set to ``limit``, and warnings silenced (Pillow's about the
    header it reads, e.g. "Truncated File Read": OpenCV decides about the pixels), for this block
    only. Both are process-wide: they are restored on exit, and the lock keeps two threads of ours
    from restoring each other's value."""
    from PIL import Image as PILImage

    with _pillow_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = PILImage.MAX_IMAGE_PIXELS
        PILImage.MAX_IMAGE_PIXELS = limit
        try:
            yield
        finally:
            PILImage.MAX_IMAGE_PIXELS = saved


def _count_frames(header) -> int:
    """The frames (pages) of an image Pillow has opened, up to MAX_COUNTED_FRAMES, none decoded.
    A frame Pillow cannot read ends the count (the first frame, the one decoded, was read)."""
    if header.format == "MPO":  # a JPEG's extra pictures (gain maps, depth maps, previews) are not frames
        return 1
    counted = 1
    try:
        if header.format == "TIFF":  # page by page up to the cap: n_frames would walk them all
            for counted in range(1, MAX_COUNTED_FRAMES):
                header.seek(counted)
            return MAX_COUNTED_FRAMES
        return min(getattr(header, "n_frames", 1), MAX_COUNTED_FRAMES)  # from the header (PNG, WebP) or a walk (GIF)
    except Exception:  # noqa: BLE001 - EOFError past the last frame, anything else at a frame Pillow cannot read
        return counted


def _pillow_header(raw: bytes, limit: int | None) -> tuple[int, int, int] | None:
    """(width, height, frames) from the header of the encoded image ``raw``, by Pillow's lazy
    ``Image.open`` (no pixel is decoded) with its own size check at ``limit``; None when Pillow
    cannot read the header."""
    from PIL import Image as PILImage

    PILImage.init()
    formats = [name for name in _HEADER_FORMATS if name in PILImage.OPEN]
    try:
        with _pillow_limit(limit), PILImage.open(io.BytesIO(raw), formats=formats) as header:
            width, height = header.size
            frames = _count_frames(header)
    except Exception:  # noqa: BLE001 - a format or a header Pillow does not read: OpenCV decides
        return None
    return width, height, frames


def _frames_within_budget(path: str, raw: bytes, budget: int) -> int:
    """Refuse the encoded image ``raw`` when its header says it is over the pixel budget (before
    anything is decoded), and return its number of frames: 1 when Pillow cannot read its header
    (OpenCV then decodes it and read_image checks the decoded size)."""
    size = _fixed_size(raw)
    if size is not None:
        _check_budget(path, *size, budget)
    # Other formats: Pillow's check lifted (its 89-megapixel default would warn about or refuse
    # images within our budget, without their size), ours made on the size it reads. PNG and GIF,
    # already checked: Pillow's check kept at the budget, which bounds what its GIF reader allocates
    # for a frame that overflows the screen.
    header = _pillow_header(raw, limit=None if size is None else budget)
    if header is None:
        return 1
    width, height, frames = header
    if size is None:
        _check_budget(path, width, height, budget)
    return frames


def read_image(path: str | os.PathLike) -> Image:
    """Decode any image OpenCV reads, keeping size, orientation and alpha.

    - Greyscale and palette images become three channels; alpha is kept as it is.
    - JPEGs honour their EXIF orientation (as viewers show them).
    - 16-bit images are clustered in 8 bits: ``v8 = round(v16 * 255 / 65535)``; the alpha plane
      keeps its 16 bits and the output is written back in 16 bits (see reconstruct).
    - Pixel budget (settings.max_pixels): an image whose header says it has more pixels is refused
      before decoding, so a refusal costs reading the file, not decoding it. The header is read from
      the very bytes then decoded (no race with a file replaced in between). A file whose header
      Pillow cannot read is decoded by OpenCV (its own 2^30-pixel limit applies) and then checked.
    - Multi-frame files (animated GIF, PNG or WebP, multi-page TIFF): the first frame is decoded;
      ``Image.frames`` says how many the file has.
    - Anything else (float or signed images, undecodable or truncated files) raises InputError.
    """
    path = os.fspath(path)
    budget_bytes = settings.max_image_bytes()
    try:
        with open(path, "rb") as file:
            raw = file.read(budget_bytes + 1)  # never more than the budget, even if the file grew
    except OSError as err:
        raise InputError(path, f"cannot read file ({err.strerror or type(err).__name__})") from None
    check_bytes(path, len(raw))  # the file grew past the budget since it was stat'ed
    if not raw:
        raise InputError(path, "empty file (0 bytes)")
    budget = settings.max_pixels()
    frames = _frames_within_budget(path, raw, budget)
    is_jpeg = raw[:3] == b"\xff\xd8\xff"
    if is_jpeg and _jpeg_is_truncated(raw):
        raise InputError(path, "truncated or corrupt JPEG (no end-of-image marker after the last scan)")
    # JPEG has no alpha: IMREAD_COLOR applies the EXIF orientation. Others: keep every channel and depth.
    flags = cv2.IMREAD_COLOR if is_jpeg else cv2.IMREAD_UNCHANGED
    try:
        with native_stderr_captured():  # libpng prints its own "libpng error: ..." lines
            pixels = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), flags)
    except cv2.error as err:
        if "CV_IO_MAX_IMAGE_PIXELS" in str(err):
            raise InputError(path, "image too large: over OpenCV's limit of 2^30 pixels "
                             "(the environment variable OPENCV_IO_MAX_IMAGE_PIXELS raises it)") from None
        # OpenCV's own text is not passed on: a decoder's message may quote what it read
        raise InputError(path, "not an image OpenCV can decode (its decoder refused the file; expected "
                               "JPEG, PNG, BMP, TIFF, WebP or another format OpenCV reads)") from None
    if pixels is None:
        raise InputError(
            path,
            "not an image OpenCV can decode (corrupt, truncated, not an image, or over OpenCV's "
            "limit of 2^30 pixels)",
        )
    _check_budget(path, pixels.shape[1], pixels.shape[0], budget)  # a header Pillow could not read
    image = _to_image(path, pixels)
    image.frames = frames
    return image


def _to_image(path: str, pixels: np.ndarray) -> Image:
    if pixels.dtype == np.uint8:
        bit_depth = 8
    elif pixels.dtype == np.uint16:
        bit_depth = 16
    else:
        raise InputError(path, f"{pixels.dtype} samples are not supported (only 8- and 16-bit unsigned images)")
    if pixels.size == 0:
        raise InputError(path, "image has no pixels")
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    alpha = None
    if channels == 1:
        colour = cv2.cvtColor(pixels.reshape(pixels.shape[:2]), cv2.COLOR_GRAY2BGR)
    elif channels == 2:  # grey + alpha (rare in OpenCV, which usually expands it)
        colour = cv2.cvtColor(np.ascontiguousarray(pixels[..., 0]), cv2.COLOR_GRAY2BGR)
        alpha = pixels[..., 1].copy()
    elif channels == 3:
        colour = pixels
    elif channels == 4:
        colour = np.ascontiguousarray(pixels[..., :3])
        alpha = pixels[..., 3].copy()
    else:
        raise InputError(path, f"{channels} channels are not supported (1 to 4)")
    if bit_depth == 16:
        colour = to_8bit(colour)
    return Image(path=path, bgr=np.ascontiguousarray(colour), alpha=alpha, bit_depth=bit_depth)


def to_8bit(values16: np.ndarray) -> np.ndarray:
    """``round(v * 255 / 65535)``, exactly, for uint16 values."""
    return ((values16.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def ingest(path: str, image_id: str, area, params, keep: bool = False):
    """Write one input's points file, initial clusters file and metadata into the work area.

    With a shared palette (``params.palette`` "run" or a palette file) the image gets no initial
    clusters file and its metadata no ``k``: the palette unit has them (kmeans_ops.palette), and
    k-means++ is not run (nor scikit-learn imported) per image.

    ``path`` is an image, or a seed ``points.txt`` (any ``.txt``: it has no pixel grid, so the run
    gives centroids and figures but no output image). Returns the metadata (also in image.json),
    or with ``keep`` the tuple (metadata, decoded Image or None, ColourTable), which a caller in the
    same process can hand to reconstruct.finish instead of decoding the image again.
    Raises InputError for a bad input; nothing is written for it then.
    """
    from .paths import filesystem

    fs = filesystem(path)
    st = fs.stat(path)
    if st is None or st.is_dir:
        raise InputError(path, "no such file")
    check_bytes(path, st.size)  # before a byte is read (or downloaded)
    with fs.local(path) as local_path:  # an hdfs:// image is decoded from a temporary local copy
        try:
            return _ingest_local(path, local_path, st, image_id, area, params, keep)
        except InputError as err:
            if err.path == local_path != path:  # name the input, not its temporary copy
                raise InputError(path, err.problem) from None
            raise


def check_bytes(path: str, size: int) -> None:
    """InputError unless a file of ``size`` bytes fits the byte budget of its kind: a seed points
    file (``.txt``: settings.max_text_bytes) or an image (settings.max_image_bytes)."""
    text = path.lower().endswith(".txt")
    budget, name = ((settings.max_text_bytes(), "KMEANS_MAX_TEXT_BYTES") if text
                    else (settings.max_image_bytes(), "KMEANS_MAX_IMAGE_BYTES"))
    if size > budget:
        raise InputError(path, f"larger than the budget of {budget} bytes for {'a points file' if text else 'an image'} "
                               f"(environment variable {name}); not read")


def _ingest_local(path: str, local_path: str, st, image_id: str, area, params, keep: bool):
    from .colours import colour_table
    from .formats import read_seed_points, write_clusters, write_points
    from .initialise import check_cost, initial_centroids
    from .palette import mode as palette_mode
    from .storage import write_json

    image = None
    meta = {
        "image_id": image_id,
        "source": path if is_hdfs(path) else os.path.abspath(path),  # where reconstruction reads it again
        "source_bytes": st.size,
        "source_mtime_ns": st.mtime_ns,
        "kind": "image",
    }
    if path.lower().endswith(".txt"):
        table = read_seed_points(local_path)
        meta.update(kind="seed-points", width=None, height=None, bit_depth=8, alpha=False, frames=None)
    else:
        image = read_image(local_path)
        table = colour_table(image.bgr)
        height, width = image.shape
        meta.update(width=width, height=height, bit_depth=image.bit_depth, alpha=image.alpha is not None,
                    frames=image.frames)
        if image.frames > 1:  # OpenCV decodes the first frame (page) only: say so
            more = " or more" if image.frames >= MAX_COUNTED_FRAMES else ""
            meta["warnings"] = [f"first frame of {image.frames}{more} used"]
    # A shared palette: no centroids of its own (kmeans_ops.palette); k "auto": each candidate K is
    # a unit of its own (kmeans_ops.search), whose K x colours is checked when it is made.
    own = params.palette == "image" and not params.auto
    if own and params.init in ("kmeans++", "random"):
        check_cost(table, params.k, path)  # before k-means++ and any iteration; nothing written yet
    pinned = params.keep
    centroids = initial_centroids(table, params.k, params.init, params.seed, pinned) if own else None
    meta.update(
        pixels=table.n_pixels,
        distinct_colours=len(table),
        mean_bgr=table.mean().tolist(),  # the frame map computes distances in (mapreduce.assign)
        k_requested="auto" if params.auto else params.k,
        k=len(centroids) if own else None,  # a shared palette's K is the palette unit's (kmeans_ops.palette)
        pinned=len(pinned),  # the first centroids are the pinned colours: reduce never moves them
    )
    if not own:
        meta["palette"] = palette_mode(params)
    write_points(area.points(image_id), image_id, table)
    if own:
        write_clusters(area.clusters(image_id, 0), centroids)
    write_json(area.meta(image_id), meta)
    return (meta, image, table) if keep else meta


def ingest_batch(images: list[dict], area, params, log) -> list[dict]:
    """Ingest a batch of planned images (``{"path", "stem", "image_id"}``) into the work area, one
    log line each; a bad image gives a failure record and the rest of the batch goes on.

    Returns per image ``{**image, "ok": True, "k", "pixels", "distinct_colours", "warnings"}`` (``k``
    None with a shared palette: see :func:`ingest`) or ``{**image, "ok": False, "stage": "ingest",
    "source", "error"}``.
    """
    import time

    from .errors import shown

    results = []
    for image in images:
        started = time.perf_counter()
        try:
            meta = ingest(image["path"], image["image_id"], area, params)
        except (InputError, MemoryError) as err:
            message = str(err) if isinstance(err, InputError) else f"{shown(image['path'])}: out of memory"
            log.error("skipped %s", message)
            results.append({**image, "ok": False, "stage": "ingest", "source": image["path"], "error": message})
            continue
        for warning in meta.get("warnings", []):
            log.warning("%s: %s", shown(image["path"]), warning)
        log.info("ingested %s: %sx%s, %d distinct colours, %s, %.2f s -> %s", shown(image["path"]),
                 meta.get("width"), meta.get("height"), meta["distinct_colours"],
                 "shared palette" if meta["k"] is None else f"k={meta['k']}",
                 time.perf_counter() - started, area.image_dir(image["image_id"]))
        results.append({**image, "ok": True, "k": meta["k"], "pixels": meta["pixels"],
                        "distinct_colours": meta["distinct_colours"], "warnings": meta.get("warnings", [])})
    return results
