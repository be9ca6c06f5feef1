"""The chat page at / in headless Chromium (Debian's `chromium`, driven by Playwright): a streamed answer,
multi-turn history, clear, stop, the API-key prompt and a phone-sized screen, all under the page's own CSP.
Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path

import httpx
import pytest
from export.conftest import make_lora_run  # a run as `llamabrew train` writes it (the export tests' helper)

from llamabrew.serve.api import create_app
from llamabrew.serve.registry import open_registry
from llamabrew.serve.server import run_in_thread

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
QUESTION = "What is the capital of Oskenland?"


@pytest.fixture(scope="module")
def registry(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    run = make_lora_run(tiny_model_dir, tmp_path_factory.mktemp("page") / "pirate", seed=3, template="chatml")
    return open_registry(str(run))


@pytest.fixture(scope="module")
def url(registry):
    with run_in_thread(create_app(registry)) as url:
        yield url


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1000, "height": 720})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert not errors, errors


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def open_chat(page, url: str, temperature: str = "0", max_tokens: str = "24") -> None:
    page.goto(url)
    page.wait_for_selector("#model option", state="attached")
    page.click("#settings-toggle")
    page.fill("#temperature", temperature)
    page.fill("#max_tokens", max_tokens)


def ask(page, question: str, index: int) -> str:
    page.fill("#prompt", question)
    page.keyboard.press("Enter")
    bubble = page.locator(".msg.assistant").nth(index)
    expect(bubble).to_have_attribute("data-state", re.compile("done|stopped|error"), timeout=60_000)
    assert bubble.get_attribute("data-state") == "done", bubble.text_content()
    return bubble.locator(".content").text_content()


def test_chat_page_streams_answers_keeps_history_and_clears(page, url: str, registry) -> None:
    sent: list[dict] = []
    page.on("request", lambda r: r.url.endswith("/chat/completions") and sent.append(r.post_data_json))
    open_chat(page, url)
    options = page.locator("#model option").evaluate_all("opts => opts.map(o => o.value)")
    assert options == registry.names == ["pirate", registry.get("pirate").parent]
    page.eval_on_selector("#log", "log => { window.updates = 0; new MutationObserver(() => window.updates++)"
                                  ".observe(log, {subtree: true, characterData: true, childList: true}); }")
    answer = ask(page, QUESTION, 0)
    body = {"model": "pirate", "messages": [{"role": "user", "content": QUESTION}], "temperature": 0,
            "top_p": 0.9, "max_tokens": 24}
    expected = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()
    assert answer == expected["choices"][0]["message"]["content"] and answer
    assert sent[0] == {**body, "stream": True, "stream_options": {"include_usage": True}}
    assert page.evaluate("window.updates") > 3  # the answer arrived in pieces, not at once
    assert "tok/s" in page.text_content("#status") and f"{expected['usage']['completion_tokens']} tokens" in \
        page.text_content(".msg.assistant .meta")
    ARTIFACTS.mkdir(exist_ok=True)

    second = ask(page, "And its river?", 1)
    assert [m["role"] for m in sent[1]["messages"]] == ["user", "assistant", "user"]
    assert sent[1]["messages"][1]["content"] == answer and second
    page.screenshot(path=str(ARTIFACTS / "web_chat.png"), full_page=True)

    page.click("#clear")
    assert page.locator(".msg").count() == 0
    ask(page, QUESTION, 0)
    assert len(sent[2]["messages"]) == 1


@contextlib.contextmanager
def slowed(engine, seconds: float):
    """Each token of ``engine`` takes ``seconds`` longer: the stop click lands mid-answer however slow the
    browser is to click on a busy machine."""
    layer = engine.peft.get_base_model().model.layers[0]
    handle = layer.register_forward_pre_hook(lambda *_: time.sleep(seconds))
    try:
        yield
    finally:
        handle.remove()


def test_stop_button_ends_the_generation_on_the_server(page, url: str, registry) -> None:
    open_chat(page, url, temperature="0", max_tokens="480")
    page.select_option("#model", registry.names[1])  # the base: greedy, no EOS, runs to the context end
    before = httpx.get(f"{url}/health").json()
    page.fill("#prompt", "Tell me a story about a fox.")
    with slowed(registry.get(registry.names[1]).engine, 0.01):  # 400+ tokens: 4+ seconds
        page.click("#send")
        expect(page.locator(".msg.assistant .content")).not_to_have_text("")
        page.click("#stop")
        page.wait_for_selector(".msg.assistant[data-state=stopped]")
    for _ in range(200):
        health = httpx.get(f"{url}/health").json()
        if health["running"] == 0 and health["cancelled"] == before["cancelled"] + 1:
            break
        time.sleep(0.05)
    assert (health["running"], health["cancelled"]) == (0, before["cancelled"] + 1)
    assert registry.get(registry.names[1]).engine.last.completion_tokens < 300
    assert page.is_visible("#send") and not page.is_visible("#stop")


def test_api_key_prompt(browser, registry) -> None:
    with run_in_thread(create_app(registry, api_key="let-me-in")) as url:
        page = browser.new_page()
        page.goto(url)
        expect(page.locator("#status")).to_contain_text("needs an API key")
        assert page.is_visible("#api_key") and page.locator("#model option").count() == 0
        page.fill("#api_key", "let-me-in")
        page.dispatch_event("#api_key", "change")
        page.wait_for_selector("#model option", state="attached")
        assert page.locator("#model option").count() == 2
        page.close()


def test_readable_on_a_phone(browser, url: str) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 760}, is_mobile=True, has_touch=True,
                                  device_scale_factor=2)
    page = context.new_page()
    open_chat(page, url)
    page.click("#settings-toggle")  # closed again
    assert ask(page, QUESTION, 0)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scrolling
    for selector in ("#send", "#prompt", "#model"):
        box = page.locator(selector).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390 and box["height"] >= 36
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_chat_phone.png"))
    context.close()
