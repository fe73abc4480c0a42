"""The per-run HTML report, built from real CLI results on real photos.

Palette colours are expected as lower-case hex codes (``#a1b2c3``).
"""

import base64
import glob
import html
import json
import os
import re
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest

from conftest import photo_bgr, run_cli
from kmeans_ops.errors import shown
from kmeans_ops.report import THUMB_SIDE, thumbnail_data_uri, write_report

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
# SVG elements written self-closing (<line .../>) are reported by HTMLParser as startendtag.

FAILURE = {
    "source": '/data/in/evil <script>alert("x")</script> & co.png',
    "error": 'evil <script>alert("x")</script> & co.png: not an image OpenCV can decode <b>&"</b>',
    "stage": "ingest",
}
RUN = {
    "run_id": "manual__2024-05-01T10:00:00+00:00",
    "dag_id": "kmeans_quantize",
    "engine": "local",
    "params": {"k": 6, "init": "kmeans++", "seed": 0, "max_iter": 30, "delta": 1.0},
    "started": "2024-05-01T10:00:00+00:00",
    "finished": "2024-05-01T10:01:05+00:00",
    "output": "/data/out",
}


class Page(HTMLParser):
    """Checks nesting (every element closed in order) and collects what the tests look at."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors = [], []
        self.sections = []  # per-image sections: {"id", "svgs", "imgs", "hexes", "shares", "text"}
        self.ids, self.hrefs, self.text = set(), [], []
        self.charset = None
        self._in_section = None
        self._span = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            if a["id"] in self.ids:
                self.errors.append(f"duplicate id {a['id']}")
            self.ids.add(a["id"])
        if tag == "a" and a.get("href"):
            self.hrefs.append(a["href"])
        if tag == "meta" and a.get("charset"):
            self.charset = a["charset"]
        if tag == "section" and "image" in (a.get("class") or "").split():
            self._in_section = {"id": a.get("id"), "svgs": 0, "imgs": [], "hexes": [], "shares": [], "text": []}
            self.sections.append(self._in_section)
        sec = self._in_section
        if sec is not None:
            if tag == "svg":
                sec["svgs"] += 1
            if tag == "img":
                sec["imgs"].append(a.get("src") or "")
            if tag == "span" and a.get("class") in ("hex", "share"):
                self._span = a["class"]
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        if tag == "img" and self._in_section is not None:
            self._in_section["imgs"].append(dict(attrs).get("src") or "")

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            if tag in self.stack:
                while self.stack.pop() != tag:
                    pass
            return
        self.stack.pop()
        if tag == "section" and "section" not in self.stack:
            self._in_section = None
        if tag == "span":
            self._span = None

    def handle_data(self, data):
        self.text.append(data)
        sec = self._in_section
        if sec is not None:
            sec["text"].append(data)
            if self._span == "hex":
                sec["hexes"].append(data.strip())
            elif self._span == "share":
                sec["shares"].append(data.strip())


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    assert not page.errors, page.errors[:5]
    assert page.stack == [], f"unclosed elements: {page.stack}"
    return page


def plain(page: Page) -> str:
    return re.sub(r"\s+", " ", " ".join(page.text))


def hex_of(rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


CHART = re.compile(r'<div class="chart" role="img" aria-label="([^"]*)">\s*(<svg .*?</svg>)', re.S)
#: The only URLs of the page that are not links inside it: the SVG's namespace names (never fetched).
NAMESPACES = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}


def charts(text: str) -> list[tuple[str, str]]:
    """``(title, svg)`` of each chart of the page (or of a part of it), in order."""
    return CHART.findall(text)


def tips(svg: str) -> list[str]:
    """The tooltips of a chart's points (and of its re-seeded markers), in order."""
    return [html.unescape(t) for t in re.findall(r"<title>([^<]*)</title>", svg)]


def assert_self_contained(text: str):
    """No script, nothing fetched: every URL is a data: URI, a link in the page or beside it, or
    an SVG namespace name; every id is unique (the charts' ids too)."""
    assert "<script" not in text.lower() and "javascript:" not in text.lower()
    assert set(re.findall(r"https?://[^\s\"'<>)]+", text)) <= NAMESPACES
    for url in re.findall(r'(?:src|href)="([^"]*)"', text):
        assert url.startswith(("data:image/", "#")) or not re.match(r"[a-z]+:|//", url), url[:80]
    assert set(re.findall(r"url\(([^)]*)\)", text)) <= {f"#{i}" for i in re.findall(r' id="([^"]+)"', text)}
    ids = re.findall(r' id="([^"]+)"', text)
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1][:5]


def decode_uri(uri: str) -> np.ndarray:
    head, payload = uri.split(",", 1)
    assert head in ("data:image/jpeg;base64", "data:image/png;base64"), head
    pixels = cv2.imdecode(np.frombuffer(base64.b64decode(payload), np.uint8), cv2.IMREAD_UNCHANGED)
    assert pixels is not None
    return pixels


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """Two real photos (one with quotes, & and non-ASCII letters in its name) through the real CLI."""
    from kmeans_ops.cli import main
    from sklearn.datasets import load_sample_image

    root = tmp_path_factory.mktemp("report")
    folder, out = root / "in", root / "out"
    folder.mkdir()
    names = {"china.jpg": "china.jpg", "flower.jpg": "fleur d'été & \"co\".jpg"}
    for sample, name in names.items():
        assert cv2.imwrite(str(folder / name), load_sample_image(sample)[..., ::-1].copy())
    assert main(["quantize", str(folder), "-k", "6", "--out", str(out), "-q"]) == 0
    results = [json.load(open(p, encoding="utf-8")) for p in sorted(glob.glob(str(out / "*.json")))]
    assert len(results) == 2
    return out, results, sorted(names.values())


