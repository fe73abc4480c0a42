"""The per-run HTML report: one self-contained page (inline CSS, inline SVG charts, images as
base64 ``data:`` URIs; no JavaScript, nothing fetched) that a person reads instead of the logs.

The page is the Jinja2 template ``templates/report.html.j2`` (with ``_macros.html.j2`` and
``report.css``); this module only prepares its data, in small pure functions:

- :func:`write_report` writes the page (atomically) from the per-image result dicts written by
  :func:`kmeans_ops.reconstruct.finish`, the failures and the run's description;
  :func:`render_report` returns it as a string; :func:`report_context` is what the template gets.
- :func:`thumbnail_data_uri` makes the before / after thumbnails; :func:`line_chart` draws a
  convergence chart with matplotlib, as SVG the page embeds; :func:`run_times` the run's wall time
  and time per stage.
- :func:`shared_palettes` groups the images that share a palette (``palette`` "run" or a palette
  file): the page shows each shared palette once, near the top, and in each image's section the
  image's share of each of its colours instead of a palette of its own.
- :func:`label_link` is the relative link to an image's label map (``<stem>-labels.png``), which
  is published in the report's folder.

Escaping: the environment autoescapes every value, with :func:`html.escape` (so ``'`` is written
``&#x27;``, as the page always was), except the charts' SVG, which matplotlib writes (escaping its
text) from numbers and this module's own labels. File names, messages and warnings are also passed through
:func:`kmeans_ops.errors.shown`, so each is shown on one line. Nothing of a file's content is shown.
Palette colours are written as lower-case hex codes (``#a1b2c3``). Importing this module is cheap:
Jinja2 is imported to render, matplotlib to draw charts, OpenCV and NumPy only to make thumbnails.
"""

from __future__ import annotations

import base64
import functools
import io
import math
import os
import re
from datetime import datetime
from html import escape
from urllib.parse import quote

from .errors import shown

#: Largest side, in pixels, of the thumbnails embedded in the report.
THUMB_SIDE = 480

#: Parameters shown in this order (others after them).
PARAM_ORDER = ("k", "init", "seed", "max_iter", "delta")

#: The folder of the report's templates, inside the package (the report is rendered where
#: publish() runs, never on Hadoop nodes, so the zip shipped to them does not carry it).
TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")

#: Keys of the ``run`` dict shown in their own place; any other plain value is listed as is.
KNOWN_RUN_KEYS = frozenset({"run_id", "dag_id", "engine", "params", "started", "finished", "output",
                            "wall_seconds", "stages"})

NOT_RECORDED = "not recorded"

#: How each ``dither`` value reads in the report ("none" is not shown).
DITHER_NAMES = {"floyd-steinberg": "Floyd–Steinberg"}


# --------------------------------------------------------------------------------------------
# Thumbnails


def thumbnail_data_uri(image_path: str, max_side: int = 320) -> str | None:
    """A ``data:`` URI of the image at ``image_path`` scaled down to at most ``max_side`` pixels.

    Decoded with OpenCV, every channel and depth kept (``IMREAD_UNCHANGED``), except JPEGs, which
    are decoded like ingest does (``IMREAD_COLOR``, which applies the EXIF orientation) so the
    "before" thumbnail has the orientation of the output. 16-bit (and float) samples are brought
    to 8 bits; 1, 2 (grey + alpha), 3 and 4 channels are handled. Downsized with ``INTER_AREA``.
    Encoded as PNG when the image has alpha, JPEG quality 85 otherwise. None when unreadable
    (missing file, not an image, e.g. a seed points ``.txt``).
    """
    import cv2
    import numpy as np

    try:
        data = np.fromfile(os.fspath(image_path), dtype=np.uint8)
    except (OSError, ValueError, TypeError):
        return None
    if data.size == 0:
        return None
    is_jpeg = data.size >= 3 and data[0] == 0xFF and data[1] == 0xD8 and data[2] == 0xFF
    try:
        pixels = cv2.imdecode(data, cv2.IMREAD_COLOR if is_jpeg else cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    if pixels is None or pixels.size == 0:
        return None
    pixels = _to_8bit(pixels, np)
    if pixels is None:
        return None
    if pixels.ndim == 3:
        channels = pixels.shape[2]
        if channels == 1:
            pixels = pixels[..., 0]
        elif channels == 2:  # grey + alpha
            grey = np.ascontiguousarray(pixels[..., 0])
            pixels = np.dstack([grey, grey, grey, pixels[..., 1]])
        elif channels > 4:
            pixels = pixels[..., :3]
    pixels = np.ascontiguousarray(pixels)
    height, width = pixels.shape[:2]
    scale = max_side / max(height, width)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    has_alpha = pixels.ndim == 3 and pixels.shape[2] == 4
    try:
        if has_alpha:
            ok, encoded = cv2.imencode(".png", pixels)
            mime = "image/png"
        else:
            ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 85])
            mime = "image/jpeg"
    except cv2.error:
        return None
    if not ok:
        return None
    return f"data:{mime};base64,{base64.b64encode(encoded.tobytes()).decode('ascii')}"


