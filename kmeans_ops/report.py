"""The per-run HTML report: one self-contained page (inline CSS, inline SVG charts, images as
base64 ``data:`` URIs; no JavaScript, nothing fetched) that a person reads instead of the logs.

- :func:`write_report` writes it (atomically) from the per-image result dicts written by
  :func:`kmeans_ops.reconstruct.finish`, the failures and the run's description.
- :func:`thumbnail_data_uri` makes the before / after thumbnails.

Every string that comes from data (file names, error messages, parameters) goes through
:func:`html.escape`. Palette colours are written as lower-case hex codes (``#a1b2c3``).
Importing this module is cheap: OpenCV and NumPy are imported only to make thumbnails.
"""

from __future__ import annotations

import base64
import math
import os
from datetime import datetime
from html import escape

#: Largest side, in pixels, of the thumbnails embedded in the report.
THUMB_SIDE = 480

#: Parameters shown in this order (others after them).
PARAM_ORDER = ("k", "init", "seed", "max_iter", "delta")


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
# Formatting helpers (every returned string is already HTML-escaped)


def _num(value) -> float | None:
    """``value`` as a finite float, or None."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _esc(value) -> str:
    return escape("" if value is None else str(value), quote=True)


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


def _duration(seconds) -> str:
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
    source = result.get("source")
    if source:
        return os.path.basename(str(source)) or str(source)
    return str(result.get("image_id") or "image")


def _param_text(params: dict) -> str:
    keys = [k for k in PARAM_ORDER if k in params] + sorted(k for k in params if k not in PARAM_ORDER)
    return " · ".join(f"{_esc(k)} = <b>{_esc(_plain(params[k]))}</b>" for k in keys)


def _plain(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else repr(value)
    return str(value)


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


# --------------------------------------------------------------------------------------------
# SVG line charts


def _nice_step(span: float, target: int) -> float:
    raw = span / max(1, target)
    magnitude = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * magnitude * 1.0000001:
            return m * magnitude
    return 10 * magnitude


def _y_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    if hi <= lo:
        pad = abs(hi) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    step = _nice_step(hi - lo, target)
    start = math.floor(lo / step + 1e-9) * step
    ticks = []
    value = start
    while value < hi + step * 0.999:
        ticks.append(round(value, 12))
        value = start + step * len(ticks)
        if len(ticks) > 50:
            break
    return ticks


def _tick_label(value: float, step: float, top: float) -> str:
    """Compact tick labels (k, M, G suffixes) with just enough decimals to tell ticks apart."""
    unit, suffix = 1.0, ""
    for u, s in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if top >= u and top >= 1e4:
            unit, suffix = u, s
            break
    scaled_step = step / unit
    digits = 0
    while digits < 6 and abs(round(scaled_step, digits) - scaled_step) > scaled_step * 1e-6:
        digits += 1
    text = f"{value / unit:.{digits}f}"
    if text.startswith("-") and float(text) == 0:
        text = text[1:]
    return text + suffix


def _x_ticks(n: int) -> list[int]:
    if n <= 1:
        return [1]
    step = max(1, int(_nice_step(n - 1, 6)))
    if step not in (1, 2, 5) and step % 5:
        step = int(math.ceil(step / 5) * 5)
    ticks = [1] + [t for t in range(step, n + 1, step) if t > 1]
    if len(ticks) > 1 and ticks[1] - 1 < step / 2.5:
        ticks.pop(1)
    return ticks


def line_chart(points: list[tuple[int, float]], *, title: str, y_label: str, colour: str,
               marks: set | frozenset = frozenset(), hline: float | None = None,
               hline_label: str = "", y_from_zero: bool = False, value_format=None,
               width: int = 520, height: int = 250) -> str:
    """An inline SVG line chart of ``(iteration, value)`` points; iterations in ``marks`` get a
    triangle marker (clusters re-seeded), ``hline`` a dashed horizontal line."""
    fmt = value_format or (lambda v: f"{v:.4g}")
    left, right, top, bottom = 64, 16, 30, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    points = [(int(x), y) for x, y in points if _num(y) is not None and _num(x) is not None]
    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
           f'role="img" aria-label="{_esc(title)}">',
           f'<text class="chart-title" x="{left}" y="18">{_esc(title)}</text>']
    if not points:
        out.append(f'<text class="empty" x="{width / 2}" y="{height / 2}" text-anchor="middle">no data</text></svg>')
        return "".join(out)
    ys = [y for _, y in points]
    lo, hi = min(ys), max(ys)
    if hline is not None:
        lo, hi = min(lo, hline), max(hi, hline)
    if y_from_zero:
        lo = min(0.0, lo)
    ticks = _y_ticks(lo, hi)
    y0, y1 = ticks[0], ticks[-1]
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    n = max(x for x, _ in points)
    inset = 8  # keep the first and last markers off the axes

    def sx(x):
        return left + inset + (plot_w - 2 * inset) * ((x - 1) / (n - 1) if n > 1 else 0.5)

    def sy(y):
        return top + plot_h - plot_h * (y - y0) / (y1 - y0)

    # grid and y ticks
    for t in ticks:
        y = sy(t)
        out.append(f'<line class="grid" x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text class="tick" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
                   f'{_esc(_tick_label(t, step, max(abs(y0), abs(y1))))}</text>')
    # x ticks
    for t in _x_ticks(n):
        x = sx(t)
        out.append(f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{top + plot_h}" y2="{top + plot_h + 4}"/>')
        out.append(f'<text class="tick" x="{x:.1f}" y="{top + plot_h + 17}" text-anchor="middle">{t}</text>')
    out.append(f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}"/>')
    out.append(f'<line class="axis" x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}"/>')
    # axis labels
    out.append(f'<text class="label" x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle">iteration</text>')
    out.append(f'<text class="label" transform="translate(14 {top + plot_h / 2}) rotate(-90)" '
               f'text-anchor="middle">{_esc(y_label)}</text>')
    if hline is not None:
        y = sy(hline)
        out.append(f'<line class="hline" x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text class="hline-label" x="{left + inset + 24}" y="{y - 5:.1f}">'
                   f'{_esc(hline_label)}</text>')
    # re-seeding: a vertical guide and a triangle above the point
    for x, y in points:
        if x in marks:
            px = sx(x)
            out.append(f'<line class="reseed-guide" x1="{px:.1f}" x2="{px:.1f}" y1="{top}" y2="{top + plot_h}"/>')
    path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    out.append(f'<polyline class="line" points="{path}" stroke="{colour}"/>')
    radius = 3 if len(points) <= 60 else 1.5
    for x, y in points:
        px, py = sx(x), sy(y)
        tip = f"iteration {x}: {fmt(y)}" + (" — clusters re-seeded" if x in marks else "")
        if x in marks:
            out.append(f'<path class="reseed" d="M{px:.1f},{py - 11:.1f} l-6,-10 h12 z"><title>{_esc(tip)}</title></path>')
        out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="{radius}" fill="{colour}"><title>{_esc(tip)}</title></circle>')
    out.append("</svg>")
    return "".join(out)


# --------------------------------------------------------------------------------------------
# Page parts


CSS = """
:root { --ink:#1f2933; --muted:#616e7c; --line:#d9dee5; --bg:#f5f7fa; --card:#fff; --accent:#2563eb;
        --bad:#b91c1c; --bad-bg:#fef2f2; --good:#15803d; --warn:#b45309; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 20px 60px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 0 0 12px; }
h3 { font-size: 15px; margin: 18px 0 8px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 20px 22px; margin: 18px 0; }
header.card { border-top: 4px solid var(--accent); }
.sub { color: var(--muted); margin: 0 0 14px; }
.stats { display: flex; flex-wrap: wrap; gap: 12px; margin: 14px 0; }
.stat { border: 1px solid var(--line); border-radius: 8px; padding: 8px 16px; min-width: 130px; }
.stat .v { font-size: 24px; font-weight: 650; display: block; }
.stat .k { font-size: 12px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
.stat.ok .v { color: var(--good); }
.stat.bad { border-color: var(--bad); background: var(--bad-bg); }
.stat.bad .v, .stat.bad .k { color: var(--bad); }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 0; }
dl.meta dt { color: var(--muted); }
dl.meta dd { margin: 0; overflow-wrap: anywhere; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); background: #fafbfc; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:hover { background: #f8fafc; }
.yes { color: var(--good); font-weight: 600; }
.no { color: var(--warn); font-weight: 600; }
.failures.has { border: 2px solid var(--bad); background: var(--bad-bg); }
.failures.has h2 { color: var(--bad); }
.failures td.reason { color: var(--bad); overflow-wrap: anywhere; }
.failures .none { color: var(--good); margin: 0; }
.image h2 { display: flex; align-items: baseline; gap: 12px; flex-wrap: wrap; }
.badge { font-size: 12px; font-weight: 600; padding: 2px 10px; border-radius: 999px; }
.badge.yes { background: #dcfce7; }
.badge.no { background: #fef3c7; }
.paths { color: var(--muted); font-size: 13px; margin: -6px 0 12px; overflow-wrap: anywhere; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
figure { margin: 0; }
figure .frame { display: flex; align-items: center; justify-content: center; min-height: 120px; border-radius: 6px;
                background: #eef1f4; overflow: hidden; }
figure img { display: block; max-width: 100%; height: auto; }
figure img.alpha { background: repeating-conic-gradient(#d5dae1 0% 25%, #fff 0% 50%) 50% / 16px 16px; }
figcaption { font-size: 13px; color: var(--muted); margin-top: 6px; }
figcaption b { color: var(--ink); }
.note { padding: 24px; color: var(--muted); text-align: center; font-style: italic; }
.sharebar { display: flex; height: 14px; border-radius: 4px; overflow: hidden; border: 1px solid var(--line); margin-bottom: 8px; }
.sharebar span { display: block; height: 100%; }
.palette { display: flex; flex-wrap: wrap; gap: 8px; }
.swatch { width: 104px; height: 62px; border-radius: 6px; padding: 6px 8px; display: flex; flex-direction: column;
          justify-content: space-between; border: 1px solid rgba(0,0,0,.12); }
.swatch .hex { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; font-weight: 600; }
.swatch .share { font-size: 12px; }
.charts { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
svg.chart { display: block; width: 100%; height: auto; background: #fff; border: 1px solid var(--line); border-radius: 6px; }
svg.chart text { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; fill: #3e4c59; }
svg.chart .chart-title { font-size: 13px; font-weight: 600; fill: var(--ink); }
svg.chart .tick { font-size: 11px; fill: var(--muted); }
svg.chart .label { font-size: 12px; }
svg.chart .grid { stroke: #edf0f3; }
svg.chart .axis { stroke: #9aa5b1; }
svg.chart .line { fill: none; stroke-width: 2; stroke-linejoin: round; }
svg.chart .hline { stroke: var(--bad); stroke-dasharray: 6 4; stroke-width: 1.3; }
svg.chart .hline-label { font-size: 11px; fill: var(--bad); }
svg.chart .reseed { fill: #ea580c; }
svg.chart .reseed-guide { stroke: #fdba74; stroke-dasharray: 2 3; }
.legend { font-size: 12px; color: var(--muted); margin: 6px 0 0; }
.legend .tri { color: #ea580c; }
.legend .dash { color: var(--bad); letter-spacing: -1px; }
dl.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(160px, 1fr)); gap: 10px; margin: 16px 0 0; }
dl.figures div { border: 1px solid var(--line); border-radius: 8px; padding: 6px 12px; }
dl.figures dt { font-size: 12px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
dl.figures dd { margin: 0; font-size: 17px; font-weight: 600; font-variant-numeric: tabular-nums; }
.top { font-size: 13px; float: right; }
footer { color: var(--muted); font-size: 12px; text-align: center; margin-top: 30px; }
@media (max-width: 720px) { .pair, .charts { grid-template-columns: 1fr; } }
"""


def _header(results, failures, run) -> str:
    title = "K-means colour quantisation report"
    engine = run.get("engine") or _common(results, "engine")
    params = run.get("params") if isinstance(run.get("params"), dict) else _common(results, "params")
    started, finished = _parse_time(run.get("started")), _parse_time(run.get("finished"))
    total = None
    total_note = ""
    if started and finished:
        try:
            total = (finished - started).total_seconds()
        except TypeError:  # one has a time zone, the other not
            total = None
    if total is None:
        seconds = [_num(r.get("seconds")) for r in results]
        if any(s is not None for s in seconds):
            total = sum(s for s in seconds if s is not None)
            total_note = "sum of per-image times"

    done, failed = len(results), len(failures)
    stats = [
        f'<div class="stat ok"><span class="v">{done}</span><span class="k">image{"s" if done != 1 else ""} done</span></div>',
        f'<div class="stat{" bad" if failed else ""}"><span class="v">{failed}</span><span class="k">failed</span></div>',
    ]
    if total is not None:
        stats.append(f'<div class="stat"><span class="v">{_esc(_duration(total))}</span>'
                     f'<span class="k">total time{(" (" + total_note + ")") if total_note else ""}</span></div>')
    if engine:
        stats.append(f'<div class="stat"><span class="v">{_esc(engine)}</span><span class="k">engine</span></div>')

    rows = []
    for key, label in (("run_id", "Run"), ("dag_id", "DAG")):
        if run.get(key) not in (None, ""):
            rows.append((label, f"<code>{_esc(run[key])}</code>"))
    if engine:
        rows.append(("Engine", _esc(engine)))
    if params:
        rows.append(("Parameters", _param_text(params)))
    if run.get("started"):
        rows.append(("Started", _esc(run["started"])))
    if run.get("finished"):
        rows.append(("Finished", _esc(run["finished"])))
    if total is not None:
        rows.append(("Total time", _esc(_duration(total)) + (f" ({_esc(total_note)})" if total_note else "")))
    if run.get("output"):
        rows.append(("Output folder", f"<code>{_esc(run['output'])}</code>"))
    known = {"run_id", "dag_id", "engine", "params", "started", "finished", "output"}
    for key in sorted(k for k in run if k not in known):
        value = run[key]
        if isinstance(value, (str, int, float, bool)) and value != "":
            rows.append((_esc(key.replace("_", " ").capitalize()), _esc(_plain(value))))
    meta = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in rows)
    sub = "" if rows else '<p class="sub">No run details recorded.</p>'
    return (f'<header class="card"><h1>{title}</h1>{sub}<div class="stats">{"".join(stats)}</div>'
            f'<dl class="meta">{meta}</dl></header>')


def _summary(results) -> str:
    if not results:
        return '<section class="card" id="summary"><h2>Images</h2><p>No image was processed.</p></section>'
    head = ("<tr><th>Image</th><th class=n>Size</th><th class=n>Distinct colours</th><th class=n>K</th>"
            "<th class=n>Iterations</th><th>Converged</th><th class=n>MSE</th><th class=n>PSNR</th>"
            "<th class=n>Time</th></tr>")
    rows = []
    for i, r in enumerate(results, 1):
        k = _int(r.get("k"))
        if r.get("k_requested") is not None and r.get("k_requested") != r.get("k"):
            k += f' <span class="sub">({_int(r["k_requested"])} requested)</span>'
        conv = r.get("converged")
        rows.append(
            f'<tr><td><a href="#img-{i}">{_esc(_name(r))}</a></td>'
            f'<td class=n>{_size(r)}</td>'
            f'<td class=n>{_int(r.get("distinct_colours"))}</td><td class=n>{k}</td>'
            f'<td class=n>{_int(r.get("iterations"))}</td>'
            f'<td>{_yes_no(conv)}</td>'
            f'<td class=n>{_fixed(r.get("mse"))}</td><td class=n>{_esc(_psnr(r.get("psnr")))}</td>'
            f'<td class=n>{_esc(_duration(r.get("seconds")))}</td></tr>'
        )
    return (f'<section class="card" id="summary"><h2>Images</h2><table><thead>{head}</thead>'
            f'<tbody>{"".join(rows)}</tbody></table></section>')


def _yes_no(converged) -> str:
    if converged is None:
        return "—"
    return '<span class="yes">yes</span>' if converged else '<span class="no">no</span>'


def _failures(failures) -> str:
    if not failures:
        return ('<section class="card failures" id="failures"><h2>Failed images</h2>'
                '<p class="none">None: every image was processed.</p></section>')
    rows = []
    for f in failures:
        source = f.get("source")
        name = os.path.basename(str(source)) if source else "(unknown file)"
        rows.append(f'<tr><td><b>{_esc(name)}</b><br><span class="mono sub">{_esc(source)}</span></td>'
                    f'<td>{_esc(f.get("stage") or "—")}</td><td class="reason">{_esc(f.get("error") or "unknown error")}</td></tr>')
    return (f'<section class="card failures has" id="failures"><h2>Failed images ({len(failures)})</h2>'
            f'<table><thead><tr><th>File</th><th>Stage</th><th>Reason</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></section>')


def _palette(r: dict) -> str:
    palette = r.get("palette_rgb")
    if not palette and r.get("centroids_rgb"):
        palette = r["centroids_rgb"]
    if not palette:
        return '<p class="sub">No palette recorded.</p>'
    counts = r.get("cluster_pixels")
    if not isinstance(counts, list) or len(counts) != len(palette):
        counts = None
    entries = []
    for i, colour in enumerate(palette):
        code = _hex(colour)
        if code is None:
            continue
        count = _num(counts[i]) if counts else None
        entries.append((code, count))
    total = sum(c for _, c in entries if c) if counts else 0
    if counts:
        entries.sort(key=lambda e: -(e[1] or 0))
    bar = ""
    if total:
        bar = '<div class="sharebar">' + "".join(
            f'<span style="width:{100 * (c or 0) / total:.3f}%;background:{code}" title="{code} {100 * (c or 0) / total:.1f} %"></span>'
            for code, c in entries if c) + "</div>"
    swatches = []
    for code, count in entries:
        share = f"{100 * count / total:.1f} %" if total and count is not None else ""
        title = code + (f": {_int(count)} pixels ({share})" if share else "")
        swatches.append(f'<div class="swatch" style="background:{code};color:{_ink(code)}" title="{_esc(title)}">'
                        f'<span class="hex">{code}</span><span class="share">{_esc(share)}</span></div>')
    return bar + '<div class="palette">' + "".join(swatches) + "</div>"


def _charts(r: dict, delta) -> str:
    history = [h for h in (r.get("history") or []) if isinstance(h, dict)]
    if not history:
        return '<p class="sub">No iteration history recorded.</p>'
    marks = {int(h["iteration"]) for h in history if h.get("reseeded") and _num(h.get("iteration")) is not None}
    sse = [(h.get("iteration"), h.get("sse")) for h in history]
    shift = [(h.get("iteration"), h.get("max_shift")) for h in history]
    delta = _num(delta)
    big = lambda v: f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"  # noqa: E731
    charts = [
        line_chart(sse, title="Squared error (SSE) per iteration", y_label="SSE", colour="#2563eb",
                   marks=marks, value_format=big),
        line_chart(shift, title="Largest centroid shift per iteration", y_label="max shift (colour units)",
                   colour="#7c3aed", marks=marks, hline=delta, hline_label=f"delta = {_plain(delta)}" if delta is not None else "",
                   y_from_zero=True, value_format=lambda v: f"{v:.4g}"),
    ]
    legend = []
    if marks:
        which = ", ".join(str(m) for m in sorted(marks))
        legend.append(f'<span class="tri">▲</span> clusters re-seeded (empty cluster) at iteration{"s" if len(marks) > 1 else ""} {which}')
    if delta is not None:
        legend.append(f'<span class="dash">– –</span> convergence tolerance delta')
    legend_html = f'<p class="legend">{" &nbsp;·&nbsp; ".join(legend)}</p>' if legend else ""
    return f'<div class="charts">{"".join(charts)}</div>{legend_html}'


def _thumb(path, alt: str) -> str | None:
    if not path:
        return None
    uri = thumbnail_data_uri(str(path), THUMB_SIDE)
    if uri is None:
        return None
    alpha = ' class="alpha"' if uri.startswith("data:image/png") else ""
    return f'<img{alpha} src="{uri}" alt="{_esc(alt)}">'


def _image_section(i: int, r: dict, run_params: dict | None) -> str:
    name = _name(r)
    params = r.get("params") if isinstance(r.get("params"), dict) else (run_params or {})
    conv = r.get("converged")
    badge = ""
    if conv is not None:
        badge = ('<span class="badge yes">converged</span>' if conv
                 else '<span class="badge no">not converged: stopped at max_iter</span>')
    source, output = r.get("source"), r.get("output")
    paths = f'<code>{_esc(source)}</code>' + (f' → <code>{_esc(output)}</code>' if output else "")

    size = _size(r)
    size = f"{size} pixels, " if size != "—" else ""
    before = _thumb(source, f"{name}: source image")
    if before is None:
        is_points = isinstance(source, str) and source.lower().endswith(".txt")
        note = "seed points file: no image to show" if is_points else "source image could not be read"
        before = f'<div class="note">{_esc(note)}</div>'
    after = _thumb(output, f"{name}: quantised to {r.get('k')} colours") if output else None
    if after is None:
        note = ("no output image (seed points input: centroids and figures only)" if not output
                else "output image could not be read")
        after = f'<div class="note">{_esc(note)}</div>'
    pair = (f'<div class="pair"><figure><div class="frame">{before}</div><figcaption><b>Before</b>: source, '
            f'{size}{_int(r.get("distinct_colours"))} distinct colours</figcaption></figure>'
            f'<figure><div class="frame">{after}</div><figcaption><b>After</b>: {_int(r.get("k"))} colours, '
            f'PSNR {_esc(_psnr(r.get("psnr")))}</figcaption></figure></div>')

    k_text = _int(r.get("k"))
    if r.get("k_requested") is not None and r.get("k_requested") != r.get("k"):
        k_text += f' <span class="sub">of {_int(r["k_requested"])} requested</span>'
    iters = _int(r.get("iterations"))
    if _num(params.get("max_iter")) is not None:
        iters += f' <span class="sub">of max {_int(params["max_iter"])}</span>'
    figures = [
        ("K", k_text),
        ("Iterations", iters),
        ("Converged", _yes_no(conv)),
        ("MSE", _fixed(r.get("mse"), 3)),
        ("PSNR", _esc(_psnr(r.get("psnr")))),
        ("Squared error", _int(r.get("squared_error"))),
        ("Time", _esc(_duration(r.get("seconds")))),
    ]
    if r.get("engine"):
        figures.append(("Engine", _esc(r["engine"])))
    if params.get("init") is not None:
        figures.append(("Init / seed", f'{_esc(params["init"])} / {_esc(params.get("seed", "—"))}'))
    figs = "".join(f"<div><dt>{label}</dt><dd>{value}</dd></div>" for label, value in figures)

    k_title = f'Palette: {_int(r.get("k"))} colours, by share of pixels'
    return (f'<section class="card image" id="img-{i}"><a class="top" href="#summary">↑ all images</a>'
            f'<h2>{_esc(name)} {badge}</h2><p class="paths">{paths}</p>{pair}'
            f'<h3>{k_title}</h3>{_palette(r)}'
            f'<h3>Convergence</h3>{_charts(r, params.get("delta"))}'
            f'<dl class="figures">{figs}</dl></section>')


def render_report(results: list[dict], failures: list[dict], run: dict) -> str:
    """The report page as a string (see :func:`write_report`)."""
    results = [r for r in (results or []) if isinstance(r, dict)]
    failures = [f for f in (failures or []) if isinstance(f, dict)]
    run = run if isinstance(run, dict) else {}
    run_params = run.get("params") if isinstance(run.get("params"), dict) else _common(results, "params")
    title = "K-means report" + (f" — {run['run_id']}" if run.get("run_id") else "")
    generated = datetime.now().astimezone().isoformat(timespec="seconds")
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body><main>",
        _header(results, failures, run),
        _summary(results),
        _failures(failures),
        *(_image_section(i, r, run_params) for i, r in enumerate(results, 1)),
        f"<footer>Generated {_esc(generated)} by kmeans_ops.report</footer>",
        "</main></body></html>\n",
    ]
    return "\n".join(parts)


def write_report(path: str, results: list[dict], failures: list[dict], run: dict) -> None:
    """Write the run's report to ``path``: one self-contained HTML file, written atomically.

    ``results``: the per-image dicts written by :func:`kmeans_ops.reconstruct.finish` (optionally
    with ``seconds``, ``params``, ``engine``); ``failures``: ``{"source", "error", "stage"}`` dicts;
    ``run``: ``run_id``, ``dag_id``, ``engine``, ``params``, ``started``, ``finished``, ``output``,
    any of them missing. The page shows a header (run, engine, parameters, counts, total time), a
    summary table, the failed images, and per image: before / after thumbnails, the palette, the
    convergence charts (SSE and largest shift per iteration) and the figures.
    """
    from .storage import write_bytes

    # errors="replace": a file name that is not valid UTF-8 (Linux allows it) must not stop the report
    write_bytes(path, render_report(results, failures, run).encode("utf-8", errors="replace"))