@pytest.fixture(scope="module")
def report(cli_run):
    out, results, names = cli_run
    before = set(os.listdir(out))
    path = out / "report.html"
    write_report(str(path), results, [FAILURE], RUN)
    return path, before, results, names


def test_report_file_written_atomically(report):
    path, before, _, _ = report
    assert path.is_file() and path.stat().st_size > 0
    assert set(os.listdir(path.parent)) - before == {"report.html"}  # no temporary file left
    text = path.read_bytes().decode("utf-8")  # valid UTF-8
    assert text.startswith("<!DOCTYPE html>")
    assert parse(text).charset.lower() == "utf-8"


def test_report_shows_every_image(report):
    path, _, results, names = report
    text = path.read_text(encoding="utf-8")
    page = parse(text)
    assert len(page.sections) == len(results) == 2
    for name in names:
        assert html.escape(name) in text, name
        assert name in plain(page)
    assert "fleur d'été" not in text  # the quote in the name is escaped, not raw
    # the summary links to each image's section
    for section in page.sections:
        assert f"#{section['id']}" in page.hrefs
    for href in page.hrefs:
        if href.startswith("#"):
            assert href[1:] in page.ids


def test_report_per_image_content(report):
    path, _, results, _ = report
    page = parse(path.read_text(encoding="utf-8"))
    # sections come in the order of the results
    for result, section in zip(results, page.sections):
        body = plain_section = re.sub(r"\s+", " ", " ".join(section["text"]))
        assert os.path.basename(result["source"]) in body
        # before and after thumbnails, embedded, no larger than THUMB_SIDE, aspect ratio kept
        assert len(section["imgs"]) == 2
        for uri in section["imgs"]:
            assert uri.startswith("data:image/")
            thumb = decode_uri(uri)
            h, w = thumb.shape[:2]
            assert max(h, w) == min(THUMB_SIDE, max(result["width"], result["height"]))
            assert abs(w / h - result["width"] / result["height"]) < 0.02
        # the two convergence charts
        assert section["svgs"] == 2
        # every palette colour, lower-case hex, ordered by share of pixels, shares summing to 100 %
        expected = [hex_of(rgb) for rgb in result["palette_rgb"]]
        assert sorted(section["hexes"]) == sorted(expected)
        counts = dict(zip(expected, result["cluster_pixels"]))
        shown = [counts[h] for h in section["hexes"]]
        assert shown == sorted(shown, reverse=True)
        shares = [float(s.rstrip(" %")) for s in section["shares"]]
        assert len(shares) == result["k"] and abs(sum(shares) - 100) < 0.1 * result["k"]
        top = max(result["cluster_pixels"])
        assert f"{100 * top / sum(result['cluster_pixels']):.1f} %" == section["shares"][0]
        # the figures
        assert f"{result['psnr']:.2f} dB" in plain_section
        assert f"{result['mse']:.3f}" in plain_section
        assert f"{result['iterations']} of max 30" in plain_section
        assert ("yes" if result["converged"] else "no") in plain_section


def test_convergence_chart_has_a_point_per_iteration_and_the_delta_line(report):
    """Each image's two charts, drawn by matplotlib: titled, one point (with its tooltip) per
    iteration (and a marker for each re-seeded one), the axis labels, the delta line's label on
    the shift chart, the line colours."""
    path, _, results, _ = report
    text = path.read_text(encoding="utf-8")
    drawn = charts(text)
    assert len(drawn) == 2 * len(results) == text.count("<svg")
    for i, result in enumerate(results):
        (sse_title, sse), (shift_title, shift) = drawn[2 * i : 2 * i + 2]
        history = result["history"]
        assert len(history) == result["iterations"] >= 1
        assert sse_title == "Squared error (SSE) per iteration" and shift_title == "Largest centroid shift per iteration"
        reseeded = [h for h in history if h["reseeded"]]
        for svg, key, fmt in ((sse, "sse", lambda v: f"{v:,.0f}"), (shift, "max_shift", lambda v: f"{v:.4g}")):
            expected = [f"iteration {h['iteration']}: {fmt(h[key])}" + (" — clusters re-seeded" if h["reseeded"] else "")
                        for h in history]
            assert tips(svg) == expected + [tip for tip in expected if tip.endswith("re-seeded")]
            assert len(tips(svg)) == len(history) + len(reseeded)
        assert f">{sse_title}</text>" in sse and f">{shift_title}</text>" in shift
        assert ">iteration</text>" in sse and ">iteration</text>" in shift  # the axis labels
        assert ">SSE</text>" in sse and ">max shift (colour units)</text>" in shift
        assert ">delta = 1</text>" in shift and "delta" not in sse
        assert "#2563eb" in sse and "#7c3aed" in shift and "#b91c1c" in shift
    assert_self_contained(text)


def test_report_failures_escaped_and_counted(report):
    path, _, results, _ = report
    text = path.read_text(encoding="utf-8")
    assert "<script" not in text.lower()  # not a single raw script tag anywhere
    assert html.escape(FAILURE["error"]) in text
    assert html.escape(os.path.basename(FAILURE["source"])) in text
    page = parse(text)
    words = plain(page)
    assert FAILURE["error"] in words  # the reader sees the message as written
    assert "Failed images (1)" in words
    assert f"{len(results)} images done 1 failed" in words
    assert 'class="card failures has"' in text
    # header: run, engine, parameters, total time from started/finished
    assert RUN["run_id"] in words and "kmeans_quantize" in words
    assert "1 min 05 s" in words
    assert "k = 6" in words and "delta = 1" in words