def _to_8bit(pixels, np):
    """uint8 as is; uint16 -> round(v / 257); float -> [0, 1] (or [0, 255] if larger) to 8 bits."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == np.uint16:
        return ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if pixels.dtype.kind == "f":
        values = np.nan_to_num(pixels.astype(np.float64))
        top = 1.0 if values.max(initial=0.0) <= 1.0 else 255.0
        return np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
    if pixels.dtype.kind in "iu":  # other integer depths: stretch the range to 0..255
        values = pixels.astype(np.float64)
        lo, hi = values.min(), values.max()
        if hi <= lo:
            return np.zeros(pixels.shape, np.uint8)
        return np.rint((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    return None


# --------------------------------------------------------------------------------------------
# Formatting helpers (plain strings: the template escapes them)


def _num(value) -> float | None:
    """``value`` as a finite float, or None."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _line(value) -> str:
    """Any value as one printable line ("" for None): file names, messages, ids."""
    return "" if value is None else shown(value if isinstance(value, (str, bytes, os.PathLike)) else str(value))


def _hex(rgb) -> str | None:
    try:
        r, g, b = (int(min(255, max(0, round(float(c))))) for c in rgb)
    except (TypeError, ValueError):
        return None
    return f"#{r:02x}{g:02x}{b:02x}"


def _ink(hex_colour: str) -> str:
    """Black or white text, whichever reads better on ``hex_colour`` (WCAG relative luminance)."""
    def channel(c):
        c /= 255.0
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    luminance = 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)
    return "#111" if luminance > 0.179 else "#fff"


