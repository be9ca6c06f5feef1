"""Any OpenAI-compatible chat endpoint as an engine: a vLLM or llama.cpp server, `llamabrew serve`, a hosted API.

Judging and evaluation need answers from models that are not on this machine. The server renders its own chat
template, so ``template`` here is a placeholder with no stop strings of its own; the request's stop strings are
sent along. Retries 429 / 5xx / connection errors (honouring Retry-After) before the first token arrives.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx

from llamabrew.data.templates import Template
from llamabrew.engines.base import ContextLengthError, GenerationStats, Sampling
from llamabrew.errors import LlamabrewError

PREFIX = "openai:"
KEY_ENVS = ("LLAMABREW_ENGINE_API_KEY", "OPENAI_API_KEY")  # the first one set is sent as the bearer token
REMOTE = Template("server", "", ())
RETRIES = 4
MAX_WAIT_S = 30.0  # longest Retry-After honoured


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``openai:URL`` or ``openai:URL#MODEL`` → (base URL ending in /v1 or as given, model or None)."""
    if not spec.startswith(PREFIX):
        raise LlamabrewError(f"{spec}: an OpenAI-compatible engine is written openai:URL[#MODEL]")
    url, _, model = spec[len(PREFIX):].partition("#")
    if not url.startswith(("http://", "https://")):
        raise LlamabrewError(f"{spec}: the URL must start with http:// or https://")
    return url.rstrip("/"), model or None


class OpenAIEngine:
    """Streams chat completions from ``base_url`` (``.../v1``); an `llamabrew.engines.Engine`."""

    name = "openai"

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 timeout_s: float = 120.0, context_length: int = 8192,
                 transport: httpx.BaseTransport | None = None, concurrency: int = 8) -> None:
        self.base_url = base_url.rstrip("/")
        key = api_key or next((os.environ[e] for e in KEY_ENVS if os.environ.get(e)), None)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(headers=headers, timeout=timeout_s, transport=transport)
        self.model = model or self._only_model()
        self.source = f"{self.base_url}#{self.model}"  # the model is part of what answers
        self.template = REMOTE
        self.context_length = context_length
        self.concurrency = concurrency
        self.last = GenerationStats()

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIEngine({self.base_url!r}, model={self.model!r})"

    def _only_model(self) -> str:
        """The server's model when it serves exactly one (llama.cpp's and our own server do)."""
        data = self._request("GET", "/models").json().get("data") or []
        ids = [m.get("id") for m in data if isinstance(m, dict) and m.get("id")]
        if len(ids) != 1:
            raise LlamabrewError(f"{self.base_url}: serves {len(ids)} models ({', '.join(ids[:5])}); name one "
                                 f"as openai:{self.base_url}#MODEL")
        return str(ids[0])

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 stream: bool = False) -> httpx.Response:
        url = self.base_url + path
        for attempt in range(RETRIES + 1):
            try:
                req = self.client.build_request(method, url, json=body)
                resp = self.client.send(req, stream=stream)
            except httpx.TransportError as e:
                if attempt == RETRIES:
                    raise LlamabrewError(f"{url}: {type(e).__name__}: {e}") from e
                time.sleep(min(8.0, 0.5 * 2**attempt))
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                if attempt < RETRIES:
                    wait = resp.headers.get("retry-after", "")
                    resp.close()
                    time.sleep(min(MAX_WAIT_S, float(wait)) if wait.replace(".", "", 1).isdigit()
                               else 0.5 * 2**attempt)
                    continue
            if resp.status_code >= 400:
                text = resp.read().decode("utf-8", "replace")[:300]
                resp.close()
                if "context" in text.lower() and resp.status_code == 400:
                    raise ContextLengthError(f"{url}: {text}")
                raise LlamabrewError(f"{url}: HTTP {resp.status_code}: {text}")
            return resp
        raise AssertionError("unreachable")

    def count_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """An estimate (about 4 characters a token): the server owns the tokenizer."""
        return sum(len(m.get("content", "")) for m in messages) // 4 + 4 * len(messages)

    def stream(self, messages: list[dict[str, str]], sampling: Sampling,
               cancel: threading.Event | None = None) -> Iterator[str]:
        body: dict[str, Any] = {
            "model": self.model, "messages": messages, "stream": True, "max_tokens": sampling.max_new_tokens,
            "temperature": max(0.0, sampling.temperature), "top_p": sampling.top_p if sampling.temperature > 0 else 1.0,
            "stream_options": {"include_usage": True}}
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        t0, n, finish, usage = time.monotonic(), 0, "stop", None
        resp = self._request("POST", "/chat/completions", body, stream=True)
        try:
            for line in resp.iter_lines():
                if cancel is not None and cancel.is_set():
                    break
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    finish = choice.get("finish_reason") or finish
                    if text := (choice.get("delta") or {}).get("content"):
                        n += 1
                        yield text
        finally:
            resp.close()
        prompt = int((usage or {}).get("prompt_tokens") or self.count_prompt_tokens(messages))
        completion = int((usage or {}).get("completion_tokens") or n)
        self.last = GenerationStats(prompt, completion, time.monotonic() - t0,
                                    "length" if finish == "length" else "stop")

    def generate_batch(self, conversations: list[list[dict[str, str]]], sampling: Sampling) -> list[str]:
        """Answers to many conversations, ``concurrency`` requests in flight at once (a batching server such as
        `llamabrew serve` on llama.cpp decodes them together)."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max(1, min(self.concurrency, len(conversations))),
                                thread_name_prefix="llamabrew-openai") as pool:
            return list(pool.map(lambda c: "".join(self.stream(c, sampling)), conversations))

    def close(self) -> None:
        self.client.close()