def test_report_without_failures_says_none(cli_run, tmp_path):
    _, results, _ = cli_run
    path = tmp_path / "r.html"
    timed = [dict(r, seconds=2.5) for r in results]
    write_report(str(path), timed, [], {})  # an empty run description: render what is there
    page = parse(path.read_text(encoding="utf-8"))
    words = plain(page)
    assert "None: every image was processed." in words
    assert "2 images done 0 failed" in words
    # no wall time recorded: the total says so (the sum of per-image times is not the run's time)
    assert "not recorded total time" in words and "Total time not recorded" in words
    assert "5.00 s" not in words
    assert "Time per stage: not recorded." in words
    assert "Reconstruct time 2.50 s" in words  # each image's own time, labelled as what it is
    assert words.count("2.50 s") == 2 * len(results)  # in the table and in each section
    assert "local" in words  # engine taken from the results
    assert os.listdir(tmp_path) == ["r.html"]


def test_seed_points_input_renders(tmp_path):
    """A seed points file (no pixel grid): no output image; with K >= its colours PSNR is None."""
    from kmeans_ops.formats import write_seed_points

    bgr = photo_bgr("chelsea")[::16, ::16]
    levels = (bgr // 128 * 128 + 64).astype(np.uint8)  # at most 8 distinct colours
    distinct = len(np.unique(levels.reshape(-1, 3), axis=0))
    points = tmp_path / "points <1>.txt"
    write_seed_points(str(points), levels.reshape(-1, 3))
    status, err = run_cli("quantize", points, "-k", 16, "--out", tmp_path / "out", "-q")
    assert status == 0, err
    (result,) = [json.load(open(p, encoding="utf-8")) for p in glob.glob(str(tmp_path / "out" / "*.json"))]
    assert result["output"] is None and result["psnr"] is None and result["k"] == distinct
    path = tmp_path / "out" / "report.html"
    write_report(str(path), [result], [], {"engine": "local"})
    text = path.read_text(encoding="utf-8")
    page = parse(text)
    assert len(page.sections) == 1 and page.sections[0]["imgs"] == []
    words = plain(page)
    assert "∞" in words and "lossless" in words
    assert "no output image" in words
    assert "points &lt;1&gt;.txt" in text
    assert page.sections[0]["svgs"] == 2
    assert [len(tips(svg)) for _, svg in charts(text)] == [result["iterations"]] * 2
    assert sorted(page.sections[0]["hexes"]) == sorted(hex_of(c) for c in result["palette_rgb"])


def test_synthetic_history_with_reseeding_and_nothing_else(tmp_path):
    """Missing keys are tolerated; re-seeded iterations are marked; a one-iteration history plots."""
    results = [
        {"image_id": "a", "source": str(tmp_path / "missing.png"), "output": None, "k": 3,
         "palette_rgb": [[255, 0, 0], [0, 255, 0], [0, 0, 255]], "cluster_pixels": [1, 2, 1], "psnr": None,
         "history": [{"iteration": 1, "sse": 10.0, "max_shift": 4.0, "reseeded": [], "converged": False},
                     {"iteration": 2, "sse": 8.0, "max_shift": 2.0, "reseeded": [2], "converged": False},
                     {"iteration": 3, "sse": 7.5, "max_shift": 0.1, "reseeded": [], "converged": True}]},
        {"image_id": "b", "history": [{"iteration": 1, "sse": 0.0, "max_shift": 0.0, "reseeded": [], "converged": True}]},
    ]
    path = tmp_path / "r.html"
    write_report(str(path), results, [{"source": None, "error": None}], {})
    text = path.read_text(encoding="utf-8")
    page = parse(text)
    assert len(page.sections) == 2
    assert [h for h in page.sections[0]["hexes"]] == ["#00ff00", "#ff0000", "#0000ff"]
    assert "50.0 %" in page.sections[0]["shares"]
    (sse, shift), (one_sse, one_shift) = [charts(html_of) for html_of in _section_html(text, "image")]
    # a marker (with its own tooltip) above the point of iteration 2 on each chart
    assert tips(sse[1]) == ["iteration 1: 10", "iteration 2: 8 — clusters re-seeded", "iteration 3: 7.5",
                            "iteration 2: 8 — clusters re-seeded"]
    assert tips(shift[1]) == ["iteration 1: 4", "iteration 2: 2 — clusters re-seeded", "iteration 3: 0.1",
                              "iteration 2: 2 — clusters re-seeded"]
    assert "#ea580c" in sse[1] and "#ea580c" in shift[1]
    assert "clusters re-seeded (empty cluster) at iteration 2" in plain(page)
    # one iteration, converged at 0: one point each, no delta (none in the parameters)
    assert tips(one_sse[1]) == ["iteration 1: 0"] and tips(one_shift[1]) == ["iteration 1: 0"]
    assert "delta" not in one_shift[1] and "no data" not in text
    assert_self_contained(text)
    assert "source image could not be read" in plain(page)


def test_thumbnail_16_bit_with_alpha(tmp_path):
    rgba16 = np.zeros((400, 1000, 4), np.uint16)
    rgba16[..., 0] = 65535  # blue
    rgba16[..., 1] = 257 * 100
    rgba16[:, :500, 3] = 65535
    rgba16[:, 500:, 3] = 0
    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), rgba16)
    uri = thumbnail_data_uri(str(path), max_side=100)
    assert uri.startswith("data:image/png;base64,")
    thumb = decode_uri(uri)
    assert thumb.dtype == np.uint8 and thumb.shape == (40, 100, 4)
    assert tuple(thumb[20, 10]) == (255, 100, 0, 255)
    assert thumb[20, 90, 3] == 0