def duration(seconds) -> str:
    """``2.50 s``, ``12.3 s``, ``1 min 05 s``, ``2 h 03 min``; ``—`` when unknown."""
    s = _num(seconds)
    if s is None:
        return "—"
    if s < 10:
        return f"{s:.2f} s"
    if s < 60:
        return f"{s:.1f} s"
    minutes, s = divmod(round(s), 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _int(value) -> str:
    n = _num(value)
    return "—" if n is None else f"{int(n):,}".replace(",", "\u202f")


def _fixed(value, digits=2) -> str:
    n = _num(value)
    return "—" if n is None else f"{n:,.{digits}f}".replace(",", "\u202f")


def _size(r: dict) -> str:
    if _num(r.get("width")) is None or _num(r.get("height")) is None:
        return "—"
    return f'{_int(r.get("width"))} × {_int(r.get("height"))}'


def _psnr(value) -> str:
    n = _num(value)
    return "∞ (lossless)" if n is None else f"{n:.2f} dB"


def _name(result: dict) -> str:
    """The image's file name (one line), or its id."""
    source = result.get("source")
    if source:
        return _line(os.path.basename(str(source)) or str(source))
    return _line(result.get("image_id") or "image")


def _plain(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else repr(value)
    return str(value)


def _param_pairs(params: dict) -> list[tuple[str, str]]:
    """``(name, value)`` of the run's parameters, :data:`PARAM_ORDER` first; ``dither`` only when
    it is not "none" (the default: no error diffusion)."""
    keys = [k for k in PARAM_ORDER if k in params] + sorted(k for k in params if k not in PARAM_ORDER)
    return [(_line(k), _line(_plain(params[k]))) for k in keys if not (k == "dither" and params[k] in (None, "none"))]


def _dither(value) -> str:
    """How a ``dither`` value reads: "" for "none" (or missing), "Floyd–Steinberg", else as is."""
    if value in (None, "", "none"):
        return ""
    return DITHER_NAMES.get(value, _line(value))


def _parse_time(text):
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None


def _common(results: list[dict], key: str):
    """The value of ``key`` if every result that has it agrees, else None."""
    values = [r[key] for r in results if r.get(key) is not None]
    if values and all(v == values[0] for v in values):
        return values[0]
    return None


def _warnings(r: dict) -> list[str]:
    """The image's warnings (e.g. "first frame of 3 used"), each one line."""
    warnings = r.get("warnings")
    if isinstance(warnings, str):
        warnings = [warnings]
    if not isinstance(warnings, (list, tuple)):
        return []
    return [_line(w) for w in warnings if w not in (None, "")]


# --------------------------------------------------------------------------------------------
# Time: the run's wall time and the time per stage


def _elapsed(started, finished) -> float | None:
    """Seconds from ``started`` to ``finished`` (ISO 8601 strings), None if either is unusable."""
    start, end = _parse_time(started), _parse_time(finished)
    if start is None or end is None:
        return None
    try:
        seconds = (end - start).total_seconds()
    except TypeError:  # one has a time zone, the other not
        return None
    return seconds if seconds >= 0 else None


def _stage_entries(stages) -> list[tuple[str, float | None, float | None, float | None]]:
    """``[[name, seconds], ...]`` or ``[[name, seconds, waiting, running], ...]`` as ``(name,
    seconds, waiting, running)``, unknown or negative values None; malformed entries are dropped."""
    if not isinstance(stages, (list, tuple)):
        return []
    entries = []
    for entry in stages:
        if isinstance(entry, (list, tuple)) and len(entry) in (2, 4) and entry[0] not in (None, ""):
            values = [_num(v) for v in entry[1:]] + [None] * (4 - len(entry))
            entries.append((_line(entry[0]), *(v if v is None or v >= 0 else None for v in values)))
    return entries


def run_times(run: dict) -> dict:
    """The run's total (wall) time and its time per stage, ready to show.

    The total is ``run["wall_seconds"]`` (the DAG run's start to publication) or else the time from
    ``started`` to ``finished``; never a sum of per-image times. ``stages`` (``[[name, seconds],
    ...]`` in pipeline order) become rows with their share of the total (of the stages' sum when the
    total is unknown or smaller); the wall time not spent in any stage (scheduling, waiting) is a
    row of its own. A stage given as ``[name, seconds, waiting, running]`` (from the run's task
    instances, kmeans_ops.stagetimes) also shows its waiting and running time (``split``: some
    stage has them). Unknown values read "not recorded".
    """
    total, note = _num(run.get("wall_seconds")), "wall clock, from the run's start to publication"
    if total is None or total < 0:
        total, note = _elapsed(run.get("started"), run.get("finished")), "wall clock, from started to finished"
    if total is None:
        note = ""
    entries = _stage_entries(run.get("stages"))
    staged = sum(s for _, s, _, _ in entries if s is not None)
    rows = [{"name": name, "seconds": s, "text": duration(s) if s is not None else NOT_RECORDED, "other": False,
             "waiting": duration(waiting), "running": duration(running)}
            for name, s, waiting, running in entries]
    if rows and total is not None and total - staged > 0.005 * total:
        rows.append({"name": "outside the stages (scheduling, waiting)", "seconds": total - staged,
                     "text": duration(total - staged), "other": True, "waiting": duration(total - staged),
                     "running": duration(None)})
    base = total if total is not None and total >= staged else staged
    for row in rows:
        share = 100 * row["seconds"] / base if base and row["seconds"] is not None else None
        row["share"] = "" if share is None else f"{share:.0f} %"
        row["width"] = "0" if share is None else f"{share:.2f}"
    split = any(waiting is not None or running is not None for _, _, waiting, running in entries)
    return {"total": total, "text": duration(total) if total is not None else NOT_RECORDED, "note": note,
            "stages": rows, "split": split}


# --------------------------------------------------------------------------------------------
# Charts: drawn by matplotlib, as inline SVG

#: Size of a chart, in CSS pixels (the SVG's viewBox: matplotlib writes SVG at 72 dpi, 1 pt = 1 px).
CHART_SIZE = (520, 250)

#: The charts' look as matplotlib settings: the page's colours and sizes. Text stays text
#: (``svg.fonttype`` "none": small, selectable) in one font that matplotlib ships, so its metrics
#: and the bytes written are the same on every machine; a browser without it uses its sans-serif.
CHART_STYLE = {
    "svg.fonttype": "none", "text.parse_math": False,  # a "$" is a dollar sign
    "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"], "font.size": 11,
    "axes.titlesize": 13, "axes.titleweight": "bold", "axes.titlecolor": "#1f2933", "axes.titlelocation": "left",
    "axes.titlepad": 9, "axes.labelsize": 12, "axes.labelcolor": "#3e4c59", "axes.labelpad": 5,
    "axes.edgecolor": "#9aa5b1", "axes.linewidth": 1, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "axes.grid.axis": "y", "axes.axisbelow": True, "grid.color": "#edf0f3", "grid.linewidth": 1,
    "axes.xmargin": 0.03, "axes.ymargin": 0.08, "axes.formatter.useoffset": False,
    "xtick.color": "#9aa5b1", "xtick.labelcolor": "#616e7c", "xtick.major.size": 4, "xtick.major.width": 1,
    "ytick.labelcolor": "#616e7c", "ytick.major.size": 0, "ytick.major.pad": 6,
    "lines.linewidth": 2, "lines.solid_joinstyle": "round",
}
#: Re-seeded iterations (a triangle above the point, a dotted guide) and the ``delta`` line.
RESEED_COLOUR, GUIDE_COLOUR, DELTA_COLOUR = "#ea580c", "#fdba74", "#b91c1c"


def line_chart(points: list[tuple[int, float]], *, key: str, title: str, y_label: str, colour: str,
               marks: set | frozenset = frozenset(), hline: float | None = None, hline_label: str = "",
               y_from_zero: bool = False, value_format=None, x_label: str = "iteration") -> dict:
    """A line chart of ``(iteration, value)`` points drawn by matplotlib: ``{"title", "svg",
    "points"}``, ``svg`` the SVG element to embed (markup), ``points`` how many points it shows.

    One dot per point with its tooltip (``iteration 3: 1,234``); iterations in ``marks`` get a
    triangle above their dot and a dotted guide (clusters re-seeded); ``hline`` is a dashed line
    labelled ``hline_label``; y values of 10,000 and more read 120k, 3.5M; ``x_label`` names the x
    axis and starts each tooltip (``K 24: 32.08``: the quality search's chart). ``key``, unique on the
    page, salts the SVG's ids (several charts on one page). "no data" when no point has a number.
    No pyplot: a Figure of its own, the style applied while it draws (``rc_context``).
    """
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import EngFormatter, MaxNLocator, StrMethodFormatter
    from matplotlib.transforms import offset_copy

    fmt = value_format or (lambda v: f"{v:.4g}")
    points = [(int(x), float(y)) for x, y in points if _num(y) is not None and _num(x) is not None]
    width, height = CHART_SIZE
    tips = {}  # gid of a marker line -> the tooltip of each of its points
    with matplotlib.rc_context(dict(CHART_STYLE, **{"svg.hashsalt": key})):
        fig = Figure(figsize=(width / 72, height / 72))
        fig.subplots_adjust(left=64 / width, right=1 - 16 / width, bottom=44 / height, top=1 - 30 / height)
        ax = fig.add_subplot()
        ax.set_title(title)
        if not points:
            ax.set_axis_off()
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="#3e4c59")
        else:
            xs, ys = [x for x, _ in points], [y for _, y in points]
            text = [f"{x_label} {x}: {fmt(y)}" + (" — clusters re-seeded" if x in marks else "") for x, y in points]
            reseeded = [(x, y, tip) for (x, y), tip in zip(points, text) if x in marks]
            ax.set_xlabel(x_label)
            ax.set_ylabel(y_label)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=8, steps=[1, 2, 5, 10], integer=True, min_n_ticks=1))
            top = max(abs(y) for y in ys + ([hline] if hline is not None else []))
            if top >= 1e4:
                ax.yaxis.set_major_formatter(EngFormatter(sep=""))  # 120k, 3.5M
            elif 0 < top < 1e-3:
                ax.yaxis.set_major_formatter(StrMethodFormatter("{x:.3g}"))  # 2e-13, no multiplier above the axis
            for x, _, _ in reseeded:
                ax.axvline(x, color=GUIDE_COLOUR, linewidth=1, linestyle=(0, (2, 3)))
            if hline is not None:
                ax.axhline(hline, color=DELTA_COLOUR, linewidth=1.3, linestyle=(0, (6, 4)))
                ax.annotate(hline_label, (0, hline), xycoords=ax.get_yaxis_transform(), xytext=(32, 5),
                            textcoords="offset points", color=DELTA_COLOUR)
            ax.plot(xs, ys, color=colour, marker="o", markersize=6 if len(points) <= 60 else 3,
                    markeredgewidth=0, clip_on=False, gid=f"{key}-points")
            tips[f"{key}-points"] = text
            if min(ys) >= 0 and (y_from_zero or ax.get_ylim()[0] < 0):  # no negative squared error or shift
                ax.set_ylim(bottom=0)
            if reseeded:  # added as an artist: the limits are the data's alone
                ax.add_artist(Line2D([x for x, _, _ in reseeded], [y for _, y, _ in reseeded], linestyle="none",
                                     marker="v", markersize=11, markeredgewidth=0, color=RESEED_COLOUR,
                                     transform=offset_copy(ax.transData, fig=fig, y=16, units="points"),
                                     clip_on=False, gid=f"{key}-reseeded"))
                tips[f"{key}-reseeded"] = [tip for _, _, tip in reseeded]
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    return {"title": title, "svg": _Escaped(_inline_svg(buffer.getvalue(), tips)), "points": len(points)}


