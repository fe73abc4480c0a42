"""Stage 4, reconstruction: redraw each pixel with its centroid's colour, and measure the result.

Each distinct colour is labelled once (the same nearest-centroid kernel as map), then a 2^24-entry
lookup table maps every pixel's colour code to its label: no per-pixel Python loop, and no float
copy of the image. Quality is computed exactly from the colour table.

Options (see :func:`finish`):

- **dithering** (``"floyd-steinberg"``): Floyd-Steinberg error diffusion with the same palette, done
  by Pillow in C; quality and cluster sizes are then measured on the written pixels;
- **label maps**: ``<stem>-labels.png``, the cluster index of every pixel (one channel, 8-bit for
  K <= 256, else 16-bit), such that ``palette_rgb[label]`` is the output's colour.
"""

from __future__ import annotations

import math
import os

import cv2
import numpy as np

from .colours import ColourTable, pixel_codes
from .errors import InputError
from .ingest import Image
from .mapreduce import assign
from .params import DITHER_METHODS, MAX_DITHER_K
from .storage import write_bytes

#: What is appended to an output image's name (without its extension) to name its label map.
LABELS_SUFFIX = "-labels.png"


def labels_path(out_image: str) -> str:
    """The label map written beside the output image ``out_image``: ``<stem>.png`` -> ``<stem>-labels.png``."""
    return os.path.splitext(out_image)[0] + LABELS_SUFFIX


def palette_of(centroids: np.ndarray) -> np.ndarray:
    """Centroids (float B, G, R) -> the 8-bit colours written to the output."""
    return np.clip(np.rint(centroids), 0, 255).astype(np.uint8)


def label_table(table: ColourTable, centroids: np.ndarray) -> np.ndarray:
    return assign(table.bgr(), centroids, table.mean())


def figures_of(squared_error: float, n_pixels: int) -> dict:
    """MSE (per channel value, 8-bit units), PSNR (dB; None when the output equals the input) and the
    total squared error, from the total squared error over ``n_pixels`` pixels."""
    mse = squared_error / (n_pixels * 3)
    psnr = 10.0 * math.log10(255.0**2 / mse) if mse > 0 else None
    return {"mse": mse, "psnr": psnr, "squared_error": squared_error}


def quality(table: ColourTable, labels: np.ndarray, palette: np.ndarray) -> dict:
    """The figures (:func:`figures_of`) of the output colours ``palette[labels]`` of each distinct
    colour against the original, over all pixels: exact, from the colour table."""
    diff = table.bgr() - palette[labels].astype(np.float64)
    return figures_of(float(table.counts @ (diff * diff).sum(axis=1)), table.n_pixels)


#: Rows of pixels whose squared differences are summed at a time by :func:`squared_error_of`.
_ROWS = 256


def squared_error_of(original: np.ndarray, output: np.ndarray) -> int:
    """The exact sum of squared differences of two 8-bit images of the same shape, in integers.

    Blocks of rows: absolute differences (uint8), squared in uint16 (255^2 fits), summed in uint64.
    (cv2.norm(NORM_L2SQR) is faster but goes through the square root: off by an ulp.)"""
    total = 0
    for lo in range(0, original.shape[0], _ROWS):
        diff = cv2.absdiff(original[lo : lo + _ROWS], output[lo : lo + _ROWS])
        total += int(np.multiply(diff, diff, dtype=np.uint16).sum(dtype=np.uint64))
    return total


def pixel_quality(original: np.ndarray, output: np.ndarray) -> dict:
    """The figures (:func:`figures_of`) of the 8-bit (H, W, 3) ``output`` against ``original``,
    pixel by pixel (for dithered output, which the colour table no longer describes); exact."""
    return figures_of(float(squared_error_of(original, output)), original.shape[0] * original.shape[1])


def label_dtype(k: int) -> type:
    """The type of a label plane of ``k`` clusters: uint8 for k <= 256, else uint16."""
    return np.uint8 if k <= 256 else np.uint16


#: Pixels whose colour codes label_image computes at a time.
_CODE_PIXELS = 1 << 20


