"""Run parameters, validated once at the edge (CLI, DAG params) with messages naming the parameter.

Everything downstream trusts a :class:`Params`; nothing re-checks.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import asdict, dataclass

from .errors import shown
from .settings import (DEFAULT_DELTA, DEFAULT_K, DEFAULT_MAX_ITER, DEFAULT_MAX_K_AUTO, DITHER_METHODS,  # noqa: F401
                       INIT_METHODS, K_AUTO, MAX_DELTA, MAX_DITHER_K, MAX_INIT_FILE_BYTES, MAX_ITER, MAX_K,
                       MAX_QUALITY_DB, MAX_SEED, MIN_QUALITY_DB, PALETTE_MODES)


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
    #: ``k`` "auto": (MIN, MAX) PSNR in dB; None for a fixed ``k``. With it, ``k`` is ``max_k``.
    quality: tuple | None = None
    max_k: int = DEFAULT_MAX_K_AUTO  # the largest K the search tries (k "auto" only)
    #: pinned colours, B, G, R integers: the first centroids of every palette, never moved
    keep: tuple = ()
    skip_if_larger: bool = False  # no output image when it would be larger than its input file

    @property
    def auto(self) -> bool:
        """K chosen per image by the quality search (kmeans_ops.search)."""
        return self.quality is not None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict) -> "Params":
        """The Params of :meth:`to_json` (lists back as tuples)."""
        values = dict(values)
        if values.get("quality") is not None:
            values["quality"] = tuple(values["quality"])
        values["keep"] = tuple(tuple(c) for c in values.get("keep") or ())
        return cls(**values)


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


def iterations_per_task(value) -> int:
    """The DAG's ``iterations_per_task``: K-means iterations one ``mapreduce`` task runs back to
    back (embedded engine), an integer between 1 and MAX_ITER. It changes how the iterations are
    split into Airflow tasks, never a result, so it is not one of :class:`Params`."""
    return integer("iterations_per_task", value, 1, MAX_ITER)


def validate(k=DEFAULT_K, init="kmeans++", seed=0, max_iter=DEFAULT_MAX_ITER, delta=DEFAULT_DELTA,
             palette="image", labels=False, dither="none", given: dict | None = None, quality=None,
             max_k=DEFAULT_MAX_K_AUTO, keep=None, skip_if_larger=False) -> Params:
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
    - ``k`` "auto" with ``quality`` "MIN-MAX" (PSNR in dB, MIN <= MAX, each between 1 and 100) and
      ``max_k`` (2 to MAX_K): per image the fewest colours in 2..max_k reaching MAX, refused below
      MIN (kmeans_ops.search). Each palette of its own: ``palette`` "image", ``init`` kmeans++ or
      random, no dithering (the search measures undithered PSNR). ``quality`` without k "auto"
      is refused; ``max_k`` is ignored then.
    - ``keep``: pinned colours, every one in every output palette and never moved: None or empty
      for none, ``#rrggbb`` values (a string, separated by commas or spaces, or a list of them),
      or the path of a clusters file (whole 0-255 B, G, R values). Fewer than ``k`` (``max_k``
      with k "auto"), all different; not with a palette file or an ``init`` file.
    - ``skip_if_larger``: true or false; true: an image whose quantised PNG would be larger than
      its input file gets no output image (its JSON says ``skipped``).
    """
    given = given or {}
    auto = isinstance(k, str) and k.strip().lower() == K_AUTO
    if auto:
        quality = _quality(quality)
        max_k = integer("max_k", max_k, 2, MAX_K)
        k = max_k
    elif quality not in (None, ""):
        raise ParamError(f"quality needs k 'auto' (the quality decides K), got k {shown(str(k))}")
    else:
        quality = None
        max_k = DEFAULT_MAX_K_AUTO
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
    if auto:
        _auto_alone(init, palette, dither)
    pinned = _keep(keep, given)
    if pinned:
        if palette not in PALETTE_MODES or init not in INIT_METHODS:
            which = "palette" if palette not in PALETTE_MODES else "init"
            raise ParamError(f"keep and {which} disagree: a {which} file gives every colour already; "
                             f"put the pinned colours in it, or use keep with {which} "
                             f"{'image or run' if which == 'palette' else 'kmeans++ or random'}")
        if len(pinned) >= k:
            raise ParamError(f"keep and {'max_k' if auto else 'k'} disagree: {len(pinned)} pinned colours leave "
                             f"no colour to cluster with {'max_k' if auto else 'k'} {k}; set it to {len(pinned) + 1} "
                             f"or more")
    if not isinstance(skip_if_larger, bool):
        raise ParamError(f"skip_if_larger must be true or false, got {skip_if_larger!r}")
    return Params(k=k, init=init, seed=seed, max_iter=max_iter, delta=delta, palette=palette, labels=labels,
                  dither=dither, quality=quality, max_k=max_k, keep=pinned, skip_if_larger=skip_if_larger)