def _inline_svg(svg: str, tips: dict[str, list[str]]) -> str:
    """matplotlib's SVG made ready to sit in the page: without the XML prolog, the style element
    (report.css has its rule), the ids of its groups (``figure_1``, ``axes_1``...: the same in
    every chart, referenced by nothing), its no-op rotations and its indentation; each marker of
    the lines in ``tips`` (by gid) with its tooltip, in the order of the points."""
    svg = svg[re.search(r"<(?![?!])", svg).start():]  # the root element, after <?xml?> and <!DOCTYPE>
    svg = re.sub(r"\s*<defs>\s*<style[^<]*</style>\s*</defs>", "", svg, count=1)
    svg = re.sub(r' id="[a-z][a-z0-9.]*_[0-9]+"', "", svg)
    svg = re.sub(r' transform="rotate\(-0 [^"]*\)"|\s*<g/>', "", svg)  # no-op rotations, empty groups
    svg = re.sub(r"\n\s+", "\n", svg)  # the indentation (no text element spans lines)
    for gid, texts in tips.items():
        start = svg.find(f'<g id="{gid}">')
        end = svg.find("<g id=", start + 1)  # the next group with an id
        end = len(svg) if end < 0 else end
        group = svg[start:end]
        if start < 0 or len(re.findall(r"<use [^>]*/>", group)) != len(texts):
            continue  # never so (every point is in the figure): the points without tooltips
        titles = iter(texts)
        group = re.sub(r"<use ([^>]*)/>", lambda m: f"<use {m.group(1)}><title>{escape(next(titles))}</title></use>",
                       group)
        svg = svg[:start] + group + svg[end:]
    return svg.rstrip() + "\n"


def _charts(r: dict, delta, key: str) -> dict:
    """The image's two convergence charts (SSE and largest shift per iteration) and their legend;
    ``key``: the section's anchor (the charts' ids are unique on the page)."""
    history = [h for h in (r.get("history") or []) if isinstance(h, dict)]
    if not history:
        return {"charts": [], "reseeded": "", "delta": False}
    marks = {int(h["iteration"]) for h in history if h.get("reseeded") and _num(h.get("iteration")) is not None}
    sse = [(h.get("iteration"), h.get("sse")) for h in history]
    shift = [(h.get("iteration"), h.get("max_shift")) for h in history]
    delta = _num(delta)
    big = lambda v: f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"  # noqa: E731
    charts = [
        line_chart(sse, key=f"{key}-sse", title="Squared error (SSE) per iteration", y_label="SSE",
                   colour="#2563eb", marks=marks, value_format=big),
        line_chart(shift, key=f"{key}-shift", title="Largest centroid shift per iteration",
                   y_label="max shift (colour units)", colour="#7c3aed", marks=marks, hline=delta,
                   hline_label=f"delta = {_plain(delta)}" if delta is not None else "",
                   y_from_zero=True, value_format=lambda v: f"{v:.4g}"),
    ]
    reseeded = ""
    if marks:
        which = ", ".join(str(m) for m in sorted(marks))
        reseeded = f'clusters re-seeded (empty cluster) at iteration{"s" if len(marks) > 1 else ""} {which}'
    return {"charts": charts, "reseeded": reseeded, "delta": delta is not None}


