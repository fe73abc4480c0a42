"""Stage 4, reconstruction: redraw each pixel with its centroid's colour, and measure the result.

Each distinct colour is labelled once (the same nearest-centroid kernel as map), then a 2^24-entry
lookup table maps every pixel's colour code to its label: no per-pixel Python loop, and no float
copy of the image. Quality is computed exactly from the colour table.
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
from .storage import write_bytes


def palette_of(centroids: np.ndarray) -> np.ndarray:
    """Centroids (float B, G, R) -> the 8-bit colours written to the output."""
    return np.clip(np.rint(centroids), 0, 255).astype(np.uint8)


def label_table(table: ColourTable, centroids: np.ndarray) -> np.ndarray:
    return assign(table.bgr(), centroids, table.mean())


def quality(table: ColourTable, labels: np.ndarray, palette: np.ndarray) -> dict:
    """MSE (per channel value, 8-bit units), PSNR (dB; None when the output equals the input) and
    total squared error of the output colours against the original, over all pixels."""
    diff = table.bgr() - palette[labels].astype(np.float64)
    squared_error = float(table.counts @ (diff * diff).sum(axis=1))
    mse = squared_error / (table.n_pixels * 3)
    psnr = 10.0 * math.log10(255.0**2 / mse) if mse > 0 else None
    return {"mse": mse, "psnr": psnr, "squared_error": squared_error}


def label_image(image: Image, table: ColourTable, labels: np.ndarray) -> np.ndarray:
    """(H, W) cluster label of every pixel, through a 2^24-entry lookup table of colour codes."""
    lut = np.zeros(1 << 24, np.uint8 if labels.max(initial=0) < 256 else np.uint16)
    lut[table.codes] = labels
    return lut[pixel_codes(image.bgr)].reshape(image.shape)


def render(image: Image, table: ColourTable, labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """The output pixels: palette colours, alpha put back untouched, in the source bit depth."""
    out = palette[label_image(image, table, labels)]
    if image.bit_depth == 16:
        out = out.astype(np.uint16) * np.uint16(257)
    if image.alpha is not None:
        out = np.dstack([out, image.alpha])
    return out


def write_output(path: str, image: Image, table: ColourTable, labels: np.ndarray, palette: np.ndarray) -> None:
    """Write the quantised image atomically. An 8-bit PNG without alpha and with at most 256
    colours is written as an indexed (palette) PNG by Pillow: a third of the data to compress, and
    every reader shows the same colours. Anything else goes through OpenCV (format from the
    extension), with alpha and 16 bits kept."""
    if path.lower().endswith(".png") and image.bit_depth == 8 and image.alpha is None and len(palette) <= 256:
        import io

        from PIL import Image as PILImage

        indexed = PILImage.fromarray(label_image(image, table, labels))
        indexed.putpalette(palette[:, ::-1].astype(np.uint8).ravel().tolist())
        buffer = io.BytesIO()
        indexed.save(buffer, format="PNG", compress_level=1)
        write_bytes(path, buffer.getvalue())
        return
    write_image(path, render(image, table, labels, palette))


def write_image(path: str, pixels: np.ndarray) -> None:
    """Encode (format from the extension, PNG by default) and write atomically."""
    ext = "." + path.rsplit(".", 1)[-1] if "." in path.rsplit("/", 1)[-1] else ".png"
    ok, encoded = cv2.imencode(ext, pixels)
    if not ok:
        raise InputError(path, f"OpenCV cannot encode {ext} output")
    write_bytes(path, encoded.tobytes())


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


def finish(area, image_id: str, run: dict, out_image: str | None, out_json: str, extra: dict | None = None,
           image: Image | None = None, table: ColourTable | None = None, published_as: str | None = None) -> dict:
    """Reconstruct one image from its final centroids and write its output image and JSON figures.

    ``run`` is the driver's ``{"iterations": n, "converged": bool}``. The output image is skipped
    for inputs with no pixel grid (seed points files). ``image`` and ``table``, when the caller
    still holds them from ingest, save decoding the source and parsing the points file again.
    ``published_as``: the folder the outputs will be published in (renamed there from a staging
    folder): the JSON names the image there. Returns the figures written to ``out_json``.
    """
    from .driver import history
    from .formats import read_clusters, read_points
    from .storage import read_json, write_json

    meta = read_json(area.meta(image_id))
    iterations = run["iterations"]
    centroids = read_clusters(area.clusters(image_id, iterations))
    table = table if table is not None else read_points(area.points(image_id))
    labels = label_table(table, centroids)
    palette = palette_of(centroids)
    figures = quality(table, labels, palette)
    written = None
    if meta["kind"] == "image" and out_image:
        if image is None:
            image = _read_source(meta)
        write_output(out_image, image, table, labels, palette)
        written = out_image
    result = {
        "image_id": image_id,
        "source": meta["source"],
        "output": os.path.join(published_as, os.path.basename(written)) if written and published_as else written,
        "width": meta["width"],
        "height": meta["height"],
        "distinct_colours": meta["distinct_colours"],
        "k": len(centroids),
        "k_requested": meta["k_requested"],
        "iterations": iterations,
        "converged": run["converged"],
        "centroids_rgb": centroids[:, ::-1].tolist(),
        "initial_centroids_rgb": read_clusters(area.clusters(image_id, 0))[:, ::-1].tolist(),
        "palette_rgb": palette[:, ::-1].tolist(),
        "cluster_pixels": np.bincount(labels, table.counts, minlength=len(centroids)).astype(int).tolist(),
        **figures,
        "history": history(area, image_id, iterations),
        **{key: meta[key] for key in ("frames", "warnings") if key in meta},  # e.g. "first frame of 3 used"
        **(extra or {}),
    }
    write_json(out_json, result)
    return result


def reconstruct_batch(images: list[dict], area_of, staging: str, final: str, extra: dict, log) -> list[dict]:
    """Reconstruct a batch of images (``{"image_id", "stem", "iterations", "converged"}``) into the
    staging folder of a run that will be published as ``final``; one log line each. ``area_of(image
    id)`` gives the work area holding the image's files (fetched from HDFS by the Hadoop engine).
    A failure is reported for its image; the rest of the batch goes on.
    """
    import time

    from .errors import shown

    results = []
    for image in images:
        started = time.perf_counter()
        out_json = os.path.join(staging, image["stem"] + ".json")
        try:
            result = finish(area_of(image["image_id"]), image["image_id"], image,
                            os.path.join(staging, image["stem"] + ".png"), out_json, extra=extra, published_as=final)
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
