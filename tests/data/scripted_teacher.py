"""A scripted OpenAI-compatible teacher on 127.0.0.1, for tests that talk real HTTP.

``faults`` is consumed one per request before the responder answers: "429" (with Retry-After), "500",
"timeout" (hangs past the client's timeout), "garbage" (HTTP 200 with a non-JSON body), "401".
The responder turns the request's messages into the reply text. Every request is recorded.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

SELF_INSTRUCT_SEEDS = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "self_instruct_seed_tasks.jsonl"
)
Responder = Callable[[list[dict[str, str]], "ScriptedTeacher"], str]


class ScriptedTeacher:
    def __init__(
        self,
        responder: Responder,
        faults: list[str] | None = None,
        *,
        retry_after: str = "0.05",
        hang_s: float = 2.0,
        delay_s: float = 0.0,
        usage: bool = True,
        finish_reason: str = "stop",
        tokens: tuple[int, int] = (100, 200),
    ) -> None:
        self.responder, self.faults = responder, list(faults or [])
        self.retry_after, self.hang_s, self.delay_s = retry_after, hang_s, delay_s
        self.usage, self.finish_reason, self.tokens = usage, finish_reason, tokens
        self.requests: list[dict[str, Any]] = []
        self.counter = 0  # for responders that need fresh content
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        app = FastAPI()
        app.post("/v1/chat/completions")(self._handle)
        self._server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=0,
                log_level="warning",
                timeout_graceful_shutdown=1,
                lifespan="off",
            )
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> ScriptedTeacher:
        self._thread.start()
        deadline = time.time() + 10
        while not self._server.started:
            if time.time() > deadline:
                raise RuntimeError("scripted teacher did not start")
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1"
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)

    async def _handle(self, request: Request) -> Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: Request) -> Response:
        body = await request.json()
        with self._lock:
            fault = self.faults.pop(0) if self.faults else None
            self.requests.append(
                {"body": body, "headers": dict(request.headers), "fault": fault, "time": time.time()}
            )
        if fault == "429":
            return JSONResponse({"error": {"message": "slow down"}}, 429, {"Retry-After": self.retry_after})
        if fault == "500":
            return JSONResponse({"error": {"message": "oops"}}, 500)
        if fault == "401":
            return JSONResponse({"error": {"message": "bad key"}}, 401)
        if fault == "timeout":
            await asyncio.sleep(self.hang_s)
        if fault == "garbage":
            return PlainTextResponse("<html>upstream proxy error</html>", 200)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        text = self.responder(body["messages"], self)
        reply: dict[str, Any] = {
            "id": "x",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": self.finish_reason,
                }
            ],
        }
        if self.usage:
            reply["usage"] = {
                "prompt_tokens": self.tokens[0],
                "completion_tokens": self.tokens[1],
                "total_tokens": sum(self.tokens),
            }
        return JSONResponse(reply)


# -- responders ----------------------------------------------------------------------------------------------

_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


def fresh_instruction(n: int) -> str:
    """A distinct, plausible-looking instruction: rare made-up words keep ROUGE-L between two of them low."""
    rng = random.Random(n)
    words = ["".join(rng.choice(_SYLLABLES) for _ in range(3)) for _ in range(6)]
    verb = ["Explain", "Describe", "Summarize", "Compare", "List", "Rewrite"][n % 6]
    return f"{verb} the {words[0]} {words[1]} of {words[2]} {words[3]} for {words[4]} {words[5]}."


def numbered_batch(tasks: list[tuple[str, str, str]], first: int = 1) -> str:
    return "".join(
        f"{i}. Instruction: {a}\n{i}. Input:\n{b or '<noinput>'}\n{i}. Output:\n{c}\n###\n"
        for i, (a, b, c) in enumerate(tasks, start=first)
    )


def self_instruct_responder(
    per_reply: int = 5, dup_every: int = 0, bad_every: int = 0, as_json_every: int = 0
) -> Responder:
    """New tasks per request; optionally repeats an earlier instruction, adds a malformed or a non-text task,
    or answers as a JSON list."""

    def respond(messages: list[dict[str, str]], t: ScriptedTeacher) -> str:
        tasks = []
        for _ in range(per_reply):
            t.counter += 1
            n = t.counter
            tasks.append((fresh_instruction(n), "" if n % 2 else f"Input {n}", f"Output for task {n}."))
        if dup_every and len(t.requests) % dup_every == 0:
            tasks.append((fresh_instruction(max(1, t.counter - per_reply - 1)), "", "again"))
        if bad_every and len(t.requests) % bad_every == 0:
            tasks.append(("Look at the image and describe the colours you see there.", "", "red"))
        if as_json_every and len(t.requests) % as_json_every == 0:
            return json.dumps([{"instruction": a, "input": b, "output": c} for a, b, c in tasks])
        text = numbered_batch(tasks, first=6)
        if bad_every and len(t.requests) % bad_every == 0:
            text += "99. Instruction: An instruction whose output never came\n99. Input:\n<noinput>\n"
        return text

    return respond


_MARKER = re.compile(r"(⟦\d+⟧)")


def fake_zh(text: str) -> str:
    """A stand-in 'translation': Latin words become Han characters; markers and digits stay."""
    parts = _MARKER.split(text)
    return "".join(
        p if _MARKER.fullmatch(p) else re.sub(r"[A-Za-z]+", lambda m: "译" * min(3, len(m.group())), p)
        for p in parts
    )


def translate_responder(mode: Callable[[str, str], str] | None = None) -> Responder:
    """Answers the translation prompt's JSON with each value passed through ``mode(key, value)`` (fake_zh)."""

    def respond(messages: list[dict[str, str]], t: ScriptedTeacher) -> str:
        payload = json.loads(messages[-1]["content"])
        f = mode or (lambda k, v: fake_zh(v))
        return (
            "```json\n" + json.dumps({k: f(k, v) for k, v in payload.items()}, ensure_ascii=False) + "\n```"
        )

    return respond
