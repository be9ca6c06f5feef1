"""Shared fixtures: tiny models and tokenizers built on the spot (there is no model hub here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

from tinymodels import CORPUS, build_tiny_model  # noqa: E402,F401  (re-exported for tests)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LLaMA directory (read-only for tests: copy it before changing anything)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real SmolLM2-135M-Instruct (the `smollm2` extra's Q4_1 GGUF), imported once per session as a model
    directory (read-only for tests)."""
    from llamabrew.gguf.importer import import_gguf, smollm2_gguf

    out = tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct"
    import_gguf(smollm2_gguf(), out)
    return out


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by Playwright (no `playwright install`: there is no network), for the pages' tests.
    Per module: Playwright's sync API keeps an event loop running on this thread while it is open, and the tests
    after a page module call `asyncio.run`."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: the web pages' tests need Debian's browser (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the web pages' tests need Playwright: pip install playwright (no `playwright install`)")
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory):
    """A finished run of tests/pipeline/tiny_pipeline.py's pipeline (read-only for tests) and its events."""
    from tiny_pipeline import write_tiny

    from llamabrew import pipeline

    events: list = []
    path = write_tiny(tmp_path_factory.mktemp("tiny-pipeline"))
    result = pipeline.run(pipeline.load_pipeline(path), on_event=events.append)
    return path, result, events
