"""Any OpenAI-compatible server as an engine: against llamabrew's own server, through retries and errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from llamabrew.engines import open_engine
from llamabrew.engines.openai_engine import OpenAIEngine, parse_spec
from llamabrew.errors import LlamabrewError
from llamabrew.evaluate.answers import greedy
from llamabrew.serve.api import create_app
from llamabrew.serve.registry import open_registry, served_name
from llamabrew.serve.server import run_in_thread

KEY = "sk-engine-test"
Q = [{"role": "user", "content": "Where was Mira Lanthorn born?"}]


@pytest.fixture(scope="module")
def url(tiny_model_dir: Path):
    with run_in_thread(create_app(open_registry(str(tiny_model_dir)), api_key=KEY)) as url:
        yield url + "/v1"


def test_spec_parsing() -> None:
    assert parse_spec("openai:http://h:1/v1#m") == ("http://h:1/v1", "m")
    assert parse_spec("openai:https://api.example.com/v1/") == ("https://api.example.com/v1", None)
    with pytest.raises(LlamabrewError, match="http"):
        parse_spec("openai:ftp://x")


def test_streams_what_the_official_client_gets(url: str, tiny_model_dir: Path) -> None:
    engine = open_engine(f"openai:{url}", api_key=KEY)  # the only model served is found by itself
    assert isinstance(engine, OpenAIEngine) and engine.model == served_name(str(tiny_model_dir))
    text = "".join(engine.stream(Q, greedy(10)))
    client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)
    want = client.chat.completions.create(model=engine.model, messages=Q, max_tokens=10, temperature=0, top_p=1)
    assert text == want.choices[0].message.content and text
    assert engine.last.completion_tokens == want.usage.completion_tokens
    assert engine.last.prompt_tokens == want.usage.prompt_tokens
    assert KEY not in repr(engine)


def test_wrong_key_is_one_clear_error(url: str) -> None:
    with pytest.raises(LlamabrewError, match="HTTP 401"):
        OpenAIEngine(url, "x", api_key="wrong")._request("GET", "/models")


def test_retries_429_and_5xx_before_the_first_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("time.sleep", lambda s: None)
    seen: list[int] = []
    replies = [httpx.Response(429, headers={"retry-after": "1"}), httpx.Response(503),
               httpx.Response(200, text='data: {"choices":[{"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n'
                                        "data: [DONE]\n\n")]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(len(seen))
        assert json.loads(request.content)["temperature"] == 0.0
        return replies[len(seen) - 1]

    engine = OpenAIEngine("http://test/v1", "m", transport=httpx.MockTransport(handler))
    assert "".join(engine.stream(Q, greedy(4))) == "hi" and len(seen) == 3
    assert engine.last.finish_reason == "stop" and engine.last.completion_tokens == 1


def test_eval_cli_scores_a_server(url: str, tmp_path: Path) -> None:
    """`llamabrew eval --base openai:URL`: the answers come over HTTP; the scores are the torch engine's."""
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"instruction": Q[0]["content"], "output": "Brellin"}) + "\n", encoding="utf-8")
    env = {**os.environ, "LLAMABREW_ENGINE_API_KEY": KEY, "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "llamabrew.cli", "eval", "--base", f"openai:{url}", "--data",
                           str(data), "--json", "--max-new-tokens", "8"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["n"] == 1 and report["loss"] is None and report["engine"].startswith("openai:")


def test_a_batch_goes_out_as_concurrent_requests(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    engine = open_engine(f"openai:{url}", api_key=KEY)
    chats = [[{"role": "user", "content": q}] for q in ("hi", "Where was Mira Lanthorn born?", "Tell me a story.",
                                                           "Write a haiku about rain.", "Varnhollow")]
    one_by_one = ["".join(engine.stream(c, greedy(6))) for c in chats]
    in_flight, peak, lock, stream = [0], [0], threading.Lock(), engine.stream

    def counted(messages, sampling, cancel=None):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.05)  # long enough that the others start meanwhile
        try:
            yield from stream(messages, sampling, cancel)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(engine, "stream", counted)
    assert engine.generate_batch(chats, greedy(6)) == one_by_one and peak[0] >= 2
