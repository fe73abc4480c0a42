"""Shared fixtures: real photographs shipped by scikit-learn and scikit-image, written as files."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# name -> loader returning an RGB uint8 array
PHOTOS = {
    "china": lambda: __import__("sklearn.datasets", fromlist=["x"]).load_sample_image("china.jpg"),
    "flower": lambda: __import__("sklearn.datasets", fromlist=["x"]).load_sample_image("flower.jpg"),
    "astronaut": lambda: __import__("skimage.data", fromlist=["x"]).astronaut(),
    "coffee": lambda: __import__("skimage.data", fromlist=["x"]).coffee(),
    "chelsea": lambda: __import__("skimage.data", fromlist=["x"]).chelsea(),
    "rocket": lambda: __import__("skimage.data", fromlist=["x"]).rocket(),
}


def photo_bgr(name: str) -> np.ndarray:
    return np.ascontiguousarray(PHOTOS[name]()[..., ::-1])


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory):
    """A folder of real photos as JPEG (china, flower: as shipped) and PNG files."""
    import cv2

    folder = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        ext = ".jpg" if name in ("china", "flower") else ".png"
        cv2.imwrite(str(folder / f"{name}{ext}"), photo_bgr(name))
    return folder


def run_cli(*argv) -> tuple[int, str]:
    """Run ``python -m kmeans_ops`` in-process; returns (exit status, stderr text)."""
    import contextlib
    import io

    from kmeans_ops.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            status = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse errors
            status = exc.code
    return status, err.getvalue()
