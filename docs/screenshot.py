"""Screenshot of a real run report for the docs: ``docs/images/report.png`` (and the shared-palette one).

Run after ``make demo`` (it publishes the reports under ``demo-output/``), with the project's venv:

    .venv/bin/python docs/screenshot.py            # or: make docs-screenshot

Uses Playwright with Debian's Chromium (``bin/setup-system`` installs it), as tests/test_ui_results.py does.
"""

from __future__ import annotations

import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO, IMAGES = os.path.join(ROOT, "demo-output"), os.path.join(ROOT, "docs", "images")
#: (report, what to take, picture): None is the top of the page (total time, stages, the table of
#: images); a CSS selector is that element (an image's section: before/after, palette, charts).
SHOTS = [
    (os.path.join(DEMO, "results", "latest", "report.html"), None, os.path.join(IMAGES, "report.png")),
    (os.path.join(DEMO, "results", "latest", "report.html"), "#img-3", os.path.join(IMAGES, "report-image.png")),
    (os.path.join(DEMO, "shared", "latest", "report.html"), None, os.path.join(IMAGES, "report-shared.png")),
]
WIDTH, HEIGHT = 1280, 1100


def main() -> int:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    missing = [report for report, _, _ in SHOTS if not os.path.exists(report)]
    if missing:
        print(f"no report at {missing[0]}: run `make demo` first", file=sys.stderr)
        return 1
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        for report, selector, picture in SHOTS:
            page.goto("file://" + os.path.realpath(report))
            if selector is None:
                page.screenshot(path=picture, clip={"x": 0, "y": 0, "width": WIDTH, "height": HEIGHT})
            else:
                page.locator(selector).screenshot(path=picture)
            print(f"{picture} ({os.path.getsize(picture) // 1024} kB)")
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