def label_image(image: Image, table: ColourTable, labels: np.ndarray, k: int | None = None) -> np.ndarray:
    """(H, W) cluster label of every pixel, through a 2^24-entry lookup table of colour codes.

    ``labels``: the label of each colour of ``table``; ``k``: the number of clusters, which sets
    the type (:func:`label_dtype`; by default the largest label decides)."""
    lut = np.zeros(1 << 24, label_dtype(k if k is not None else int(labels.max(initial=0)) + 1))
    lut[table.codes] = labels
    out = np.empty(image.shape, lut.dtype)
    rows = max(1, _CODE_PIXELS // max(1, image.shape[1]))  # the codes of a few rows at a time: no 4 bytes per pixel
    for lo in range(0, image.shape[0], rows):
        out[lo : lo + rows] = lut[pixel_codes(image.bgr[lo : lo + rows])].reshape(-1, image.shape[1])
    return out


def dithered_labels(bgr: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) uint8 palette index of every pixel, by Floyd-Steinberg error diffusion (Pillow's
    ``Image.quantize(palette=..., dither=FLOYDSTEINBERG)``, in C; about 0.3 s for 12 megapixels).

    Each pixel, left to right and top to bottom, takes the palette colour nearest to its colour
    plus the error diffused from the pixels before it (7/16 right, 3/16, 5/16, 1/16 below). Pillow
    looks the nearest colour up in a cache of 4-value steps per channel, so a colour may take a
    palette colour a few units farther than the nearest: its error is diffused like any other.
    R, G, B order, as Pillow expects (its row ends are not symmetric in the channels). At most
    MAX_DITHER_K colours (Pillow's palettes).
    """
    from PIL import Image as PILImage

    if len(palette) > MAX_DITHER_K:
        raise ValueError(f"dithering needs at most {MAX_DITHER_K} palette colours, got {len(palette)}")
    reference = PILImage.new("P", (1, 1))
    reference.putpalette(np.ascontiguousarray(palette[:, ::-1], dtype=np.uint8).ravel().tolist())
    source = PILImage.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))  # (H, W, 3) uint8: mode "RGB"
    return np.asarray(source.quantize(palette=reference, dither=PILImage.Dither.FLOYDSTEINBERG))


def pixel_labels(image: Image, table: ColourTable, labels: np.ndarray, palette: np.ndarray,
                 dither: str = "none", exact: bool = False) -> np.ndarray:
    """(H, W) palette index of every written pixel: the nearest centroid's (``dither`` "none"), or
    the error-diffused one (``dither`` "floyd-steinberg"). Typed by :func:`label_dtype`.

    ``exact``: every colour of the image is a palette colour (squared error 0). There is no error to
    diffuse, so dithering leaves the image as it is (Pillow's approximate lookup would not)."""
    if dither == "none" or exact:
        return label_image(image, table, labels, len(palette))
    if dither == "floyd-steinberg":
        return dithered_labels(image.bgr, palette)
    raise ValueError(f"dither must be one of {', '.join(DITHER_METHODS)}, got {dither!r}")


def render(image: Image, pixels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """The output pixels from the label plane ``pixels``: palette colours, alpha put back untouched,
    in the source bit depth."""
    out = np.take(palette, pixels, axis=0)
    if image.bit_depth == 16:
        out = out.astype(np.uint16) * np.uint16(257)
    if image.alpha is not None:
        out = np.dstack([out, image.alpha])
    return out


def encode_output(path: str, image: Image, pixels: np.ndarray, palette: np.ndarray) -> bytes:
    """The encoded quantised image (label plane ``pixels`` through ``palette``). An 8-bit PNG
    without alpha and with at most 256 colours is an indexed (palette) PNG by Pillow: a third of
    the data to compress, and every reader shows the same colours. Anything else goes through
    OpenCV (format from the extension of ``path``), with alpha and 16 bits kept."""
    if path.lower().endswith(".png") and image.bit_depth == 8 and image.alpha is None and len(palette) <= 256:
        import io

        from PIL import Image as PILImage

        indexed = PILImage.fromarray(pixels.astype(np.uint8, copy=False))
        indexed.putpalette(palette[:, ::-1].astype(np.uint8).ravel().tolist())
        buffer = io.BytesIO()
        indexed.save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()
    return encode_image(path, render(image, pixels, palette))


def write_labels(path: str, pixels: np.ndarray) -> None:
    """Write a label plane as a one-channel PNG (8 or 16 bits, its type's), atomically."""
    write_image(path, np.ascontiguousarray(pixels))


def encode_image(path: str, pixels: np.ndarray) -> bytes:
    """Encode (format from the extension of ``path``, PNG by default)."""
    ext = "." + path.rsplit(".", 1)[-1] if "." in path.rsplit("/", 1)[-1] else ".png"
    ok, encoded = cv2.imencode(ext, pixels)
    if not ok:
        raise InputError(path, f"OpenCV cannot encode {ext} output")
    return encoded.tobytes()


def write_image(path: str, pixels: np.ndarray) -> None:
    """Encode (:func:`encode_image`) and write atomically."""
    write_bytes(path, encode_image(path, pixels))


def sizes(source_bytes: int | None, output_bytes: int | None) -> dict:
    """The JSON's size figures: the input file's bytes, the output image's (None: not written) and
    their ratio (output / input)."""
    ratio = output_bytes / source_bytes if output_bytes is not None and source_bytes else None
    return {"source_bytes": source_bytes, "output_bytes": output_bytes, "size_ratio": ratio}


def _remove_own(path: str) -> None:
    """Remove an earlier output at ``path`` (the caller's own name: it would contradict the JSON)."""
    if os.path.lexists(path):
        os.unlink(path)


def _read_source(meta: dict) -> Image:
    """Decode the run's source image again (local or hdfs://), refusing one that changed since ingest."""
    from .ingest import read_image
    from .paths import filesystem

    source = meta["source"]
    fs = filesystem(source)
    st = fs.stat(source)
    if st is None or (st.size, st.mtime_ns) != (meta["source_bytes"], meta["source_mtime_ns"]):
        raise InputError(source, "the file changed or vanished during the run; run it again")
    with fs.local(source) as local:
        try:
            return read_image(local)
        except InputError as err:
            raise InputError(source, err.problem) from None


def _published(path: str | None, published_as: str | None) -> str | None:
    """The name of a written file where it will be published (``published_as``), else as written."""
    return os.path.join(published_as, os.path.basename(path)) if path and published_as else path


def finish(area, image_id: str, run: dict, out_image: str | None, out_json: str, extra: dict | None = None,
           image: Image | None = None, table: ColourTable | None = None, published_as: str | None = None,
           labels: bool = False, dither: str = "none", palette_unit: str | None = None,
           skip_if_larger: bool = False) -> dict:
    """Reconstruct one image from its final centroids and write its output image and JSON figures.

    ``run`` is the driver's ``{"iterations": n, "converged": bool}``. The output image is skipped
    for inputs with no pixel grid (seed points files). ``image`` and ``table``, when the caller
    still holds them from ingest, save decoding the source and parsing the points file again.
    ``published_as``: the folder the outputs will be published in (renamed there from a staging
    folder): the JSON names the image there. Returns the figures written to ``out_json``.

    - ``labels``: also write the label map :func:`labels_path` ``(out_image)`` (one channel, the
      cluster index of each pixel, 8-bit for K <= 256, else 16-bit; alpha is not part of it); the
      JSON's ``labels`` names it (None when not written).
    - ``dither``: "none" (each pixel its nearest centroid's colour) or "floyd-steinberg" (error
      diffusion with the same palette, K <= 256). Dithered, the figures (``mse``, ``psnr``,
      ``squared_error``) and ``cluster_pixels`` are those of the written pixels against the
      original 8-bit pixels, and the label map holds the dithered labels. An image whose colours
      are all palette colours (fewer distinct colours than K) is written exactly, as without.
    - ``palette_unit``: the work-area unit (``area.clusters(unit, n)``, ``area.stats(unit, n)``)
      whose final and initial centroids and history are used instead of the image's own: a palette
      shared by several images. The image's own table and metadata still give its labels, figures
      and ``cluster_pixels``. With ``run["iterations"] == 0`` the centroids are the unit's
      ``clusters-000`` (a fixed palette applied with no iterations).
    - ``skip_if_larger``: when the encoded output would be larger than the input file, no output
      image (nor label map) is written, an earlier one at its name is removed, and the JSON says
      ``"skipped": "larger"`` with ``output`` None and ``output_bytes_would_be``. Always in the
      JSON: ``source_bytes``, ``output_bytes`` and ``size_ratio`` (:func:`sizes`).
    """
    from .driver import history
    from .formats import read_clusters, read_points
    from .storage import read_json, write_json

    if dither not in DITHER_METHODS:
        raise ValueError(f"dither must be one of {', '.join(DITHER_METHODS)}, got {dither!r}")
    meta = read_json(area.meta(image_id))
    unit = palette_unit or image_id
    iterations = run["iterations"]
    centroids = read_clusters(area.clusters(unit, iterations))
    table = table if table is not None else read_points(area.points(image_id))
    colour_labels = label_table(table, centroids)
    palette = palette_of(centroids)
    figures = quality(table, colour_labels, palette)
    cluster_pixels = np.bincount(colour_labels, table.counts, minlength=len(centroids))
    written = labels_written = output_bytes = None
    skipped = {}
    if meta["kind"] == "image" and out_image:
        if image is None:
            image = _read_source(meta)
        exact = figures["squared_error"] == 0
        pixels = pixel_labels(image, table, colour_labels, palette, dither, exact)
        if dither != "none" and not exact:  # the colour table no longer describes the output: measure it
            figures = pixel_quality(image.bgr, np.take(palette, pixels, axis=0))
            cluster_pixels = np.bincount(pixels.ravel(), minlength=len(centroids))
        encoded = encode_output(out_image, image, pixels, palette)
        if skip_if_larger and len(encoded) > meta["source_bytes"]:
            skipped = {"skipped": "larger", "output_bytes_would_be": len(encoded)}
            for own in [out_image] + ([labels_path(out_image)] if labels else []):
                _remove_own(own)
        else:
            if labels:
                labels_written = labels_path(out_image)
                write_labels(labels_written, pixels)
            write_bytes(out_image, encoded)
            written, output_bytes = out_image, len(encoded)
    result = {
        "image_id": image_id,
        "source": meta["source"],
        "output": _published(written, published_as),
        "labels": _published(labels_written, published_as),
        "dither": dither if written else "none",
        "width": meta["width"],
        "height": meta["height"],
        "distinct_colours": meta["distinct_colours"],
        "k": len(centroids),
        "k_requested": meta["k_requested"],
        "iterations": iterations,
        "converged": run["converged"],
        "centroids_rgb": centroids[:, ::-1].tolist(),
        "initial_centroids_rgb": read_clusters(area.clusters(unit, 0))[:, ::-1].tolist(),
        "palette_rgb": palette[:, ::-1].tolist(),
        "cluster_pixels": cluster_pixels.astype(int).tolist(),
        **figures,
        **sizes(meta.get("source_bytes"), output_bytes),
        **skipped,
        "history": history(area, unit, iterations),
        **{key: meta[key] for key in ("frames", "warnings") if key in meta},  # e.g. "first frame of 3 used"
        **(extra or {}),
    }
    write_json(out_json, result)
    return result


def reconstruct_batch(images: list[dict], area_of, staging: str, final: str, extra: dict, log,
                      options: dict | None = None) -> list[dict]:
    """Reconstruct a batch of images (``{"image_id", "stem", "iterations", "converged"}``) into the
    staging folder of a run that will be published as ``final``; one log line each. ``area_of(image
    id)`` gives the work area holding the image's files (fetched from HDFS by the Hadoop engine).
    ``staging`` may be on HDFS (an ``hdfs://`` output): each image's files are then written into a
    local temporary folder and uploaded there.
    ``options``: keywords of :func:`finish` for every image (``labels``, ``dither``,
    ``palette_unit``); an image's own ``palette_unit`` and ``quality`` (k "auto": its chosen
    candidate unit and the search's record, kmeans_ops.search) replace the batch's. A failure is
    reported for its image; the rest of the batch goes on.
    """
    import time

    from .errors import shown
    from .paths import filesystem

    fs = filesystem(staging)
    results = []
    for image in images:
        started = time.perf_counter()
        out_json = fs.join(staging, image["stem"] + ".json")
        try:
            with fs.working_copy(staging) as folder:  # on HDFS: written locally, then uploaded
                local = os.path.join(folder, image["stem"])
                own = {"palette_unit": image["palette_unit"]} if image.get("palette_unit") else {}
                result = finish(area_of(image["image_id"]), image["image_id"], image, local + ".png", local + ".json",
                                extra={**extra, "quality": image["quality"]} if image.get("quality") else extra,
                                published_as=final, **{**(options or {}), **own})
        except (InputError, OSError, RuntimeError) as err:  # RuntimeError: HDFS, fetching the image's files
            log.error("reconstruction of %s failed: %s", shown(image["stem"]), err)
            results.append({"ok": False, "stage": "reconstruct", "source": image["stem"], "error": str(err)})
            continue
        seconds = time.perf_counter() - started
        psnr = "inf" if result["psnr"] is None else f"{result['psnr']:.2f}"
        log.info("reconstructed %s: k=%d, %d iterations, PSNR %s dB, %.2f s -> %s", shown(image["stem"]), result["k"],
                 result["iterations"], psnr, seconds, shown(result["output"] or os.path.join(final, image["stem"] + ".json")))
        results.append({"ok": True, "stem": image["stem"], "json": out_json, "seconds": seconds,
                        "psnr": result["psnr"], "k": result["k"]})
    return results