def test_thumbnail_grey_and_colour_are_jpeg(tmp_path):
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.full((50, 80), 200, np.uint8))
    thumb = decode_uri(thumbnail_data_uri(str(grey)))
    assert thumb.shape[:2] == (50, 80)  # small images are not enlarged
    assert abs(int(thumb.mean()) - 200) <= 2
    colour = tmp_path / "c.jpg"
    cv2.imwrite(str(colour), photo_bgr("china"))
    uri = thumbnail_data_uri(str(colour), max_side=64)
    assert uri.startswith("data:image/jpeg;base64,")
    assert decode_uri(uri).shape[:2] == (43, 64)


def test_thumbnail_unreadable_is_none(tmp_path):
    assert thumbnail_data_uri(str(tmp_path / "nope.png")) is None
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    assert thumbnail_data_uri(str(junk)) is None
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert thumbnail_data_uri(str(empty)) is None


def test_import_is_cheap():
    import subprocess
    import sys

    code = ("import sys; import kmeans_ops.report; "
            "print(any(m in sys.modules for m in ('cv2', 'numpy', 'matplotlib', 'jinja2')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------------------------
# Run time, warnings, hostile names, templates

STAGES = [["ingest", 3.1], ["iterations", 8.2], ["reconstruct", 2.0], ["publish", 0.4]]


class Rows(HTMLParser):
    """The text of each cell, row by row, and each row's attributes, of the first
    ``<table class="...">`` with the given class."""

    def __init__(self, table_class: str):
        super().__init__(convert_charrefs=True)
        self.table_class, self.inside, self.rows, self.attrs = table_class, False, [], []
        self._cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and (a.get("class") or "") == self.table_class and not self.rows:
            self.inside = True
        elif self.inside and tag == "tr":
            self.rows.append([])
            self.attrs.append([])
        elif self.inside and tag in ("td", "th"):
            self._cell = []
            self.rows[-1].append(self._cell)
        elif self.inside and self.rows:
            self.attrs[-1].append(a)

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside = False
        if tag in ("td", "th"):
            self._cell = None

    def handle_data(self, data):
        if self.inside and self._cell is not None:
            self._cell.append(data)

    def table(self):
        return [[re.sub(r"\s+", " ", "".join(c)).strip() for c in row] for row in self.rows]


def table_rows(text: str, table_class: str):
    rows = Rows(table_class)
    rows.feed(text)
    return rows.table(), rows.attrs


def test_wall_time_and_time_per_stage(cli_run, tmp_path):
    """The run's wall time is the total (not started/finished, not a sum of images); each stage has
    its time and share, in pipeline order, and the time outside the stages has a row of its own."""
    _, results, _ = cli_run
    path = tmp_path / "r.html"
    write_report(str(path), [dict(r, seconds=0.75) for r in results], [],
                 dict(RUN, wall_seconds=75.5, stages=STAGES))
    text = path.read_text(encoding="utf-8")
    words = plain(parse(text))
    assert "1 min 16 s total time" in words
    assert "Total time 1 min 16 s (wall clock, from the run's start to publication)" in words
    assert "1 min 05 s" not in words  # started/finished are shown, but the wall time is the total
    assert "Wall seconds" not in words  # not listed again among the run's other details
    rows, attrs = table_rows(text, "stages")
    assert rows[0] == ["Stage", "Time", "Share of the total"]
    assert rows[1:] == [["ingest", "3.10 s", "4 %"], ["iterations", "8.20 s", "11 %"],
                        ["reconstruct", "2.00 s", "3 %"], ["publish", "0.40 s", "1 %"],
                        ["outside the stages (scheduling, waiting)", "1 min 02 s", "82 %"]]
    widths = [float(re.search(r"width:([0-9.]+)%", a.get("style", "")).group(1))
              for row in attrs[1:] for a in row if "width:" in a.get("style", "")]
    assert len(widths) == 5 and abs(sum(widths) - 100) < 0.05
    assert abs(widths[0] - 100 * 3.1 / 75.5) < 0.01
    summary, _ = table_rows(text, "")  # the images table (it has no class)
    assert summary[0][0] == "Image" and summary[0][-1] == "Reconstruct time"
    assert [row[-1] for row in summary[1:]] == ["0.75 s"] * len(results)


def test_stages_without_wall_time_and_started_finished_fallback(cli_run, tmp_path):
    _, results, _ = cli_run
    path = tmp_path / "r.html"
    # stages but no wall time: shares of the stages' sum, no "outside" row, the total not recorded
    write_report(str(path), results, [], {"stages": [["ingest", 1.0], ["iterations", 3.0], ["bad"], "x"]})
    text = path.read_text(encoding="utf-8")
    words = plain(parse(text))
    assert "Total time not recorded" in words
    rows, _ = table_rows(text, "stages")
    assert rows[1:] == [["ingest", "1.00 s", "25 %"], ["iterations", "3.00 s", "75 %"]]
    # no wall time, no stages, but started and finished: their difference is the total
    write_report(str(path), results, [], {"started": RUN["started"], "finished": RUN["finished"],
                                           "wall_seconds": None})
    words = plain(parse(path.read_text(encoding="utf-8")))
    assert "Total time 1 min 05 s (wall clock, from started to finished)" in words
    assert "Time per stage: not recorded." in words


@pytest.fixture(scope="module")
def multi_frame_result(tmp_path_factory):
    """A real 3-page TIFF through the real CLI: its result says the first page was used."""
    from PIL import Image

    root = tmp_path_factory.mktemp("frames")
    pages = [Image.fromarray(photo_bgr(name)[..., ::-1].copy()).resize((240, 160)) for name in ("chelsea", "coffee", "china")]
    source = root / "pages.tiff"
    pages[0].save(source, save_all=True, append_images=pages[1:])
    status, err = run_cli("quantize", source, "-k", 4, "--out", root / "out", "-q")
    assert status == 0, err
    (result,) = [json.load(open(p, encoding="utf-8")) for p in glob.glob(str(root / "out" / "*.json"))]
    assert result["frames"] == 3 and result["warnings"] == ["first frame of 3 used"]
    return result


def test_warnings_shown_in_the_section_and_the_table(multi_frame_result, cli_run, tmp_path):
    _, results, _ = cli_run
    hostile = '<b>odd</b> "warning" & co\nsecond line'
    warned = dict(multi_frame_result, warnings=multi_frame_result["warnings"] + [hostile])
    path = tmp_path / "r.html"
    write_report(str(path), [results[0], warned], [], {})
    text = path.read_text(encoding="utf-8")
    page = parse(text)
    assert "<b>odd" not in text and "second line" in text
    one_line = html.escape(shown(hostile))  # '\n' shown as a backslash and an n
    assert "\\nsecond line" in one_line
    # in the image's section, one item per warning, escaped, each on one line
    plain_section = re.sub(r"\s+", " ", " ".join(page.sections[1]["text"]))
    assert "Warnings first frame of 3 used" in plain_section
    assert f"<li>{one_line}</li>" in text
    assert "Frames 3 (first used)" in plain_section
    assert "first frame" not in " ".join(page.sections[0]["text"])  # the other image has none
    # in the summary table: a marker on the warned image's row only, the warnings in its title
    rows, attrs = table_rows(text, "")
    marks = [[a for a in row if a.get("class") == "warn-mark"] for row in attrs[1:]]
    assert [len(m) for m in marks] == [0, 1]
    assert marks[1][0]["title"] == "first frame of 3 used; " + shown(hostile)
    assert "⚠" in rows[2][0] and rows[2][0].startswith("pages.tiff")


def test_hostile_file_name_escaped_and_on_one_line(tmp_path):
    """A real image whose name holds <script>, quotes, & and a newline, and a failure naming it."""
    folder = tmp_path / "in"
    folder.mkdir()
    name = 'evil <script>alert(1) & "x"\nline2.png'
    assert cv2.imwrite(str(folder / "a.png"), photo_bgr("chelsea")[::4, ::4])
    os.rename(folder / "a.png", folder / name)
    status, err = run_cli("quantize", folder, "-k", 4, "--out", tmp_path / "out", "-q")
    assert status == 0, err
    (result,) = [json.load(open(p, encoding="utf-8")) for p in glob.glob(str(tmp_path / "out" / "*.json"))]
    assert result["source"].endswith(name)
    failure = {"source": str(folder / name), "error": f"{shown(folder / name)}: not an image", "stage": "ingest"}
    path = tmp_path / "out" / "report.html"
    write_report(str(path), [result], [failure], {"run_id": "r\n<script>", "output": str(tmp_path / "out")})
    text = path.read_text(encoding="utf-8")
    page = parse(text)
    assert "<script" not in text.lower()
    escaped = html.escape(shown(name))
    assert escaped == "evil &lt;script&gt;alert(1) &amp; &quot;x&quot;\\nline2.png"
    assert html.escape(name) not in text  # the raw newline never reaches the page
    # every place the name appears holds all of it on one line: heading, table, paths, failure, alt
    lines = [line for line in text.splitlines() if "line2.png" in line]
    assert len(lines) >= 5
    for line in lines:
        assert "evil &lt;script&gt;alert(1) &amp; &quot;x&quot;\\nline2.png" in line, line[:300]
    assert "evil <script>alert(1) & \"x\"\\nline2.png" in plain(page)  # what the reader sees
    assert len(page.sections) == 1 and len(page.sections[0]["imgs"]) == 2  # both thumbnails
    assert "r\\n&lt;script&gt;" in text


def test_images_read_beside_the_report_before_publication(cli_run, tmp_path):
    """publish() writes the report in a staging folder while each result names the final folder:
    the "after" thumbnails come from the images beside the report, and the published report has them."""
    import shutil

    from kmeans_ops.publish import final_dir, publish, staging_dir

    out, results, _ = cli_run
    root = str(tmp_path / "results")
    staging, final = staging_dir(root, "run1"), final_dir(root, "run1")
    os.makedirs(staging)
    named = []
    for r in results:
        shutil.copy(r["output"], staging)
        named.append(dict(r, output=os.path.join(final, os.path.basename(r["output"]))))
    assert publish(root, "run1", named, [], {"wall_seconds": 4.25, "stages": STAGES}) == final
    text = open(os.path.join(final, "report.html"), encoding="utf-8").read()
    page = parse(text)
    assert [len(s["imgs"]) for s in page.sections] == [2, 2]
    assert "output image could not be read" not in plain(page)
    assert "4.25 s total time" in plain(page)


def test_rendered_from_templates_in_the_package_without_airflow(tmp_path):
    """The page comes from kmeans_ops/templates (no HTML built in report.py), and rendering it
    imports Jinja2 but not Airflow."""
    import subprocess
    import sys

    import kmeans_ops.report as report

    package = os.path.dirname(os.path.abspath(report.__file__))
    assert os.path.dirname(report.TEMPLATE_DIR) == package
    assert {"report.html.j2", "_macros.html.j2", "report.css"} <= set(os.listdir(report.TEMPLATE_DIR))
    source = open(report.__file__, encoding="utf-8").read()
    for tag in ("<html", "<section", "<table", "<svg", "<div", "<tr", "<img", "<span"):
        assert tag not in source, tag
    code = ("import sys; from kmeans_ops.report import render_report; "
            "page = render_report([], [], {'run_id': 'x'}); "
            "print(page.startswith('<!DOCTYPE html>'), 'jinja2' in sys.modules, "
            "any(m == 'airflow' or m.startswith('airflow.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(package))
    assert out.stdout.split() == ["True", "True", "False"]


# --------------------------------------------------------------------------------------------
# Shared palettes (--palette run, --palette FILE), label maps, dithering


def _section_html(text: str, marker: str) -> list[str]:
    """The HTML of each ``<section class="card MARKER"`` (sections do not nest)."""
    return [part.split("</section>", 1)[0] for part in text.split(f'<section class="card {marker}"')[1:]]


def _numbers(cell: str) -> int:
    """A count as shown (thousands separated by a narrow space, which table_rows makes a space)."""
    return int(re.sub(r"\s", "", cell))


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory):
    """Three real photos through the real CLI with one palette for the run, label maps and
    Floyd-Steinberg dithering; the report written in the output folder, beside the label maps."""
    root = tmp_path_factory.mktemp("shared")
    folder, out = root / "in", root / "out"
    folder.mkdir()
    for name in ("chelsea", "coffee", "astronaut"):
        assert cv2.imwrite(str(folder / f"{name}.png"), photo_bgr(name))
    status, err = run_cli("quantize", folder, "-k", 6, "--palette", "run", "--labels",
                          "--dither", "floyd-steinberg", "--out", out, "-q")
    assert status == 0, err
    results = [json.load(open(p, encoding="utf-8")) for p in sorted(glob.glob(str(out / "*.json")))]
    assert len(results) == 3
    assert {r["palette"]["unit"] for r in results} == {"palette=run"}
    path = out / "report.html"
    write_report(str(path), results, [], dict(RUN, params=results[0]["params"]))
    return path, results


def test_shared_palette_shown_once_with_the_run_shares(shared_run):
    path, results = shared_run
    text = path.read_text(encoding="utf-8")
    page = parse(text)
    words = plain(page)
    palette = results[0]["palette_rgb"]
    assert all(r["palette_rgb"] == palette for r in results)
    # one shared section, before the images table; the only swatches of the page are its K colours
    (shared,) = _section_html(text, "shared-palette")
    assert text.index('class="card shared-palette"') < text.index('id="summary"')
    assert text.count('class="swatch"') == len(palette) == 6
    assert text.count('class="palette"') == 1
    assert all(section["hexes"] == [] for section in page.sections)  # no image repeats a palette
    assert "One palette for the run (6 colours, 3 images)" in words
    # each colour's share over the whole run, largest first
    totals = [sum(r["cluster_pixels"][j] for r in results) for j in range(len(palette))]
    pixels = sum(r["width"] * r["height"] for r in results)
    assert sum(totals) == pixels
    swatches = re.findall(r'<span class="hex">(#[0-9a-f]{6})</span><span class="share">([^<]*)</span>', shared)
    order = sorted(range(len(palette)), key=lambda j: -totals[j])
    assert [code for code, _ in swatches] == [hex_of(palette[j]) for j in order]
    assert [share for _, share in swatches] == [f"{100 * totals[j] / pixels:.1f} %" for j in order]
    # one stacked bar per image, linking to its section, in the shared order
    assert shared.count('class="sharebar"') == 1 + len(results)
    for i, r in enumerate(results, 1):
        assert f'href="#img-{i}"' in shared
    # the convergence charts once, in the shared section (every image has the same history)
    assert shared.count("<svg") == 2 and text.count("<svg") == 2
    (_, sse), (_, shift) = charts(shared)
    assert len(tips(sse)) == len(tips(shift)) == results[0]["iterations"] == len(results[0]["history"])
    assert f">delta = {RUN['params']['delta']:g}</text>" in shift and text.count(">delta = ") == 1
    assert_self_contained(text)
    assert [section["svgs"] for section in page.sections] == [0, 0, 0]
    assert f"{results[0]['iterations']} iterations, converged" in words


def test_each_image_shows_its_share_of_the_shared_palette(shared_run):
    path, results = shared_run
    text = path.read_text(encoding="utf-8")
    page = parse(text)
    sections = _section_html(text, "image")
    assert len(sections) == len(page.sections) == len(results)
    palette = results[0]["palette_rgb"]
    totals = [sum(r["cluster_pixels"][j] for r in results) for j in range(len(palette))]
    order = sorted(range(len(palette)), key=lambda j: -totals[j])
    for r, html_of, section in zip(results, sections, page.sections):
        rows, _ = table_rows(html_of, "shares")
        assert rows[0] == ["Colour", "Label", "Share of this image's pixels", "Share", "Pixels"]
        body, foot = rows[1:-1], rows[-1]
        assert len(body) == len(palette)
        # the shared palette's order, each colour with its label (index in palette_rgb)
        assert [row[0] for row in body] == [hex_of(palette[j]) for j in order]
        assert [int(row[1]) for row in body] == order
        counts = [_numbers(row[4]) for row in body]
        assert counts == [r["cluster_pixels"][j] for j in order]
        assert sum(counts) == r["width"] * r["height"] == _numbers(foot[-1])
        total = r["width"] * r["height"]
        assert [row[3] for row in body] == [f"{100 * c / total:.1f} %" for c in counts]
        widths = [float(w) for w in re.findall(r'class="track"><span style="width:([0-9.]+)%', html_of)]
        assert len(widths) == len(palette) and abs(sum(widths) - 100) < 0.01
        body_words = re.sub(r"\s+", " ", " ".join(section["text"]))
        assert re.search(r"Its share of the shared palette ?: 6 colours", body_words)
        assert 'href="#palette-1"' in html_of
        assert "Palette shared 3 images" in body_words


def test_label_maps_linked_and_dither_shown(shared_run):
    from urllib.parse import unquote

    path, results = shared_run
    text = path.read_text(encoding="utf-8")
    page = parse(text)
    links = re.findall(r'<a class="labels" href="([^"]+)">([^<]+)</a>', text)
    assert len(links) == len(results)
    for (href, name), r in zip(links, results):
        assert "/" not in href and not href.startswith(("http", "file", "data"))  # relative, same folder
        assert unquote(href) == os.path.basename(r["labels"]) == html.unescape(name)
        assert (path.parent / unquote(href)).is_file()
        assert href in page.hrefs
    words = plain(page)
    assert "dither = floyd-steinberg" in words  # the run's parameters
    for section in page.sections:
        body = re.sub(r"\s+", " ", " ".join(section["text"]))
        assert "Dither Floyd–Steinberg" in body  # the figures
        assert "dithered (Floyd–Steinberg)" in body  # the "after" caption
        assert "Label map:" in body


def test_per_image_palettes_unchanged_beside_a_shared_one(cli_run, shared_run, tmp_path):
    """A run without a shared palette has no shared section, no dither, no label links; an image
    with its own palette keeps it when shown beside images sharing one."""
    out, results, _ = cli_run
    assert all(r.get("palette") is None and r.get("labels") is None and r.get("dither") == "none" for r in results)
    path = tmp_path / "r.html"
    write_report(str(path), results, [], RUN)
    text = path.read_text(encoding="utf-8")
    words = plain(parse(text))
    assert 'class="card shared-palette"' not in text and "Shared palette" not in words
    assert 'class="labels"' not in text and "Label map" not in words
    assert "dither" not in words.lower() and "dithered" not in words
    assert text.count('class="swatch"') == sum(r["k"] for r in results)
    # mixed: one image with its own palette, then the three sharing one
    _, shared = shared_run
    write_report(str(path), [results[0]] + shared, [], {})
    text = path.read_text(encoding="utf-8")
    page = parse(text)
    assert len(_section_html(text, "shared-palette")) == 1
    assert sorted(page.sections[0]["hexes"]) == sorted(hex_of(c) for c in results[0]["palette_rgb"])
    assert [s["hexes"] for s in page.sections[1:]] == [[], [], []]
    assert text.count('class="swatch"') == results[0]["k"] + 6
    assert [s["svgs"] for s in page.sections] == [2, 0, 0, 0]


def test_fixed_palette_file_with_an_unused_colour(tmp_path):
    """--palette FILE: the file named (escaped, one line), no iterations, and a colour no image uses
    shown with an empty bar. An input whose name needs percent-encoding gets a working link."""
    from urllib.parse import unquote

    folder = tmp_path / "in"
    folder.mkdir()
    odd = 'coffee #1 & "cup" ü.png'
    assert cv2.imwrite(str(folder / "chelsea.png"), photo_bgr("chelsea"))
    assert cv2.imwrite(str(folder / "c.png"), photo_bgr("coffee"))
    os.rename(folder / "c.png", folder / odd)
    palette_file = tmp_path / 'palette <b>&"x".txt'
    bgr = [(64, 112, 202), (22, 50, 147), (199, 206, 219), (81, 101, 135), (9, 11, 30), (137, 155, 184), (0, 255, 0)]
    palette_file.write_text("".join(f"{i} {b} {g} {r}\n" for i, (b, g, r) in enumerate(bgr, 1)), encoding="utf-8")
    status, err = run_cli("quantize", folder, "--palette", palette_file, "--labels", "--out", tmp_path / "out", "-q")
    assert status == 0, err
    results = [json.load(open(p, encoding="utf-8")) for p in sorted(glob.glob(str(tmp_path / "out" / "*.json")))]
    assert [r["palette"]["mode"] for r in results] == ["file", "file"]
    green = [j for j, c in enumerate(results[0]["palette_rgb"]) if c == [0, 255, 0]]
    assert len(green) == 1 and all(r["cluster_pixels"][green[0]] == 0 for r in results)  # no image uses it
    path = tmp_path / "out" / "report.html"
    write_report(str(path), results, [], {})
    text = path.read_text(encoding="utf-8")
    page = parse(text)
    words = plain(page)
    assert "<b>&" not in text
    assert f"Fixed palette from <code>{html.escape(str(palette_file))}</code> (7 colours, 2 images)" in text
    assert f"Fixed palette from {palette_file} (7 colours, 2 images)" in words
    assert "no iterations" in words and text.count("<svg") == 0
    assert "Init / seed" not in words  # a fixed palette is not initialised
    for html_of in _section_html(text, "image"):
        rows, attrs = table_rows(html_of, "shares")
        unused = [row for row in rows[1:-1] if "not used" in row[3]]
        assert len(unused) == 1 and unused[0][0] == "#00ff00" and unused[0][4] == "0"
        assert 'class="unused"' in html_of
        assert "7 colours, 1 not used" in re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", html_of)))
    links = re.findall(r'<a class="labels" href="([^"]+)">', text)
    assert len(links) == 2
    for href in links:
        assert " " not in href and "#" not in href and '"' not in href
        assert (path.parent / unquote(href)).is_file()
    assert html.escape(odd[:-4] + "-labels.png") in text


@pytest.mark.parametrize("values", [[1e-13, 2e-13], [0.0, 0.0], [3e-13, 3e-13, 1e-13], [5.0], [2e5, 1e5]])
def test_charts_of_flat_or_tiny_series_render(values):
    """Squared errors that cannot be told apart at tick precision (an image with about K colours)
    still give a chart (found by bench/bench_dag.py on 1100 small crops: a division by zero); a
    chart is the same bytes every time (text as text, fixed ids)."""
    from kmeans_ops.report import line_chart

    chart = line_chart(list(enumerate(values, 1)), key="k", title="SSE per iteration", y_label="SSE",
                       colour="#2563eb")
    svg = str(chart["svg"])
    assert chart["points"] == len(values) and len(tips(svg)) == len(values)
    assert svg.startswith("<svg ") and svg.rstrip().endswith("</svg>") and "<?xml" not in svg
    assert ">SSE per iteration</text>" in svg and "nan" not in svg.lower() and "inf" not in svg
    assert svg == str(line_chart(list(enumerate(values, 1)), key="k", title="SSE per iteration", y_label="SSE",
                                 colour="#2563eb")["svg"])
    if max(values) >= 1e4:
        assert ">200k</text>" in svg  # large values read 200k, 3.5M


def test_chart_without_numbers_says_no_data():
    from kmeans_ops.report import line_chart

    chart = line_chart([(1, None), (2, float("nan"))], key="k", title="SSE per iteration", y_label="SSE",
                       colour="#2563eb")
    assert chart["points"] == 0 and ">no data</text>" in str(chart["svg"]) and "<title>" not in str(chart["svg"])


def test_report_of_failures_only_has_no_chart(tmp_path):
    path = tmp_path / "r.html"
    write_report(str(path), [], [FAILURE], RUN)
    text = path.read_text(encoding="utf-8")
    page = parse(text)
    assert "<svg" not in text and page.sections == [] and "No image was processed." in plain(page)
    assert_self_contained(text)


def test_stage_breakdown_from_task_instances():
    """Stages from task instances' own timestamps: each span from the stage before to its last end,
    running the union of its tasks' runs (parallel batches count once), waiting the rest; skipped
    iterations and cleanup left out; a task still running ends now."""
    from kmeans_ops.stagetimes import breakdown

    def ti(task_id, scheduled, queued, start, end, state="success", map_index=-1):
        return {"task_id": task_id, "map_index": map_index, "state": state, "scheduled": scheduled,
                "queued": queued, "start": start, "end": end}

    tis = [ti("prepare", 100.2, 100.3, 101.0, 101.5),
           ti("ingest", 101.7, 101.8, 102.0, 104.0, map_index=0), ti("ingest", 101.7, 101.9, 103.0, 105.0, map_index=1),
           ti("iteration_01.mapreduce", 105.3, 105.4, 105.5, 106.0), ti("iteration_01.converge", 106.2, 106.3, 106.5, 106.7),
           ti("iteration_02.mapreduce", 106.8, None, 106.8, 106.8, state="skipped"),
           ti("publish", 107.0, 107.1, 107.2, None), ti("cleanup", None, None, None, None, state=None)]
    stages = {s["name"]: s for s in breakdown(tis, started=100.0, now=108.0)}
    assert list(stages) == ["prepare", "ingest", "iterations", "publish"]
    assert stages["prepare"]["seconds"] == pytest.approx(1.5) and stages["prepare"]["running"] == pytest.approx(0.5)
    assert stages["ingest"]["seconds"] == pytest.approx(3.5) and stages["ingest"]["running"] == pytest.approx(3.0)
    assert stages["ingest"]["tasks"] == 2 and stages["ingest"]["queued_to_start"] == pytest.approx(0.2 + 1.1)
    assert stages["iterations"]["tasks"] == 2 and stages["iterations"]["running"] == pytest.approx(0.7)
    assert stages["iterations"]["scheduled_to_queued"] == pytest.approx(0.2)
    assert stages["publish"]["seconds"] == pytest.approx(1.3) and stages["publish"]["running"] == pytest.approx(0.8)
    for s in stages.values():
        assert s["waiting"] + s["running"] == pytest.approx(s["seconds"]) and s["waiting"] >= 0
    assert sum(s["seconds"] for s in stages.values()) == pytest.approx(8.0)


def test_time_per_stage_with_waiting_and_running(cli_run, tmp_path):
    """Stages with their waiting and running (from task instances) get two more columns; a stage
    without them reads —."""
    _, results, _ = cli_run
    path = tmp_path / "r.html"
    stages = [["prepare", 1.5, 1.0, 0.5], ["iterations", 6.0, 2.5, 3.5], ["publish", 0.5]]
    write_report(str(path), results, [], dict(RUN, wall_seconds=8.0, stages=stages))
    text = path.read_text(encoding="utf-8")
    rows, _ = table_rows(text, "stages")
    assert rows[0] == ["Stage", "Time", "Waiting", "Running", "Share of the total"]
    assert rows[1:] == [["prepare", "1.50 s", "1.00 s", "0.50 s", "19 %"], ["iterations", "6.00 s", "2.50 s", "3.50 s", "75 %"],
                        ["publish", "0.50 s", "—", "—", "6 %"]]
    assert "Waiting: no task of the stage running" in plain(parse(text))
