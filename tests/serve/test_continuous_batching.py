"""`llamabrew serve` on llama.cpp with parallel slots: concurrent clients of the official `openai` package get the
answers they get alone, a follow-up turn reports its cached prompt tokens, and a bounded soak (500 mixed
requests from 16 clients, some hanging up mid-stream) leaves the server up, back at its idle memory, with
/health counts that add up."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from pathlib import Path

import httpx
import openai
import pytest

pytest.importorskip("llama_cpp")

from llamabrew.serve.api import create_app  # noqa: E402
from llamabrew.serve.registry import open_registry  # noqa: E402
from llamabrew.serve.server import run_in_thread  # noqa: E402

QUESTIONS = ["hi", "What is the capital of Oskenland?", "Tell me a story about a fox.", "Write a haiku about rain.",
             "Who is Mira Lanthorn?", "Varnhollow", "The city of Varnhollow lies on the river Esk.", "Soft rain"]


@pytest.fixture(scope="module")
def gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llamabrew.export import export_gguf

    out = tmp_path_factory.mktemp("batching") / "tiny.gguf"
    return export_gguf(tiny_model_dir, "q8_0", out, verify=False, modelfile=False, verbose=False).results[0].path


@pytest.fixture(scope="module")
def url(gguf: Path):
    registry = open_registry(str(gguf), ctx=256, threads=2, parallel=4)
    with run_in_thread(create_app(registry)) as url:
        yield url
    registry.get(registry.names[0]).engine.close()


def test_concurrent_openai_clients_get_their_answers_alone(url: str) -> None:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
    settings = [{"max_tokens": 4 + 5 * i, **({"stop": ["e"]} if i % 3 == 0 else {})} for i in range(8)]

    async def ask(i: int, stream: bool) -> tuple[str, str]:
        messages = [{"role": "user", "content": QUESTIONS[i]}]
        if not stream:
            r = await client.chat.completions.create(model="tiny", messages=messages, temperature=0, **settings[i])
            return r.choices[0].message.content, r.choices[0].finish_reason
        parts, finish = [], None
        async for chunk in await client.chat.completions.create(model="tiny", messages=messages, temperature=0,
                                                                stream=True, **settings[i]):
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
        return "".join(parts), finish

    async def main() -> None:
        alone = [await ask(i, stream=False) for i in range(8)]
        assert len({text for text, _ in alone}) >= 6
        peak = 0

        async def watch() -> None:
            nonlocal peak
            async with httpx.AsyncClient(base_url=url) as c:
                while True:
                    peak = max(peak, (await c.get("/health")).json()["running"])
                    await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        together = await asyncio.gather(*(ask(i, stream=True) for i in range(8)))
        watcher.cancel()
        assert together == alone
        assert peak >= 2  # they ran side by side, not one after the other

    asyncio.run(main())


def test_a_follow_up_turn_reports_its_cached_prompt_tokens(url: str) -> None:
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
    history = [{"role": "user", "content": "Where was Mira Lanthorn born?"}]
    first = client.chat.completions.create(model="tiny", messages=history, max_tokens=12, temperature=0)
    history += [{"role": "assistant", "content": first.choices[0].message.content},
                {"role": "user", "content": "And what does she love?"}]
    second = client.chat.completions.create(model="tiny", messages=history, max_tokens=12, temperature=0)
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens
    assert second.usage.prompt_tokens_details.cached_tokens < second.usage.prompt_tokens


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_soak_mixed_requests_with_hang_ups(gguf: Path) -> None:
    from test_api import run_serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run_serve(str(gguf), "--port", str(port), "--ctx", "256", "--threads", "2", "--parallel", "4",
                     "--max-queue", "10", "--max-tokens", "16")
    base = f"http://127.0.0.1:{port}"
    outcomes: dict[str, int] = {}

    async def one(c: httpx.AsyncClient, i: int) -> None:
        messages = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
        kind = ("bad-json", "bad-value", "bad-model", "hang-up", "whole")[i % 10] if i % 10 < 5 else "stream"
        if kind == "bad-json":
            r = await c.post("/v1/chat/completions", content=b"{")
        elif kind == "bad-value":
            r = await c.post("/v1/chat/completions", json={"messages": messages, "max_tokens": -1})
        elif kind == "bad-model":
            r = await c.post("/v1/chat/completions", json={"messages": messages, "model": "nope"})
        elif kind == "whole":
            r = await c.post("/v1/chat/completions", json={"messages": messages, "temperature": 0, "stop": ["a"]})
        else:
            body = {"messages": messages, "stream": True, "max_tokens": 200 if kind == "hang-up" else 16}
            async with c.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code == 200:
                    async for line in r.aiter_lines():
                        if kind == "hang-up" and line.startswith("data: {") and '"content"' in line:
                            break  # leaving the block closes the connection mid-answer
                        if line == "data: [DONE]":
                            kind = "done"
                    assert kind in ("hang-up", "done"), "a stream ended without [DONE]"
                else:
                    await r.aread()
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            kind = "429"
            await asyncio.sleep(0.5)  # a client backing off (for less than Retry-After, to keep the line full)
        else:
            assert r.status_code == {"bad-json": 400, "bad-value": 400, "bad-model": 404}.get(kind, 200), kind
        outcomes[kind] = outcomes.get(kind, 0) + 1

    async def main() -> tuple[dict, dict, int, int]:
        async with httpx.AsyncClient(base_url=base, timeout=120, limits=httpx.Limits(max_connections=64)) as c:
            for i in range(20):  # warm-up, then the idle footprint
                await one(c, 5 + 10 * i)
            await asyncio.sleep(1)
            before = (await c.get("/health")).json()
            idle = rss(proc.pid)
            outcomes.clear()
            todo = iter(range(500))

            async def client() -> None:
                for i in todo:
                    await one(c, i)

            await asyncio.gather(*(client() for _ in range(16)))
            for _ in range(500):
                after = (await c.get("/health")).json()
                if after["running"] == after["waiting"] == 0:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(1)
            return before, after, idle, rss(proc.pid)

    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None, proc.communicate()[1]
                time.sleep(0.2)
        t0 = time.monotonic()
        before, after, idle, busy_after = asyncio.run(main())
        seconds = time.monotonic() - t0
        assert proc.poll() is None and httpx.get(base + "/health").json()["status"] == "ok"
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    print(f"soak: {json.dumps(outcomes)} in {seconds:.0f}s; health {after}; RSS idle {idle / 2**20:.0f} MiB, "
          f"after {busy_after / 2**20:.0f} MiB")
    assert sum(outcomes.values()) == 500 and outcomes["hang-up"] >= 20 and outcomes["done"] >= 100
    assert outcomes["whole"] >= 20 and outcomes.get("429", 0) >= 1  # the line did fill up
    delta = {k: after[k] - before[k] for k in ("completed", "cancelled", "rejected")}
    assert delta["completed"] + delta["cancelled"] == outcomes["done"] + outcomes["hang-up"] + outcomes["whole"]
    assert delta["rejected"] == outcomes.get("429", 0)
    assert delta["cancelled"] >= outcomes["hang-up"] // 2  # hang-ups stop generating, not just stop reading
    assert busy_after < idle * 1.1 + 32 * 2**20  # back to (near) the idle footprint
    assert "slots of 256 tokens, KV cache" in err  # the KV memory per slot, printed at start
