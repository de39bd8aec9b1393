"""The page in a real browser: headless Chromium (Debian's package) driven by Playwright.

Skipped when Playwright's Python package or /usr/bin/chromium is missing
(``.ci/run`` installs both). Playwright cannot download its own browsers
here, so it launches the system's Chromium by path.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from circuitbreaker_http import BreakerRegistry
from circuitbreaker_http.status import asgi_app

from .servers import serve

sync_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("uvicorn")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

# Outside the source tree (an sdist must hold exactly the tree's files); CI
# may point it at a directory it keeps.
ARTIFACTS_ENV = "CIRCUITBREAKER_HTTP_ARTIFACTS"
WAIT_MS = 10_000  # every wait is Playwright's own, bounded by this


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    yield page
    context.close()


def fleet(n: int) -> BreakerRegistry:
    registry = BreakerRegistry(max_breakers=n + 100)
    for i in range(n):
        registry.get(f"https://svc-{i:05d}.example.com")
    return registry


def test_the_page_shows_every_breaker_filters_and_follows_changes(
    page: Any, tmp_path: Path
) -> None:
    registry = fleet(40)
    registry.get("https://svc-00007.example.com").force_open()
    registry.get("http://127.0.0.1:9/<script>alert(1)</script>")  # keys are not HTML
    app = asgi_app(registry)
    try:
        with serve(app, "/ops") as url:
            dialogs: list[str] = []
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.goto(url)
            expect = sync_api.expect
            expect(page.locator("#count")).to_have_text("41 of 41 shown", timeout=WAIT_MS)
            assert page.locator("#rows tr").count() == 41
            names = page.locator("#rows tr td.name").all_inner_texts()
            assert set(names) == {b.name for b in registry}
            # What is not closed comes first: the on-call engineer's first look.
            assert names[0] == "https://svc-00007.example.com"
            assert "<script>" in " ".join(names) and dialogs == []

            page.fill("#filter", "svc-0001")
            expect(page.locator("#count")).to_have_text("10 of 41 shown", timeout=WAIT_MS)
            shown = page.locator("#rows tr td.name").all_inner_texts()
            assert shown == [f"https://svc-{i:05d}.example.com" for i in range(10, 20)]
            page.fill("#filter", "forced")
            expect(page.locator("#count")).to_have_text("1 of 41 shown", timeout=WAIT_MS)
            page.fill("#filter", "")

            # Changed in the process: the page shows it at its next refresh, no reload.
            registry.get("https://svc-00012.example.com").force_open()
            row = page.locator('tr[data-name="https://svc-00012.example.com"] td.state')
            expect(row).to_have_text("forced_open", timeout=WAIT_MS)
            expect(page.locator("#transitions li").first).to_contain_text(
                "svc-00012", timeout=WAIT_MS
            )
            page.check("#problems")
            expect(page.locator("#count")).to_have_text("2 of 41 shown", timeout=WAIT_MS)
            page.uncheck("#problems")
            artifacts = Path(os.environ.get(ARTIFACTS_ENV) or tmp_path)
            artifacts.mkdir(parents=True, exist_ok=True)
            shot = artifacts / "status_page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            print(f"\nscreenshot: {shot}")
    finally:
        app.close()


def test_ten_thousand_breakers_render_within_a_second(page: Any) -> None:
    registry = fleet(10_000)
    for i in range(0, 10_000, 500):
        registry.get(f"https://svc-{i:05d}.example.com").force_open()
    app = asgi_app(registry)
    try:
        with serve(app) as url:
            page.goto(url)
            expect = sync_api.expect
            expect(page.locator("#count")).to_have_text("10000 of 10000 shown", timeout=WAIT_MS)
            first = page.evaluate("window.__cbh")
            # The first 500 rows are drawn at once, the rest as the table scrolls.
            assert page.locator("#rows tr").count() == 500
            names = page.locator("#rows tr td.name").all_inner_texts()
            assert names[:20] == [f"https://svc-{i:05d}.example.com" for i in range(0, 10_000, 500)]
            page.locator("#more").scroll_into_view_if_needed()
            expect(page.locator("#rows tr")).to_have_count(1000, timeout=WAIT_MS)
            page.click("#all")
            expect(page.locator("#rows tr")).to_have_count(10_000, timeout=WAIT_MS)
            all_rows = page.evaluate("window.__cbh.lastRenderMs")
            # Filtering 10,000 breakers down stays quick too.
            page.fill("#filter", "svc-0999")
            expect(page.locator("#count")).to_have_text("10 of 10000 shown", timeout=WAIT_MS)
            filtered = page.evaluate("window.__cbh.lastRenderMs")
    finally:
        app.close()
    # firstRenderAt: ms from navigation start to the first table on screen (the
    # page, the fetch of 10,000 breakers, the render); the others: one render each.
    print(
        f"\n10,000 breakers: table on screen {first['firstRenderAt']:.0f} ms after navigation "
        f"(render {first['lastRenderMs']:.0f} ms); all 10,000 rows drawn in {all_rows:.0f} ms; "
        f"filtered in {filtered:.0f} ms"
    )
    # The figure is <= 1 s (0.5-0.75 s measured); the guard is looser so that a
    # loaded machine does not fail it, while a page that stalls still does.
    assert first["firstRenderAt"] <= 5000
    assert all_rows <= 5000
