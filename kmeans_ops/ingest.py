"""Stage 1, ingest: find and decode images, build their weighted colour tables, and write each
image's points file, initial clusters file and metadata into the work area."""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import InputError
from .paths import IMAGE_EXTENSIONS, is_hdfs  # noqa: F401 - IMAGE_EXTENSIONS: kept for importers


@dataclass
class Image:
    """A decoded image: 8-bit B, G, R planes, the untouched alpha plane if any, and the source depth."""

    path: str
    bgr: np.ndarray  # (H, W, 3) uint8, C-contiguous
    alpha: np.ndarray | None  # (H, W) in the source dtype (uint8 or uint16), or None
    bit_depth: int  # 8 or 16

    @property
    def shape(self) -> tuple[int, int]:
        return self.bgr.shape[:2]


def _jpeg_is_truncated(data: np.ndarray) -> bool:
    """A JPEG whose last scan (after its last SOS marker FFDA) has no end-of-image marker FFD9.

    libjpeg decodes such files with a grey lower part and only a warning, so check it ourselves.
    """
    raw = data.tobytes()
    last_scan = raw.rfind(b"\xff\xda")
    return last_scan < 0 or raw.find(b"\xff\xd9", last_scan) < 0


def read_image(path: str | os.PathLike) -> Image:
    """Decode any image OpenCV reads, keeping size, orientation and alpha.

    - Greyscale and palette images become three channels; alpha is kept as it is.
    - JPEGs honour their EXIF orientation (as viewers show them).
    - 16-bit images are clustered in 8 bits: ``v8 = round(v16 * 255 / 65535)``; the alpha plane
      keeps its 16 bits and the output is written back in 16 bits (see reconstruct).
    - Anything else (float or signed images, undecodable or truncated files) raises InputError.
    """
    path = os.fspath(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise InputError(path, f"cannot read file ({err.strerror or err})") from None
    if data.size == 0:
        raise InputError(path, "empty file (0 bytes)")
    is_jpeg = data.size >= 3 and data[0] == 0xFF and data[1] == 0xD8 and data[2] == 0xFF
    if is_jpeg and _jpeg_is_truncated(data):
        raise InputError(path, "truncated or corrupt JPEG (no end-of-image marker after the last scan)")
    # JPEG has no alpha: IMREAD_COLOR applies the EXIF orientation. Others: keep every channel and depth.
    flags = cv2.IMREAD_COLOR if is_jpeg else cv2.IMREAD_UNCHANGED
    try:
        pixels = cv2.imdecode(data, flags)
    except cv2.error as err:
        if "CV_IO_MAX_IMAGE_PIXELS" in str(err):
            raise InputError(path, "image too large: over OpenCV's limit of 2^30 pixels "
                             "(the environment variable OPENCV_IO_MAX_IMAGE_PIXELS raises it)") from None
        raise InputError(path, f"OpenCV cannot decode it: {str(err).strip().splitlines()[-1]}") from None
    if pixels is None:
        raise InputError(
            path,
            "not an image OpenCV can decode (corrupt, truncated, not an image, or over OpenCV's "
            "limit of 2^30 pixels)",
        )
    return _to_image(path, pixels)


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
    with fs.local(path) as local_path:  # an hdfs:// image is decoded from a temporary local copy
        try:
            return _ingest_local(path, local_path, st, image_id, area, params, keep)
        except InputError as err:
            if err.path == local_path != path:  # name the input, not its temporary copy
                raise InputError(path, err.problem) from None
            raise


def _ingest_local(path: str, local_path: str, st, image_id: str, area, params, keep: bool):
    from .colours import colour_table
    from .formats import read_seed_points, write_clusters, write_points
    from .initialise import initial_centroids
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
        meta.update(kind="seed-points", width=None, height=None, bit_depth=8, alpha=False)
    else:
        image = read_image(local_path)
        table = colour_table(image.bgr)
        height, width = image.shape
        meta.update(width=width, height=height, bit_depth=image.bit_depth, alpha=image.alpha is not None)
    centroids = initial_centroids(table, params.k, params.init, params.seed)
    meta.update(
        pixels=table.n_pixels,
        distinct_colours=len(table),
        mean_bgr=table.mean().tolist(),  # the frame map computes distances in (mapreduce.assign)
        k_requested=params.k,
        k=len(centroids),
    )
    write_points(area.points(image_id), image_id, table)
    write_clusters(area.clusters(image_id, 0), centroids)
    write_json(area.meta(image_id), meta)
    return (meta, image, table) if keep else meta
