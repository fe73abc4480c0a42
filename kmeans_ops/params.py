"""Run parameters, validated once at the edge (CLI, DAG params) with messages naming the parameter.

Everything downstream trusts a :class:`Params`; nothing re-checks.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import asdict, dataclass

from .errors import shown
from .settings import (DEFAULT_DELTA, DEFAULT_K, DEFAULT_MAX_ITER, DITHER_METHODS, INIT_METHODS, MAX_DELTA,  # noqa: F401
                       MAX_DITHER_K, MAX_INIT_FILE_BYTES, MAX_ITER, MAX_K, MAX_SEED, PALETTE_MODES)


class ParamError(ValueError):
    """A parameter is out of range; the message names it."""


@dataclass(frozen=True)
class Params:
    k: int = DEFAULT_K
    init: str = "kmeans++"  # "kmeans++", "random", or the path of a clusters file (seed format)
    seed: int = 0
    max_iter: int = DEFAULT_MAX_ITER
    delta: float = DEFAULT_DELTA
    palette: str = "image"  # "image", "run", or the path of a clusters file (a fixed palette)
    labels: bool = False  # also write <stem>-labels.png, each pixel's cluster index
    dither: str = "none"  # "none" or "floyd-steinberg"

    def to_json(self) -> dict:
        return asdict(self)


def integer(name: str, value, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, str, float)):
        raise ParamError(f"{name} must be an integer, got {value!r}")
    try:
        as_float = float(value)
    except ValueError:
        raise ParamError(f"{name} must be an integer, got {value!r}") from None
    if not math.isfinite(as_float) or as_float != int(as_float):
        raise ParamError(f"{name} must be an integer, got {value!r}")
    number = int(as_float)
    if number < minimum or (maximum is not None and number > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ParamError(f"{name} must be {bound}, got {number}")
    return number


def validate(k=DEFAULT_K, init="kmeans++", seed=0, max_iter=DEFAULT_MAX_ITER, delta=DEFAULT_DELTA,
             palette="image", labels=False, dither="none", given: dict | None = None) -> Params:
    """Check every run parameter and return them as a :class:`Params`.

    - ``k``: integer >= 1 (an image with fewer distinct colours than ``k`` is clustered with as many
      clusters as it has colours; see README). ``None``: the number of centroids of an ``init``
      file, else DEFAULT_K.
    - ``max_iter``: integer between 1 and 1000.
    - ``delta``: a centroid shift in colour units, 0 <= delta <= 32; 0 means "until no centroid moves".
    - ``seed``: integer >= 0.
    - ``init``: "kmeans++", "random", or the path of a readable clusters file. The file is read
      here, once: a bad file, or one holding a number of centroids other than ``k``, is a
      ParamError naming ``init`` (and ``k``), the file and the line, never its content.
    - ``palette``: "image" (each image its own palette), "run" (one palette for all the images of
      the run) or the path of a readable clusters file, a fixed palette applied with no
      iterations. The file goes through the same checks as an ``init`` file, its K must equal
      ``k`` (``k`` None: its K), and a disagreement names ``palette`` and ``k``.
    - ``labels``: true or false (also write each image's label map).
    - ``dither``: "none" or "floyd-steinberg"; dithering needs k <= 256 (a larger k is refused,
      naming ``dither`` and ``k``).
    - ``given``: how the user wrote each file path (resolved path -> as given): messages name the
      path as given, never what it resolved to. A file that does not exist and one that cannot be
      read get the same message.
    """
    given = given or {}
    if k is not None:
        k = integer("k", k, 1, MAX_K)
    max_iter = integer("max_iter", max_iter, 1, MAX_ITER)
    seed = integer("seed", seed, 0, MAX_SEED)
    try:
        delta = float(delta)
    except (TypeError, ValueError):
        raise ParamError(f"delta must be a number, got {delta!r}") from None
    if not math.isfinite(delta) or delta < 0 or delta > MAX_DELTA:
        raise ParamError(
            f"delta must be between 0 and {MAX_DELTA:g} colour units (largest centroid shift allowed "
            f"at convergence), got {delta!r}: a larger tolerance would stop before clustering"
        )
    if not isinstance(init, str) or not init or (init not in INIT_METHODS and not _readable_file(init)):
        shown_init = shown(given.get(init, init)) if isinstance(init, str) and init else repr(init)
        raise ParamError(f"init must be 'kmeans++', 'random' or a readable clusters file, got {shown_init}")
    if not isinstance(palette, str) or not palette or (palette not in PALETTE_MODES and not _readable_file(palette)):
        shown_palette = shown(given.get(palette, palette)) if isinstance(palette, str) and palette else repr(palette)
        raise ParamError(f"palette must be 'image', 'run' or a readable clusters file, got {shown_palette}")
    k_from = None  # the file k was read from when it was not given
    if palette not in PALETTE_MODES:
        k_from = None if k is not None else "palette"
        k = _k_of_clusters_file(palette, k, "palette", shown_as=given.get(palette))
    if init not in INIT_METHODS:
        k = _k_of_clusters_file(init, k, "init", k_from, shown_as=given.get(init))
    k = DEFAULT_K if k is None else k
    labels, dither = _output_options(labels, dither, k)
    return Params(k=k, init=init, seed=seed, max_iter=max_iter, delta=delta,
                  palette=palette, labels=labels, dither=dither)


def _output_options(labels, dither, k: int) -> tuple[bool, str]:
    """``labels`` (a bool) and ``dither`` (one of DITHER_METHODS, and then k at most MAX_DITHER_K),
    checked; ParamError naming the parameter(s) otherwise."""
    if not isinstance(labels, bool):
        raise ParamError(f"labels must be true or false, got {labels!r}")
    if not isinstance(dither, str) or dither not in DITHER_METHODS:
        got = shown(dither) if isinstance(dither, str) and dither else repr(dither)
        raise ParamError(f"dither must be {' or '.join(repr(m) for m in DITHER_METHODS)}, got {got}")
    if dither != "none" and k > MAX_DITHER_K:
        raise ParamError(f"dither and k disagree: dither '{dither}' works with at most {MAX_DITHER_K} colours "
                         f"but k is {k}; set dither to 'none' or k to {MAX_DITHER_K} or less")
    return labels, dither


def _readable_file(path: str) -> bool:
    """Whether ``path`` is a regular file this process can open for reading (no content is read)."""
    try:
        with open(path, "rb"):
            pass
        return os.path.isfile(path)
    except (OSError, ValueError):
        return False


def _k_of_clusters_file(path: str, k: int | None, name: str = "init", k_from: str | None = None,
                        shown_as: str | None = None) -> int:
    """The number of centroids in the clusters file ``path``, which must equal ``k`` when given.

    Every problem is a ParamError naming the parameter ``name`` (``init`` or ``palette``): an
    unreadable, oversized or malformed file (the file and line, from formats.read_clusters, which
    never quotes content), too many centroids, or a count that disagrees with ``k`` (then the
    parameter ``k`` came from is named too: ``k``, or ``k_from`` when it was read from another file).
    """
    from .errors import InputError
    from .formats import parse_clusters

    label = shown(shown_as or path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_INIT_FILE_BYTES + 1)
    except (OSError, ValueError):
        raise ParamError(f"{name}: cannot read the clusters file {label}") from None
    if len(data) > MAX_INIT_FILE_BYTES:
        raise ParamError(f"{name}: {label} is too large for a clusters file "
                         f"(at most {MAX_INIT_FILE_BYTES} bytes: K <= {MAX_K} lines 'label B G R')")
    try:
        found = len(parse_clusters(data, shown_as or path))
    except InputError as err:
        raise ParamError(f"{name}: not a usable clusters file: {err}") from None
    if found > MAX_K:
        raise ParamError(f"{name}: clusters file {label} holds {found} centroids; k is at most {MAX_K}")
    if k is not None and k != found:
        if k_from:
            raise ParamError(f"{name} and {k_from} disagree: clusters file {label} holds {found} centroids "
                             f"but the {k_from} file holds {k}")
        raise ParamError(f"{name} and k disagree: clusters file {label} holds {found} centroids but k is {k}; "
                         f"set k to {found}")
    return found
