"""Fixtures of the arena tests: the question and answer files, and a browser context that fails on page errors."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from arena_setup import write_arena


@pytest.fixture
def arena(tmp_path: Path) -> SimpleNamespace:
    return write_arena(tmp_path)


@pytest.fixture
def context(browser):
    """A browser context that fails the test on a page error or a console error (a CSP violation is one;
    the line Chromium logs for an HTTP error status is not)."""
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    errors: list[str] = []

    def watch(page) -> None:
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and not m.text.startswith("Failed to load resource")
                and errors.append(m.text))

    context.on("page", watch)
    yield context
    context.close()
    assert not errors, errors