def quality_chart(r: dict, key: str) -> dict | None:
    """The PSNR of each K the quality search tried (``k`` auto), the target as a dashed line, and
    what was chosen; None for an image of a fixed K. An exact candidate (infinite PSNR) is left out
    of the chart, named in the legend."""
    q = r.get("quality") if isinstance(r.get("quality"), dict) else None
    if q is None:
        return None
    tried = [c for c in q.get("candidates") or [] if isinstance(c, dict) and _num(c.get("k")) is not None]
    points = sorted((int(c["k"]), c.get("psnr")) for c in tried)
    target = _num(q.get("target_psnr"))
    chart = line_chart(points, key=f"{key}-quality", title="PSNR of each K the search tried", y_label="PSNR (dB)",
                       colour="#059669", hline=target, hline_label=f"target {_plain(target)} dB" if target else "",
                       value_format=lambda v: f"{v:.2f} dB", x_label="K")
    exact = [str(k) for k, psnr in points if psnr is None]
    return {"chart": chart, "chosen": _int(q.get("chosen_k")), "tried": len(points),
            "target": _plain(target), "minimum": _plain(q.get("min_psnr")), "max_k": _int(q.get("max_k")),
            "reached": bool(q.get("reached_target")),
            "exact": f"K {', '.join(exact)}: every colour kept (lossless)" if exact else ""}


