"""Browser tests: Debian's Chromium, headless, driven by Playwright's Python package.

Playwright never downloads a browser here: it launches the system's
``chromium`` (``ROOST_CHROMIUM`` overrides the path). Where it or the
``playwright`` package is missing the browser tests skip, saying why.
``screens`` saves each page at desktop and phone width into the test's
temporary folder and checks the page does not scroll sideways on a phone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("ROOST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per test module."""
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's chromium package to run this")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright package is not installed (test extra)"
    )
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=60_000
        )
        try:
            yield chromium
        finally:
            chromium.close()


class Screens:
    """Screenshots of pages at desktop and phone width, in one folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.taken: list[Path] = []
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, page: Any, name: str) -> None:
        for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
            page.set_viewport_size(size)
            path = self.folder / f"{len(self.taken) // 2 + 1:02d}-{name}-{label}.png"
            page.screenshot(path=str(path), full_page=True)
            self.taken.append(path)
            if label == "phone":
                overflow = page.evaluate(
                    "document.documentElement.scrollWidth - document.documentElement.clientWidth"
                )
                assert overflow <= 0, f"{name} scrolls sideways by {overflow}px at phone width"
        page.set_viewport_size(DESKTOP)


@pytest.fixture
def screens(tmp_path: Path) -> Iterator[Screens]:
    shots = Screens(tmp_path / "screenshots")
    yield shots
    print(f"\n{len(shots.taken)} screenshots in {shots.folder}")


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh desktop-sized page in its own browser context."""
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(15_000)
    page = context.new_page()
    yield page
    context.close()


def fill_join_form(page: Any, handle: str, email: str, password: str, answers: Sequence[str]) -> None:
    """Fill the PDS public page's join form (rules accepted) without submitting it."""
    page.fill("#handle", handle)
    page.fill("#email", email)
    page.fill("#password", password)
    for number, answer in enumerate(answers, 1):
        page.fill(f"#answer_{number}", answer)
    page.check("input[name=accept_rules]")
