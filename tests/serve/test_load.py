"""Under load: 50 concurrent streams with malformed requests among them, first-come-first-served order, and a
full queue (429). Every good request must get its complete answer; bad ones are answered at once, not queued.

A "gated" model (the tiny model held at the start of each generation until the test opens the gate) fills the
queue deterministically, however fast or busy the machine is.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from llamabrew.serve.api import create_app
from llamabrew.serve.registry import Registry, ServedModel, open_registry
from llamabrew.serve.server import run_in_thread

PROMPTS = ["hi", "What is the capital of Oskenland?", "Tell me a story about a fox.",
           "Write a haiku about rain.", "Who is Mira Lanthorn?"]
USER = [{"role": "user", "content": "hi"}]
MALFORMED = [  # (body, status)
    (b"{", 400), (b'{"messages": []}', 400), (json.dumps({"messages": USER, "model": "nope"}).encode(), 404),
    (json.dumps({"messages": USER, "max_tokens": -1}).encode(), 400), (b'{"messages": [{"role": 1}]}', 400),
    (json.dumps({"messages": [{"role": "user", "content": "x" * (1 << 20)}]}).encode(), 413),
    (json.dumps({"messages": [{"role": "user", "content": "fox " * 600}]}).encode(), 400),
]


class Gated:
    """An engine that waits for ``gate`` before each generation, then streams from the real one."""

    def __init__(self, engine, gate: threading.Event) -> None:
        self.engine, self.gate = engine, gate

    def __getattr__(self, name: str):  # template, context_length, last, count_prompt_tokens
        if name.startswith("__") or name == "engine":
            raise AttributeError(name)  # copy.copy probes these before __init__ ran
        return getattr(self.engine, name)

    def stream(self, messages, sampling, cancel=None):
        assert self.gate.wait(120), "the test never opened the gate"
        yield from self.engine.stream(messages, sampling, cancel)


@pytest.fixture(scope="module")
def registry(tiny_model_dir: Path) -> Registry:
    tiny = open_registry(str(tiny_model_dir)).models.popitem()[1]
    return Registry([tiny, ServedModel("gated", Gated(tiny.engine, threading.Event()))])


@pytest.fixture
def gate(registry: Registry) -> threading.Event:
    gate = registry.get("gated").engine.gate
    gate.clear()
    yield gate
    gate.set()


@pytest.fixture(scope="module")
def url(registry: Registry):
    with run_in_thread(create_app(registry)) as url:
        yield url


def client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=100))


def chat_body(prompt: str, model: str | None = None) -> dict:
    """Greedy and short; ``model`` None means the first served one, the tiny model itself."""
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 8,
            "temperature": 0}


async def wait_health(c: httpx.AsyncClient, **want: int) -> None:
    for _ in range(400):
        health = (await c.get("/health")).json()
        if all(health[k] == v for k, v in want.items()):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"/health never reached {want}: {health}")


async def stream(c: httpx.AsyncClient, prompt: str) -> dict:
    body = {**chat_body(prompt, "gated"), "stream": True, "stream_options": {"include_usage": True}}
    async with c.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        lines = [line.removeprefix("data: ") async for line in r.aiter_lines() if line]
    chunks = [json.loads(line) for line in lines[:-1]]
    return {"prompt": prompt, "done": lines[-1] == "[DONE]", "at": time.monotonic(),
            "text": "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks if ch["choices"]),
            "finish": [ch["choices"][0]["finish_reason"] for ch in chunks if ch["choices"]][-1],
            "usage": chunks[-1].get("usage")}


async def malformed(c: httpx.AsyncClient, body: bytes, status: int) -> float:
    r = await c.post("/v1/chat/completions", content=body)
    assert r.status_code == status and r.json()["error"]["type"] == "invalid_request_error"
    return time.monotonic()


def test_fifty_concurrent_streams_among_malformed_requests(url: str, gate: threading.Event) -> None:
    async def main() -> None:
        async with client(url) as c:
            expected = {}
            for p in PROMPTS:
                whole = (await c.post("/v1/chat/completions", json=chat_body(p))).json()
                choice = whole["choices"][0]
                expected[p] = (choice["message"]["content"], choice["finish_reason"], whole["usage"])
            before = (await c.get("/health")).json()
            good = [asyncio.create_task(stream(c, PROMPTS[i % len(PROMPTS)])) for i in range(50)]
            await wait_health(c, running=1, waiting=49)
            await asyncio.gather(*(malformed(c, body, status) for body, status in MALFORMED * 2))
            health = (await c.get("/health")).json()  # all bad input answered while the queue stood still
            assert (health["running"], health["waiting"]) == (1, 49)
            gate.set()
            for a in await asyncio.gather(*good):
                assert a["done"] and (a["text"], a["finish"], a["usage"]) == expected[a["prompt"]]
            after = (await c.get("/health")).json()
            assert (after["waiting"], after["running"]) == (0, 0)
            assert after["completed"] - before["completed"] == 50
            assert after["cancelled"] == before["cancelled"]

    asyncio.run(main())


def test_requests_are_served_first_come_first_served(url: str, gate: threading.Event) -> None:
    async def main() -> None:
        async with client(url) as c:
            order: list[int] = []

            async def ask(i: int) -> None:
                r = await c.post("/v1/chat/completions", json=chat_body(PROMPTS[i % len(PROMPTS)]))
                assert r.status_code == 200
                order.append(i)

            hold = asyncio.create_task(c.post("/v1/chat/completions", json=chat_body("hi", "gated")))
            await wait_health(c, running=1)
            asks = []
            for i in range(5):
                asks.append(asyncio.create_task(ask(i)))
                await wait_health(c, waiting=i + 1)
            gate.set()
            await asyncio.gather(hold, *asks)
            assert order == [0, 1, 2, 3, 4]

    asyncio.run(main())


def test_a_full_queue_answers_429_with_retry_after_and_recovers(registry: Registry, gate: threading.Event) -> None:
    async def main(url: str) -> None:
        async with client(url) as c:
            hold = asyncio.create_task(c.post("/v1/chat/completions", json=chat_body("hi", "gated")))
            await wait_health(c, running=1)
            waiter = asyncio.create_task(c.post("/v1/chat/completions", json=chat_body("hi")))
            await wait_health(c, waiting=1)
            r = await c.post("/v1/chat/completions", json=chat_body("hi"))
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["type"] == "rate_limit_error" and r.json()["error"]["code"] == "queue_full"
            assert (await c.get("/health")).json()["rejected"] == 1
            gate.set()
            assert [x.status_code for x in await asyncio.gather(hold, waiter)] == [200, 200]
            assert (await c.post("/v1/chat/completions", json=chat_body("hi"))).status_code == 200

    with run_in_thread(create_app(registry, max_queue=1)) as url:
        asyncio.run(main(url))