def _quality(value) -> tuple[float, float]:
    """``quality`` "MIN-MAX" (PSNR dB) as (MIN, MAX); ParamError naming it otherwise."""
    bounds = f"between {MIN_QUALITY_DB:g} and {MAX_QUALITY_DB:g} dB"
    if value is None or value == "":
        raise ParamError(f"k 'auto' needs quality MIN-MAX (PSNR in dB, {bounds}), e.g. 28-32")
    text = shown(str(value))
    parts = str(value).strip().split("-") if isinstance(value, str) else []
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise ParamError(f"quality must be MIN-MAX in PSNR dB, e.g. 28-32, got {text}") from None
    if not all(math.isfinite(v) and MIN_QUALITY_DB <= v <= MAX_QUALITY_DB for v in (low, high)) or low > high:
        raise ParamError(f"quality must be MIN-MAX with MIN <= MAX, both {bounds}, got {text}")
    return low, high


def _auto_alone(init, palette, dither) -> None:
    """k 'auto' chooses K per image: refused with a shared or fixed palette, an init file (its K is
    fixed) and dithering (the search measures the undithered PSNR)."""
    if palette != "image":
        raise ParamError(f"k 'auto' and palette disagree: the search chooses K for each image's own palette; "
                         f"set palette to 'image' or give k")
    if init not in INIT_METHODS:
        raise ParamError("k 'auto' and init disagree: an init file fixes K; use init kmeans++ or random")
    if dither != "none":
        raise ParamError("k 'auto' and dither disagree: the search measures the PSNR of undithered output; "
                         "set dither to 'none' or give k")


_HEX = "0123456789abcdefABCDEF"


def _keep(value, given: dict) -> tuple:
    """The pinned colours of ``keep`` as ((B, G, R), ...) integers (see :func:`validate`)."""
    if value is None or (isinstance(value, (str, list, tuple)) and not value):
        return ()
    if isinstance(value, str) and not value.lstrip().startswith("#"):
        colours = _keep_file(value, shown(given.get(value, value)))
    else:
        items = value.replace(",", " ").split() if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ParamError(f"keep must be #rrggbb colours or the path of a clusters file, got {value!r}")
        colours = []
        for item in items:
            text = item.strip() if isinstance(item, str) else ""
            if len(text) != 7 or text[0] != "#" or any(c not in _HEX for c in text[1:]):
                raise ParamError(f"keep: {shown(str(item))} is not a #rrggbb colour")
            r, g, b = (int(text[i : i + 2], 16) for i in (1, 3, 5))
            colours.append((b, g, r))
    if len(colours) > MAX_K:
        raise ParamError(f"keep: {len(colours)} pinned colours; at most {MAX_K}")
    if len(set(colours)) != len(colours):
        twice = next(c for c in colours if colours.count(c) > 1)
        raise ParamError(f"keep: colour #{twice[2]:02x}{twice[1]:02x}{twice[0]:02x} is given twice")
    return tuple(colours)


def _keep_file(path: str, label: str) -> list:
    """The pinned colours of a clusters file (whole 0-255 values); ParamError naming ``keep`` and
    the file (never its content)."""
    from .errors import InputError
    from .formats import parse_clusters

    if not _readable_file(path):
        raise ParamError(f"keep must be #rrggbb colours or a readable clusters file, got {label}")
    with open(path, "rb") as handle:
        data = handle.read(MAX_INIT_FILE_BYTES + 1)
    if len(data) > MAX_INIT_FILE_BYTES:
        raise ParamError(f"keep: {label} is too large for a clusters file (at most {MAX_INIT_FILE_BYTES} bytes)")
    try:
        rows = parse_clusters(data, label)
    except InputError as err:
        raise ParamError(f"keep: not a usable clusters file: {err}") from None
    colours = []
    for number, row in enumerate(rows.tolist(), start=1):
        if not all(float(v).is_integer() and 0 <= v <= 255 for v in row):
            raise ParamError(f"keep: clusters file {label}: centroid {number} is not a colour of whole "
                             f"values 0-255 (a pinned colour is written exactly)")
        colours.append(tuple(int(v) for v in row))
    return colours


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
