"""Colours as 24-bit integers and the weighted colour table.

A colour is packed into ``0xRRGGBB`` (its "code"); the table of an image is its sorted distinct
codes with their pixel counts. Weighted K-means on the table is exactly K-means on all pixels
(Celebi 2011), and a photo has far fewer distinct colours than pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ColourTable:
    """Distinct colours of an image (sorted ``0xRRGGBB`` codes) and how many pixels have each."""

    codes: np.ndarray  # (n,) uint32, sorted, unique
    counts: np.ndarray  # (n,) int64, > 0
    _bgr: np.ndarray | None = field(default=None, repr=False, compare=False)
    _mean: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def n_pixels(self) -> int:
        return int(self.counts.sum())

    def mean(self) -> np.ndarray:
        """Mean colour over all pixels (B, G, R). The weighted sums are exact integers, so this is
        bit-for-bit the mean of the pixel array (scikit-learn centres its data on it). Computed
        once (ingest, the map blocks and reconstruction all need it)."""
        if self._mean is None:
            self._mean = (self.counts.astype(np.float64) @ self.bgr()) / float(self.n_pixels)
            self._mean.flags.writeable = False
        return self._mean

    def bgr(self) -> np.ndarray:
        """The colours as an (n, 3) float64 array in B, G, R order (the order of OpenCV and the
        files). Computed once and shared: read-only."""
        if self._bgr is None:
            self._bgr = codes_to_bgr(self.codes)
            self._bgr.flags.writeable = False
        return self._bgr


def codes_to_bgr(codes: np.ndarray) -> np.ndarray:
    codes = codes.astype(np.uint32, copy=False)
    out = np.empty((len(codes), 3), np.float64)
    out[:, 0] = codes & 0xFF
    out[:, 1] = (codes >> 8) & 0xFF
    out[:, 2] = (codes >> 16) & 0xFF
    return out


def bgr_to_codes(bgr: np.ndarray) -> np.ndarray:
    """(…, 3) integer B, G, R values in 0..255 -> ``0xRRGGBB`` uint32 codes."""
    bgr = bgr.astype(np.uint32)
    return bgr[..., 0] | (bgr[..., 1] << 8) | (bgr[..., 2] << 16)


def pixel_codes(bgr: np.ndarray) -> np.ndarray:
    """Every pixel's ``0xRRGGBB`` code as a flat uint32 array, computed without any float copy.

    OpenCV pads B, G, R to B, G, R, A=255 in one pass; on a little-endian machine those four bytes
    read as one uint32 ``0xFFRRGGBB``.
    """
    import cv2  # imported here: MapReduce tasks use this module without OpenCV

    bgra = cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2BGRA)
    packed = bgra.view(np.uint32).reshape(-1)
    if np.little_endian:
        packed &= np.uint32(0xFFFFFF)
        return packed
    return bgr_to_codes(bgr).reshape(-1)  # pragma: no cover - big-endian machines


def colour_table(bgr: np.ndarray) -> ColourTable:
    """The weighted colour table of an 8-bit B, G, R image (a 12 MP photo in about 0.2 s)."""
    codes = pixel_codes(bgr)  # a fresh array: sorted in place (np.unique would copy it first)
    codes.sort()
    starts = np.flatnonzero(np.concatenate(([True], codes[1:] != codes[:-1])))
    counts = np.diff(np.append(starts, len(codes)))
    return ColourTable(codes=codes[starts], counts=counts.astype(np.int64))
