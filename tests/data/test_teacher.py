"""The teacher client against a real HTTP server that misbehaves on purpose."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from pathlib import Path

import pytest
from scripted_teacher import ScriptedTeacher

from llamabrew.data.teacher import (
    BudgetExhausted,
    Price,
    Teacher,
    TeacherConfig,
    TeacherError,
    Usage,
    load_prices,
    parse_retry_after,
    price_for,
)
from llamabrew.errors import InputError, LlamabrewError

KEY = "sk-test-SECRET-0123456789"
MSG = [{"role": "user", "content": "hello"}]


def echo(messages, t):
    return "reply to " + messages[-1]["content"]


def cfg(url: str, **kw) -> TeacherConfig:
    base = dict(
        url=url,
        model="teacher-x",
        key_env="LB_TEST_KEY",
        timeout_s=0.5,
        max_retries=5,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        max_tokens=64,
    )
    return TeacherConfig(**(base | kw))


def run_chats(config: TeacherConfig, n: int = 1, usage: Usage | None = None):
    async def go():
        async with Teacher(config, usage, seed=0) as t:
            return await asyncio.gather(*(t.chat(MSG) for _ in range(n))), t.usage

    return asyncio.run(go())


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("LB_TEST_KEY", KEY)


def test_usage_cost_and_auth_header():
    with ScriptedTeacher(echo, tokens=(1000, 3000)) as srv:
        (done,), usage = run_chats(cfg(srv.url, price=Price(1.0, 2.0)))
    assert done.text == "reply to hello" and done.finish_reason == "stop"
    assert (usage.requests, usage.prompt_tokens, usage.completion_tokens) == (1, 1000, 3000)
    assert usage.cost_usd == pytest.approx(0.007)
    assert srv.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"
    assert srv.requests[0]["body"]["model"] == "teacher-x"


def test_retries_429_500_timeout_garbage_then_succeeds():
    with ScriptedTeacher(echo, ["429", "500", "timeout", "garbage"], retry_after="0.3", hang_s=0.5) as srv:
        (done,), usage = run_chats(cfg(srv.url, timeout_s=0.25))
    assert done.text == "reply to hello"
    assert usage.retries == 4 and usage.requests == 1
    times = [r["time"] for r in srv.requests]
    assert len(times) == 5
    assert times[1] - times[0] >= 0.3  # Retry-After honoured
    assert times[3] - times[2] >= 0.25  # the hung request was abandoned at the client timeout, then retried


def test_gives_up_after_max_retries_and_names_the_last_error():
    with ScriptedTeacher(echo, ["500"] * 10) as srv:
        with pytest.raises(TeacherError, match="failed 3 times.*HTTP 500"):
            run_chats(cfg(srv.url, max_retries=2))
    assert len(srv.requests) == 3


def test_refused_key_is_not_retried_and_never_printed(caplog, capsys):
    caplog.set_level(logging.DEBUG)
    with ScriptedTeacher(echo, ["401"]) as srv:
        with pytest.raises(TeacherError, match=r"refused the key.*\$LB_TEST_KEY") as err:
            run_chats(cfg(srv.url))
    assert len(srv.requests) == 1
    out = capsys.readouterr()
    assert KEY not in str(err.value) + caplog.text + out.out + out.err
    assert KEY not in repr(Teacher(cfg(srv.url)))


def test_no_key_sends_no_auth_header(monkeypatch):
    monkeypatch.delenv("LB_TEST_KEY")
    with ScriptedTeacher(echo) as srv:
        run_chats(cfg(srv.url))
    assert "authorization" not in srv.requests[0]["headers"]


def test_concurrency_limit_is_respected():
    with ScriptedTeacher(echo, delay_s=0.15) as srv:
        t0 = time.perf_counter()
        done, usage = run_chats(cfg(srv.url, concurrency=3), n=9)
        elapsed = time.perf_counter() - t0
    assert len(done) == 9 and usage.requests == 9
    assert srv.max_in_flight == 3
    assert elapsed < 9 * 0.15  # they did overlap


def test_budget_refuses_a_request_that_could_pass_it():
    price = Price(1000.0, 1000.0)  # $0.001 per token: the 64-token reply alone may cost $0.064
    with ScriptedTeacher(echo, tokens=(5, 10)) as srv:
        with pytest.raises(BudgetExhausted):
            run_chats(cfg(srv.url, price=price, budget_usd=0.05))
        assert srv.requests == []  # refused before sending
        (done,), usage = run_chats(cfg(srv.url, price=price, budget_usd=0.2))
        assert usage.cost_usd == pytest.approx(0.015)
        # a resumed run carries what was spent: 0.2 - 0.015 - 0.015 leaves too little for a worst-case third
        with pytest.raises(BudgetExhausted):
            run_chats(cfg(srv.url, price=price, budget_usd=0.2), n=3, usage=usage)
    assert usage.cost_usd <= 0.2


def test_budget_needs_a_price():
    with pytest.raises(LlamabrewError, match="needs a price"):
        Teacher(cfg("http://127.0.0.1:9", budget_usd=1.0, model="my-local-model"))


def test_missing_usage_is_estimated():
    with ScriptedTeacher(echo, usage=False) as srv:
        _, usage = run_chats(cfg(srv.url))
    assert usage.estimated_tokens and usage.prompt_tokens > 0 and usage.completion_tokens > 0


def test_connection_refused_is_retried_then_reported():
    with pytest.raises(TeacherError, match="connection error"):
        run_chats(cfg("http://127.0.0.1:9/v1", max_retries=1))


def test_retry_after_forms_and_backoff_jitter():
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("soon") is None
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= parse_retry_after(future) <= 31
    t = Teacher(cfg("http://x", backoff_base_s=1.0, backoff_max_s=8.0), seed=1)
    waits = [t._backoff(3) for _ in range(20)]
    assert all(4.0 <= w <= 8.0 for w in waits) and len(set(waits)) > 1
    assert t._backoff(10) <= 8.0


def test_price_table(tmp_path: Path):
    assert price_for("gpt-4o-mini-2024-07-18") == Price(0.15, 0.60)  # longest prefix, not gpt-4o
    assert price_for("llama-local") is None
    f = tmp_path / "prices.json"
    f.write_text(json.dumps({"llama-local": {"input": 0, "output": 0.5}}))
    assert price_for("llama-local", load_prices(f)) == Price(0, 0.5)
    f.write_text(json.dumps({"m": {"input": "cheap"}}))
    with pytest.raises(InputError, match="prices.json: field 'm'"):
        load_prices(f)