def _bytes(n) -> str:
    n = _num(n)
    if n is None:
        return "—"
    for unit, size in (("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def size_against_input(r: dict) -> str:
    """``34.0 kB of 120.0 kB (28%)``, or why there is no output image (skipped: larger than its input)."""
    source = r.get("source_bytes")
    if r.get("skipped") == "larger":
        return f"skipped: {_bytes(r.get('output_bytes_would_be'))} > input {_bytes(source)}"
    ratio = _num(r.get("size_ratio"))
    if ratio is None:
        return "—"
    return f"{_bytes(r.get('output_bytes'))} of {_bytes(source)} ({ratio:.0%})"


# --------------------------------------------------------------------------------------------
# Page parts: one dict each, what the template shows


def _header(results: list[dict], failures: list[dict], run: dict, params) -> dict:
    engine = run.get("engine") or _common(results, "engine")
    pairs = _param_pairs(params) if params else []
    dither = _common(results, "dither")
    if not (params and "dither" in params) and _dither(dither):  # the images say it, the parameters do not
        pairs.append(("dither", _line(dither)))
    extras = []
    for key in sorted(k for k in run if k not in KNOWN_RUN_KEYS):
        value = run[key]
        if isinstance(value, (str, int, float, bool)) and value != "":
            extras.append((_line(str(key).replace("_", " ").capitalize()), _line(_plain(value))))
    return {
        "done": len(results),
        "failed": len(failures),
        "engine": _line(engine) if engine else "",
        "run_id": _line(run.get("run_id")),
        "dag_id": _line(run.get("dag_id")),
        "params": pairs,
        "started": _line(run.get("started")),
        "finished": _line(run.get("finished")),
        "output": _line(run.get("output")),
        "time": run_times(run),
        "extras": extras,
    }


def _summary_row(i: int, r: dict) -> dict:
    k_requested = r.get("k_requested")
    return {
        "anchor": f"img-{i}",
        "name": _name(r),
        "warnings": _warnings(r),
        "size": _size(r),
        "distinct": _int(r.get("distinct_colours")),
        "k": _int(r.get("k")),
        "k_requested": _k_requested(k_requested, r.get("k")),
        "file_size": size_against_input(r),
        "iterations": _int(r.get("iterations")),
        "converged": r.get("converged"),
        "mse": _fixed(r.get("mse")),
        "psnr": _psnr(r.get("psnr")),
        "seconds": duration(r.get("seconds")),
    }


def _k_requested(k_requested, k) -> str:
    """How K was asked for, when it is not the K used: a number, or "auto" (the quality search)."""
    if k_requested == "auto":
        return "auto"
    return _int(k_requested) if k_requested is not None and k_requested != k else ""


def _failure_row(f: dict) -> dict:
    source = f.get("source")
    return {
        "name": _line(os.path.basename(str(source))) if source else "(unknown file)",
        "source": _line(source),
        "stage": _line(f.get("stage") or "—"),
        "error": _line(f.get("error") or "unknown error"),
    }


def _colours(r: dict) -> list:
    """The image's palette colours (``palette_rgb``, else ``centroids_rgb``); [] when not recorded."""
    palette = r.get("palette_rgb") or r.get("centroids_rgb")
    return palette if isinstance(palette, list) else []


def _counts(r: dict, n: int) -> list | None:
    """The image's pixel count per palette colour (``cluster_pixels``), None unless one per colour."""
    counts = r.get("cluster_pixels")
    return counts if isinstance(counts, list) and len(counts) == n else None


def _share_bar(entries: list[dict], total) -> list[dict]:
    """The segments of a stacked share bar, one per entry (``code``, ``count``, ``index``) with pixels."""
    if not total:
        return []
    return [{"code": e["code"], "width": f"{100 * e['count'] / total:.3f}",
             "title": f"{e['code']} (label {e['index']}) {100 * e['count'] / total:.1f} %"}
            for e in entries if e["count"]]


def palette_view(colours: list, counts: list | None) -> dict:
    """The share bar and the swatches of a palette: ``colours`` (R, G, B) and, when known, the
    pixels of each (then largest share first). Each swatch's title names its label (the colour's
    index in the palette: its value in the label maps)."""
    if not colours:
        return {"recorded": False, "bar": [], "swatches": []}
    entries = []
    for i, colour in enumerate(colours):
        code = _hex(colour)
        if code is not None:
            entries.append({"index": i, "code": code, "count": _num(counts[i]) if counts else None})
    total = sum(e["count"] for e in entries if e["count"]) if counts else 0
    if counts:
        entries.sort(key=lambda e: -(e["count"] or 0))
    swatches = []
    for e in entries:
        share = f"{100 * e['count'] / total:.1f} %" if total and e["count"] is not None else ""
        title = f"{e['code']} (label {e['index']})" + (f": {_int(e['count'])} pixels ({share})" if share else "")
        swatches.append({"code": e["code"], "ink": _ink(e["code"]), "title": title, "share": share})
    return {"recorded": True, "bar": _share_bar(entries, total), "swatches": swatches}


def _palette(r: dict) -> dict:
    """The image's own palette: share bar and swatches (largest share first when counts are known)."""
    colours = _colours(r)
    return palette_view(colours, _counts(r, len(colours)))


# --------------------------------------------------------------------------------------------
# Shared palettes: one palette for several images (``palette`` "run" or a palette file)


def _shared_key(r: dict):
    """What images sharing one palette have in common: the ``palette`` entry's unit and the
    colours; None for an image with a palette of its own."""
    entry = r.get("palette")
    if not isinstance(entry, dict) or not entry.get("unit"):
        return None
    codes = tuple(_hex(c) for c in _colours(r))
    return (str(entry["unit"]), codes) if codes and None not in codes else None


def _group(number: int, members: list[tuple[int, dict]], delta) -> dict:
    """One shared palette: its swatches with each colour's share over all its images, its mode
    ("run", "file": the template says "One palette for the run (K colours, N images)" or "Fixed
    palette from <file> (...)"), the stacked share bar of each image (in the shared palette's
    order, largest share over the run first) and, for a palette that was iterated, its convergence
    charts (every image has the same history: shown once). ``images``: how many images share it
    (the ``palette`` entry's count; ``shown`` of them are in the report)."""
    first = members[0][1]
    entry = first["palette"]
    colours = _colours(first)
    sums, counted = [0.0] * len(colours), 0
    for _, r in members:
        counts = _counts(r, len(colours))
        if counts is not None:
            counted += 1
            for i, c in enumerate(counts):
                sums[i] += _num(c) or 0.0
    view = palette_view(colours, sums if counted else None)
    images = _num(entry.get("images"))
    images = int(images) if images is not None and images >= len(members) else len(members)
    order = sorted(range(len(colours)), key=lambda i: -sums[i]) if counted else list(range(len(colours)))
    by_image = []
    for i, r in members:
        counts = _counts(r, len(colours))
        entries = [{"index": j, "code": _hex(colours[j]), "count": _num(counts[j]) if counts else None}
                   for j in order]
        total = sum(e["count"] for e in entries if e["count"]) if counts else 0
        by_image.append({"anchor": f"img-{i}", "name": _name(r), "bar": _share_bar(entries, total)})
    fixed = entry.get("mode") == "file" or first.get("iterations") == 0
    return {
        "anchor": f"palette-{number}",
        "mode": _line(entry.get("mode") or ""),
        "file": _line(entry.get("file")) if entry.get("file") else "",
        "k": len(colours),
        "images": images,
        "shown": len(members),
        "order": order,
        "view": view,
        "by_image": by_image,
        "fixed": fixed,
        "convergence": _charts(first, delta, f"palette-{number}") if not fixed else {"charts": [], "reseeded": "", "delta": False},
        "iterations": _int(first.get("iterations")),
        "converged": first.get("converged"),
    }


def shared_palettes(results: list[dict], params: dict | None) -> tuple[list[dict], dict[int, dict]]:
    """The shared palettes of the run, in the order of their first image, and for each image
    (by its 1-based number) the palette it shares. Images share a palette when their ``palette``
    entries name the same unit and their colours are the same; an image without a ``palette``
    entry (``palette`` "image") has its own and is in no group."""
    keyed: dict = {}
    for i, r in enumerate(results, 1):
        key = _shared_key(r)
        if key is not None:
            keyed.setdefault(key, []).append((i, r))
    groups, of_image = [], {}
    for number, members in enumerate(keyed.values(), 1):
        own = members[0][1].get("params")
        delta = (own if isinstance(own, dict) else params or {}).get("delta")
        group = _group(number, members, delta)
        groups.append(group)
        for i, _ in members:
            of_image[i] = group
    return groups, of_image


def image_shares(r: dict, group: dict) -> dict:
    """The image's own share of each colour of the shared palette ``group``, in the palette's order:
    one row per colour (``code``, ``label``, ``pixels``, ``share``, bar ``width``); colours the
    image does not use have an empty bar and ``used`` False. ``total``: the image's pixels."""
    colours = _colours(r)
    counts = _counts(r, len(colours))
    total = sum(_num(c) or 0 for c in counts) if counts else 0
    rows = []
    for j in group["order"]:
        code = _hex(colours[j]) if j < len(colours) else None
        if code is None:
            continue
        count = _num(counts[j]) if counts else None
        share = 100 * count / total if total and count is not None else None
        rows.append({"code": code, "label": j, "pixels": _int(count), "used": count is None or count > 0,
                     "share": "—" if share is None else f"{share:.1f} %",
                     "width": "0" if not share else f"{share:.3f}",
                     "title": f"{code} (label {j})" + (f": {_int(count)} pixels ({share:.1f} %)" if share is not None else "")})
    return {"recorded": counts is not None, "rows": rows, "total": _int(total) if counts else "—",
            "unused": sum(1 for row in rows if not row["used"])}


def label_link(r: dict) -> dict | None:
    """The link to the image's label map: ``{"href", "name"}``, the href relative (the file's
    name, percent-encoded: the map is published in the report's folder); None without one."""
    path = r.get("labels")
    if not isinstance(path, str) or not path:
        return None
    name = os.path.basename(path)
    if not name:
        return None
    return {"href": quote(os.fsencode(name), safe=""), "name": _line(name)}


def _beside(path, folder: str | None) -> list[str]:
    """Where to read an image the report names: first beside the report (publish() writes the
    report and the images together in a staging folder, before they reach the path recorded),
    then the recorded path."""
    places = []
    if folder and path:
        places.append(os.path.join(folder, os.path.basename(str(path))))
    if path:
        places.append(str(path))
    return places


def _thumb(places: list[str], alt: str) -> dict | None:
    """The first readable image among ``places`` as ``{"uri", "alpha", "alt"}``, or None."""
    for place in places:
        uri = thumbnail_data_uri(place, THUMB_SIDE)
        if uri is not None:
            return {"uri": uri, "alpha": uri.startswith("data:image/png"), "alt": alt}
    return None


def _given_thumb(uri, alt: str) -> dict | None:
    """A thumbnail made elsewhere (a ``data:image/png`` or ``data:image/jpeg`` base64 URI, as
    :func:`thumbnail_data_uri` makes them), or None for anything else."""
    if not isinstance(uri, str) or not re.fullmatch(r"data:image/(png|jpeg);base64,[A-Za-z0-9+/=]+", uri):
        return None
    return {"uri": uri, "alpha": uri.startswith("data:image/png"), "alt": alt}


def _figures(r: dict, params: dict, group: dict | None = None) -> list[dict]:
    """The figures under the charts: ``{"label", "value", "sub", "cls"}``. ``group``: the shared
    palette of the image (:func:`shared_palettes`), None for a palette of its own."""
    def fig(label, value, sub="", cls=""):
        return {"label": label, "value": value, "sub": sub, "cls": cls}

    k_requested = r.get("k_requested")
    conv = r.get("converged")
    asked = _k_requested(k_requested, r.get("k"))
    figures = [
        fig("K", _int(r.get("k")), "chosen by the quality search" if asked == "auto" else
            f"of {asked} requested" if asked else ""),
        fig("Iterations", _int(r.get("iterations")),
            f'of max {_int(params["max_iter"])}' if _num(params.get("max_iter")) is not None else ""),
        fig("Converged", "—" if conv is None else "yes" if conv else "no",
            cls="" if conv is None else "yes" if conv else "no"),
        fig("MSE", _fixed(r.get("mse"), 3)),
        fig("PSNR", _psnr(r.get("psnr"))),
        fig("Squared error", _int(r.get("squared_error"))),
        fig("Reconstruct time", duration(r.get("seconds"))),
        fig("Output file", size_against_input(r)),
    ]
    frames = _num(r.get("frames"))
    if frames is not None and frames > 1:
        figures.append(fig("Frames", _int(frames), "(first used)"))
    if _dither(r.get("dither")):
        figures.append(fig("Dither", _dither(r.get("dither"))))
    if group is not None:
        figures.append(fig("Palette", "fixed" if group["mode"] == "file" else "shared",
                           f'{group["images"]} image{"s" if group["images"] != 1 else ""}'))
    if r.get("engine"):
        figures.append(fig("Engine", _line(r["engine"])))
    if params.get("init") is not None and not (group is not None and group["fixed"]):  # a fixed palette has no init
        figures.append(fig("Init / seed", f'{_line(params["init"])} / {_line(params.get("seed", "—"))}'))
    return figures


def _image(i: int, r: dict, run_params: dict | None, folder: str | None, group: dict | None = None) -> dict:
    """One image's section: paths, label map link, before / after thumbnails, palette (with a shared
    palette ``group``: the image's share of each of its colours), charts, figures, warnings."""
    name = _name(r)
    params = r.get("params") if isinstance(r.get("params"), dict) else (run_params or {})
    source, output = r.get("source"), r.get("output")
    # a run on the cluster made its thumbnails on the node (kmeans_ops.engines.stages): no pixel here
    given = r.get("thumbnails") if isinstance(r.get("thumbnails"), dict) else {}
    before = _given_thumb(given.get("before"), f"{name}: source image") or _thumb(
        [str(source)] if source else [], f"{name}: source image")
    before_note = ""
    if before is None:
        is_points = isinstance(source, str) and source.lower().endswith(".txt")
        before_note = "seed points file: no image to show" if is_points else "source image could not be read"
    after_alt = f"{name}: quantised to {_line(r.get('k'))} colours"
    after = (_given_thumb(given.get("after"), after_alt) or _thumb(_beside(output, folder), after_alt)) if output else None
    after_note = ""
    if after is None:
        after_note = ("no output image (seed points input: centroids and figures only)" if not output
                      else "output image could not be read")
    size = _size(r)
    shared = group is not None
    return {
        "anchor": f"img-{i}",
        "name": name,
        "converged": r.get("converged"),
        "source": _line(source),
        "output": _line(output),
        "warnings": _warnings(r),
        "before": before,
        "before_note": before_note,
        "after": after,
        "after_note": after_note,
        "size": f"{size} pixels, " if size != "—" else "",
        "distinct": _int(r.get("distinct_colours")),
        "k": _int(r.get("k")),
        "psnr": _psnr(r.get("psnr")),
        "dither": _dither(r.get("dither")) if output else "",
        "labels": label_link(r),
        "group": group,
        "palette": None if shared else _palette(r),
        "shares": image_shares(r, group) if shared else None,
        "convergence": None if shared else _charts(r, params.get("delta"), f"img-{i}"),
        "quality": quality_chart(r, f"img-{i}"),
        "figures": _figures(r, params, group),
    }


def report_context(results: list[dict], failures: list[dict], run: dict, folder: str | None = None) -> dict:
    """What ``report.html.j2`` shows, from the arguments of :func:`write_report`; ``folder`` is
    where the report is written (output images are looked for there first)."""
    results = [r for r in (results or []) if isinstance(r, dict)]
    failures = [f for f in (failures or []) if isinstance(f, dict)]
    run = run if isinstance(run, dict) else {}
    params = run.get("params") if isinstance(run.get("params"), dict) else _common(results, "params")
    palettes, group_of = shared_palettes(results, params)
    return {
        "title": "K-means report" + (f" — {_line(run['run_id'])}" if run.get("run_id") else ""),
        "header": _header(results, failures, run, params),
        "palettes": palettes,
        "rows": [_summary_row(i, r) for i, r in enumerate(results, 1)],
        "failures": [_failure_row(f) for f in failures],
        "images": [_image(i, r, params, folder, group_of.get(i)) for i, r in enumerate(results, 1)],
        "generated": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------------------------
# Rendering


class _Escaped(str):
    """Text already escaped for HTML: Jinja2's autoescaping keeps what ``__html__`` returns."""

    def __html__(self) -> str:
        return self


def _finalize(value):
    """Every ``{{ value }}`` of the templates: None shows as nothing; plain values are escaped with
    :func:`html.escape` (quotes too: safe in attributes); markup (macro output) is kept."""
    if hasattr(value, "__html__"):
        return value
    return _Escaped(escape("" if value is None else str(value), quote=True))


@functools.lru_cache(maxsize=1)
def environment():
    """The Jinja2 environment of the report's templates (autoescaping, undefined names are errors)."""
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR), autoescape=True,
                              undefined=jinja2.StrictUndefined, finalize=_finalize,
                              trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def render_report(results: list[dict], failures: list[dict], run: dict, folder: str | None = None) -> str:
    """The report page as a string (see :func:`write_report`)."""
    return environment().get_template("report.html.j2").render(report_context(results, failures, run, folder))


def write_report(path: str, results: list[dict], failures: list[dict], run: dict) -> None:
    """Write the run's report to ``path``: one self-contained HTML file, written atomically.

    ``results``: the per-image dicts written by :func:`kmeans_ops.reconstruct.finish` (optionally
    with ``seconds``, the image's reconstruct time, ``params``, ``engine``, ``frames``,
    ``warnings``); ``failures``: ``{"source", "error", "stage"}`` dicts; ``run``: ``run_id``,
    ``dag_id``, ``engine``, ``params``, ``started``, ``finished``, ``output``, ``wall_seconds``
    (the run's wall time) and ``stages`` (``[[name, seconds], ...]`` in pipeline order), any of
    them missing. The page shows a header (run, engine, parameters, counts, total time and time
    per stage), each shared palette once (``palette`` entries with one unit: its colours with their
    share over all its images, its mode, each image's share bar and its convergence charts), a
    summary table, the failed images, and per image: warnings, a link to its label map
    (``labels``), before / after thumbnails, its palette (with a shared palette: its own share of
    each shared colour, unused colours shown empty), the convergence charts (SSE and largest shift
    per iteration), with ``k`` auto the chosen K and the PSNR of each K the search tried (its
    ``quality`` entry), each output file's size against its input's (or that it was skipped as
    larger) and the figures (``dither`` when not "none"). Output images are read beside
    ``path`` first (publish() writes them together); label maps are linked by their name there.
    """
    from .storage import write_bytes

    page = render_report(results, failures, run, os.path.dirname(os.path.abspath(path)))
    # errors="replace": a last guard; shown() already turned undecodable bytes of names into \xNN
    write_bytes(path, page.encode("utf-8", errors="replace"))
