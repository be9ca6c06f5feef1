"""The official `openai` package against the server: models, chat, streaming, completions, error types."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from llamabrew.engines import Sampling
from llamabrew.engines.torch_engine import open_torch_engine
from llamabrew.serve.api import create_app
from llamabrew.serve.registry import open_registry, served_name
from llamabrew.serve.server import run_in_thread

KEY = "sk-local-test"
Q = [{"role": "user", "content": "Where was Mira Lanthorn born?"}]


@pytest.fixture(scope="module")
def name(tiny_model_dir: Path) -> str:
    return served_name(str(tiny_model_dir))


@pytest.fixture(scope="module")
def url(tiny_model_dir: Path):
    with run_in_thread(create_app(open_registry(str(tiny_model_dir)), api_key=KEY)) as url:
        yield url + "/v1"


@pytest.fixture
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=60)


def test_models_list_and_retrieve(client: openai.OpenAI, name: str) -> None:
    assert [m.id for m in client.models.list()] == [name]
    assert client.models.retrieve(name).id == name


def test_chat_matches_the_engine_and_counts_usage(client: openai.OpenAI, name: str,
                                                  tiny_model_dir: Path) -> None:
    out = client.chat.completions.create(model=name, messages=Q, max_tokens=10, temperature=0, seed=1)
    engine = open_torch_engine(str(tiny_model_dir))
    assert out.choices[0].message.content == "".join(engine.stream(Q, Sampling(10, temperature=0.0, seed=1)))
    assert out.choices[0].message.role == "assistant" and out.model == name
    assert out.choices[0].finish_reason == engine.last.finish_reason
    assert out.usage.prompt_tokens == engine.last.prompt_tokens
    assert out.usage.completion_tokens == engine.last.completion_tokens
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_streaming_chat_with_usage(client: openai.OpenAI, name: str) -> None:
    whole = client.chat.completions.create(model=name, messages=Q, max_tokens=12, temperature=0)
    chunks = list(client.chat.completions.create(model=name, messages=Q, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage == whole.usage


def test_completions_and_vllm_style_extra_fields(client: openai.OpenAI, name: str) -> None:
    out = client.completions.create(model=name, prompt="Once upon a time", max_tokens=5, temperature=0,
                                    extra_body={"top_k": 1, "repetition_penalty": 1.0})
    assert out.usage.completion_tokens == 5 and out.choices[0].finish_reason == "length"
    streamed = client.completions.create(model=name, prompt="Once upon a time", max_tokens=5, temperature=0,
                                         stream=True, extra_body={"top_k": 1, "repetition_penalty": 1.0})
    assert "".join(c.choices[0].text for c in streamed) == out.choices[0].text


def test_errors_arrive_as_the_openai_exception_types(client: openai.OpenAI, url: str, name: str) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=Q)
    assert e.value.code == "model_not_found" and e.value.param == "model"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=name, messages=[{"role": "user", "content": "fox " * 600}])
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=name, messages=Q, max_tokens=-1)
    assert e.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=name, messages=[])
    assert e.value.code == "empty_array"
    with pytest.raises(openai.AuthenticationError) as e:
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
    assert e.value.code == "invalid_api_key" and "wrong" not in str(e.value)
    assert client.chat.completions.create(model=name, messages=Q, max_tokens=2).choices[0].message.content
