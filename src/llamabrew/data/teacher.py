"""A client for any OpenAI-compatible chat endpoint as a teacher: a paid API, a local server, llamabrew serve.

Why not the ``openai`` package: we need our own retry policy (backoff with jitter, ``Retry-After`` honoured,
timeouts retried), a budget checked *before* each request, and the key kept out of every message and log.
The key is read from an environment variable at start and only ever placed in the Authorization header.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from llamabrew.errors import InputError, LlamabrewError

# USD per million tokens (input, output); list prices, override with --prices / --price-in / --price-out
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-3.5-turbo": (0.50, 1.50),
}
RETRY_STATUS = {408, 409, 425, 429}
MAX_RETRY_AFTER_S = 600.0


class TeacherError(LlamabrewError):
    """The teacher could not be used (refused key, bad request, kept failing); the run can be resumed."""


class BudgetExhausted(LlamabrewError):
    """The next request could take spending past ``--budget-usd``; callers stop cleanly on it."""


@dataclass(frozen=True)
class Price:
    input: float  # USD per million prompt tokens
    output: float  # USD per million completion tokens

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1e6


def load_prices(path: str | Path) -> dict[str, Price]:
    """A user price table: JSON ``{"model": {"input": usd_per_1M, "output": usd_per_1M}}``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("no such file", file=path) from None
    except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON: {e.msg}", file=path, line=e.lineno) from None
    if not isinstance(data, dict):
        raise InputError("expected an object mapping model names to prices", file=path)
    table = {}
    for model, p in data.items():
        if not (isinstance(p, dict) and all(isinstance(p.get(k), int | float) for k in ("input", "output"))):
            raise InputError(
                'expected {"input": number, "output": number} (USD per 1M tokens)', file=path, field=model
            )
        table[model] = Price(float(p["input"]), float(p["output"]))
    return table


def price_for(model: str, table: dict[str, Price] | None = None) -> Price | None:
    """The price of ``model``: an exact entry, else the longest entry it starts with (dated snapshots)."""
    merged = {k: Price(*v) for k, v in DEFAULT_PRICES.items()} | (table or {})
    if model in merged:
        return merged[model]
    prefixes = [k for k in merged if model.startswith(k)]
    return merged[max(prefixes, key=len)] if prefixes else None


def resolve_price(model: str, price_in: float | None = None, price_out: float | None = None,
                  prices: str | Path | None = None) -> Price | None:
    """The price a teacher is charged at: both given prices, else the table's (``prices``) or the defaults'."""
    if (price_in is None) != (price_out is None):
        raise LlamabrewError("give both --price-in and --price-out")
    if price_in is not None and price_out is not None:
        return Price(price_in, price_out)
    return price_for(model, load_prices(prices) if prices else None)


@dataclass
class Usage:
    """What the teacher has cost so far; saved with a run's summary so a resumed run keeps counting."""

    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    estimated_tokens: bool = False  # some response had no ``usage``; its tokens were estimated from text

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Usage:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class TeacherConfig:
    url: str
    model: str
    key_env: str = "OPENAI_API_KEY"
    concurrency: int = 4
    timeout_s: float = 120.0
    max_retries: int = 6
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    temperature: float = 1.0
    max_tokens: int = 2048
    budget_usd: float | None = None
    price: Price | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)


def teacher_config_of(section: Any, **extra: Any) -> TeacherConfig:
    """A recipe's `TeacherSection` (``llamabrew.stage_recipes``) as the client's settings."""
    if not section.model:
        raise LlamabrewError("the teacher needs a model name (teacher.model, --teacher-model / --judge-model)")
    return TeacherConfig(url=section.url, model=section.model, key_env=section.key_env,
                         concurrency=section.concurrency, timeout_s=section.timeout, max_retries=section.max_retries,
                         budget_usd=section.budget_usd,
                         price=resolve_price(section.model, section.price_in, section.price_out, section.prices),
                         **extra)


def estimate_tokens(text: str) -> int:
    """Rough BPE token count, used only when a server reports no usage (or to reserve budget)."""
    return math.ceil(len(text.encode("utf-8")) / 3)


def read_summary(path: Path) -> dict[str, Any]:
    """A run's saved summary (with its `Usage`), {} if missing or unreadable: resumed runs keep counting."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Teacher:
    """Async chat client, at most ``concurrency`` requests in flight: ``async with Teacher(cfg) as t``."""

    def __init__(
        self,
        cfg: TeacherConfig,
        usage: Usage | None = None,
        *,
        seed: int | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if cfg.budget_usd is not None and cfg.price is None:
            raise LlamabrewError(
                f"--budget-usd needs a price for model {cfg.model!r}: pass --price-in and "
                "--price-out (USD per 1M tokens) or --prices FILE"
            )
        self.cfg = cfg
        self.usage = usage or Usage()
        self._key = os.environ.get(cfg.key_env) or None
        url = cfg.url.rstrip("/")
        self._endpoint = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self._rng = random.Random(seed)
        self._sleep = sleep
        self._sem = asyncio.Semaphore(max(1, cfg.concurrency))
        self._reserved = 0.0
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:  # never show the key
        return f"Teacher(url={self.cfg.url!r}, model={self.cfg.model!r})"

    async def __aenter__(self) -> Teacher:
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        limits = httpx.Limits(max_connections=max(1, self.cfg.concurrency))
        self._client = httpx.AsyncClient(headers=headers, timeout=self.cfg.timeout_s, limits=limits)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _reserve(self, messages: list[dict[str, str]], max_tokens: int) -> float:
        """Refuse a request whose worst case (prompt estimate + max_tokens) could pass the budget."""
        if self.cfg.budget_usd is None or self.cfg.price is None:
            return 0.0
        prompt = sum(estimate_tokens(m["content"]) + 8 for m in messages)
        worst = self.cfg.price.cost(prompt, max_tokens)
        if self.usage.cost_usd + self._reserved + worst > self.cfg.budget_usd:
            raise BudgetExhausted(
                f"budget ${self.cfg.budget_usd:.4f} reached (spent "
                f"${self.usage.cost_usd:.4f}; the next request could cost ${worst:.4f})"
            )
        self._reserved += worst
        return worst

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with 'equal jitter': half fixed, half random, so clients spread out."""
        d = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2**attempt)
        return d / 2 + self._rng.uniform(0, d / 2)

    async def chat(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> Completion:
        """One chat completion, retried on 429/5xx/timeouts/garbled replies; `TeacherError` at the end."""
        assert self._client is not None, "use `async with Teacher(...)`"
        max_tokens = max_tokens or self.cfg.max_tokens
        body = {
            "model": self.cfg.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": self.cfg.temperature if temperature is None else temperature,
            **self.cfg.extra_body,
        }
        reserved = self._reserve(messages, max_tokens)
        try:
            for attempt in range(self.cfg.max_retries + 1):
                done, wait, error = await self._attempt(body)
                if done is not None:
                    return done
                if attempt == self.cfg.max_retries:
                    break
                if wait is not None and wait > MAX_RETRY_AFTER_S:
                    raise TeacherError(
                        f"teacher asks to wait {wait:.0f} s ({error}); run again later to resume"
                    )
                self.usage.retries += 1
                delay = wait * self._rng.uniform(1.0, 1.1) if wait is not None else self._backoff(attempt)
                await self._sleep(delay)
            raise TeacherError(
                f"teacher failed {self.cfg.max_retries + 1} times, last: {error}; run again to resume"
            )
        finally:
            self._reserved -= reserved

    async def _attempt(self, body: dict[str, Any]) -> tuple[Completion | None, float | None, str]:
        """One HTTP try: (completion, or None with the seconds the server asked to wait, what failed)."""
        assert self._client is not None
        async with self._sem:
            try:
                resp = await self._client.post(self._endpoint, json=body)
            except httpx.TimeoutException:
                return None, None, f"timed out after {self.cfg.timeout_s:g} s"
            except httpx.TransportError as e:
                return None, None, self._redact(f"connection error ({type(e).__name__}: {e})")
        status = resp.status_code
        if status == 200:
            try:
                return self._completion(resp.json(), body), None, ""
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                return None, None, "malformed response: " + self._redact(resp.text[:120])
        detail = self._redact(resp.text[:200].strip())
        if status in RETRY_STATUS or status >= 500:
            wait = parse_retry_after(resp.headers.get("retry-after"))
            ms = resp.headers.get("retry-after-ms")
            if wait is None and ms:
                wait = parse_retry_after(ms)
                wait = wait / 1000 if wait is not None else None
            return None, wait, f"HTTP {status} {detail}"
        if status in (401, 403):
            raise TeacherError(
                f"teacher refused the key (HTTP {status}): check ${self.cfg.key_env}; {detail}"
            )
        raise TeacherError(f"teacher rejected the request (HTTP {status}): {detail}")

    def _completion(self, data: dict[str, Any], body: dict[str, Any]) -> Completion:
        choice = data["choices"][0]
        text = choice["message"].get("content") or ""
        if not isinstance(text, str):
            raise TypeError("content is not text")
        usage = data.get("usage") or {}
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not isinstance(prompt, int) or not isinstance(completion, int):
            prompt = sum(estimate_tokens(m["content"]) for m in body["messages"])
            completion = estimate_tokens(text)
            self.usage.estimated_tokens = True
        self.usage.requests += 1
        self.usage.prompt_tokens += prompt
        self.usage.completion_tokens += completion
        if self.cfg.price is not None:
            self.usage.cost_usd += self.cfg.price.cost(prompt, completion)
        return Completion(text, str(choice.get("finish_reason") or "stop"), prompt, completion)
