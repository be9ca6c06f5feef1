"""The HTTP API on a real uvicorn: adapters by name, streaming, OpenAI-shaped errors, limits, auth, hang-ups.

The server runs on 127.0.0.1 in a background thread of the test process, over the tiny random LLaMA with two
LoRA adapters (random B, so each name really answers differently).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from export.conftest import make_lora_run  # a run as `llamabrew train` writes it (the export tests' helper)

from llamabrew.engines import Sampling
from llamabrew.engines.torch_engine import open_torch_engine
from llamabrew.errors import LlamabrewError
from llamabrew.serve.api import create_app
from llamabrew.serve.registry import RAW, open_registry, plan_adapters, served_name, with_template
from llamabrew.serve.server import parse_adapters, run_in_thread

HI = [{"role": "user", "content": "What is the capital of Oskenland?"}]
LONG = {"messages": [{"role": "user", "content": "Tell me a story about a fox."}], "max_tokens": 480,
        "temperature": 0, "repetition_penalty": 1.0}  # greedy, no EOS on the tiny model: runs to the context


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve-runs")
    return {"pirate": make_lora_run(tiny_model_dir, root / "pirate", seed=1, template="chatml"),
            "poet": make_lora_run(tiny_model_dir, root / "poet", seed=2, template="alpaca")}


@pytest.fixture(scope="module")
def base(tiny_model_dir: Path) -> str:
    return served_name(str(tiny_model_dir))


@pytest.fixture(scope="module")
def registry(runs: dict[str, Path]):
    return open_registry(str(runs["pirate"]), {"poet": str(runs["poet"])})


@pytest.fixture(scope="module")
def url(registry):
    with run_in_thread(create_app(registry)) as url:
        yield url


@pytest.fixture
def client(url: str):
    with httpx.Client(base_url=url, timeout=60) as c:
        yield c


def chat(client: httpx.Client, **body) -> dict:
    r = client.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 8, "temperature": 0, **body})
    assert r.status_code == 200, r.text
    return r.json()


def events(client: httpx.Client, path: str, body: dict) -> list:
    """Every SSE event of a streamed answer, JSON-decoded (``[DONE]`` kept as a string)."""
    with client.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        data = [line.removeprefix("data: ") for line in r.iter_lines() if line]
    return [d if d == "[DONE]" else json.loads(d) for d in data]


def wait_health(client: httpx.Client, **want: int) -> dict:
    for _ in range(200):
        health = client.get("/health").json()
        if all(health[k] == v for k, v in want.items()):
            return health
        time.sleep(0.05)
    raise AssertionError(f"/health never reached {want}: {health}")


# --- models by name -----------------------------------------------------------------------------------------


def test_models_lists_the_runs_adapters_and_base(client: httpx.Client, base: str) -> None:
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    ids = [(m["id"], m["parent"]) for m in models["data"]]
    assert ids == [("pirate", base), ("poet", base), (base, None)]
    assert all(m["max_model_len"] == 512 and m["object"] == "model" for m in models["data"])
    assert client.get("/v1/models/poet").json()["id"] == "poet"
    missing = client.get("/v1/models/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_each_name_answers_with_its_own_adapter_and_template(client: httpx.Client, runs: dict[str, Path],
                                                             tiny_model_dir: Path, base: str) -> None:
    refs = {"pirate": open_torch_engine(str(runs["pirate"])), "poet": open_torch_engine(str(runs["poet"])),
            base: open_torch_engine(str(tiny_model_dir))}
    answers = {}
    for name in ["pirate", "poet", base, "pirate"]:  # switching back and forth on one shared base
        out = chat(client, model=name)
        ref = refs[name]
        assert out["model"] == name
        expected = "".join(ref.stream(HI, Sampling(8, temperature=0.0)))
        assert out["choices"][0]["message"]["content"] == expected
        assert out["usage"]["prompt_tokens"] == ref.count_prompt_tokens(HI)
        answers[name] = out["choices"][0]["message"]["content"]
    assert len(set(answers.values())) == 3
    assert refs["pirate"].template.name == "chatml" and refs["poet"].template.name == "alpaca"


def test_stream_matches_the_whole_answer_and_ends_with_done(client: httpx.Client) -> None:
    whole = chat(client, max_tokens=12)
    got = events(client, "/v1/chat/completions",
                 {"messages": HI, "max_tokens": 12, "temperature": 0,
                  "stream_options": {"include_usage": True}})
    assert got[-1] == "[DONE]"
    chunks = got[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish[-1] == whole["choices"][0]["finish_reason"] and not any(finish[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_completions_continue_the_raw_prompt(client: httpx.Client, tiny_model_dir: Path, base: str) -> None:
    from llamabrew.data.encode import encode_text

    raw = with_template(open_torch_engine(str(tiny_model_dir)), RAW)
    body = {"model": base, "prompt": "The city of Varnhollow", "max_tokens": 6, "temperature": 0}
    out = client.post("/v1/completions", json=body).json()
    assert out["object"] == "text_completion"
    choice = out["choices"][0]
    prompt = [{"role": "user", "content": body["prompt"]}]
    assert choice["text"] == "".join(raw.stream(prompt, Sampling(6, 0.0)))
    assert out["usage"]["prompt_tokens"] == len(encode_text(raw.tokenizer, body["prompt"]))  # no template
    assert out["usage"]["completion_tokens"] == 6 and choice["finish_reason"] == "length"
    streamed = events(client, "/v1/completions", {**body, "prompt": [body["prompt"]]})
    assert streamed[-1] == "[DONE]"
    assert "".join(c["choices"][0]["text"] for c in streamed[:-1]) == choice["text"]


def test_stop_strings_and_seeds(client: httpx.Client) -> None:
    full = chat(client, model="poet", max_tokens=16)["choices"][0]["message"]["content"]
    stop = next(full[i : i + 2] for i in range(len(full) // 2, len(full) - 1)
                if full[i : i + 2].strip() and "\ufffd" not in full[i : i + 2])
    for value in (stop, [stop, "never appears"]):
        cut = chat(client, model="poet", max_tokens=16, stop=value)["choices"][0]
        assert cut["message"]["content"] == full[: full.find(stop)] and cut["finish_reason"] == "stop"
    sampled = {"temperature": 1.0, "top_p": 1.0, "max_tokens": 12, "seed": 7}
    assert chat(client, **sampled)["choices"] == chat(client, **sampled)["choices"]
    parts = [{"type": "text", "text": "What is the capital "}, {"type": "text", "text": "of Oskenland?"}]
    as_parts = chat(client, messages=[{"role": "user", "content": parts}])["choices"][0]
    assert as_parts["message"]["content"] == chat(client)["choices"][0]["message"]["content"]
    nulls = {"n": 1, "stream": None, "stop": None, "presence_penalty": 0, "tools": [], "user": "x"}  # unset
    assert chat(client, **nulls)["choices"] == chat(client)["choices"]


# --- bad input ----------------------------------------------------------------------------------------------

USER = [{"role": "user", "content": "hi"}]
BAD = [  # (path, body, status, param, code)
    ("chat", b"{not json", 400, None, "invalid_json"),
    ("chat", b"[1, 2]", 400, None, "invalid_type"),
    ("chat", b"", 400, None, "invalid_json"),
    ("chat", {}, 400, "messages", "missing_required_parameter"),
    ("chat", {"messages": []}, 400, "messages", "empty_array"),
    ("chat", {"messages": "hi"}, 400, "messages", "invalid_type"),
    ("chat", {"messages": [{"role": "user"}]}, 400, "messages[0].content", "missing_required_parameter"),
    ("chat", {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role", "invalid_value"),
    ("chat", {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content", "invalid_type"),
    ("chat", {"messages": USER, "max_tokens": -5}, 400, "max_tokens", "invalid_value"),
    ("chat", {"messages": USER, "max_tokens": 10**12}, 400, "max_tokens", "invalid_value"),
    ("chat", {"messages": USER, "max_tokens": "16"}, 400, "max_tokens", "invalid_type"),
    ("chat", {"messages": USER, "temperature": 3}, 400, "temperature", "invalid_value"),
    ("chat", {"messages": USER, "stop": [1]}, 400, "stop", "invalid_type"),
    ("chat", {"messages": USER, "stop": ["x"] * 17}, 400, "stop", "invalid_value"),
    ("chat", {"messages": USER, "stream": "yes"}, 400, "stream", "invalid_type"),
    ("chat", {"messages": USER, "model": 5}, 400, "model", "invalid_type"),
    ("chat", {"messages": USER, "model": "../../etc/passwd"}, 404, "model", "model_not_found"),
    ("chat", {"messages": USER, "n": 2}, 400, "n", "unsupported_parameter"),
    ("chat", {"messages": USER, "response_format": {"type": "json_object"}}, 400, "response_format",
     "unsupported_parameter"),
    ("completions", {"prompt": "x", "logit_bias": {"5": 100}}, 400, "logit_bias", "unsupported_parameter"),
    ("chat", {"messages": [{"role": "user", "content": "fox " * 600}]}, 400, "messages",
     "context_length_exceeded"),
    ("completions", {}, 400, "prompt", "missing_required_parameter"),
    ("completions", {"prompt": 5}, 400, "prompt", "invalid_type"),
    ("completions", {"prompt": ["a", "b"]}, 400, "prompt", "unsupported_parameter"),
    ("completions", {"prompt": "fox " * 600}, 400, "prompt", "context_length_exceeded"),
]


@pytest.mark.parametrize(("path", "body", "status", "param", "code"), BAD,
                         ids=[f"{b[0]}-{b[4]}-{b[3]}" for b in BAD])
def test_bad_requests_get_openai_shaped_errors(client: httpx.Client, path: str, body, status: int,
                                               param: str | None, code: str) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = client.post(f"/v1/{'chat/completions' if path == 'chat' else 'completions'}", content=content,
                    headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)


def test_bodies_over_the_limit_are_refused_and_the_server_carries_on(client: httpx.Client) -> None:
    big = json.dumps({"messages": [{"role": "user", "content": "x" * (1 << 20)}]}).encode()
    r = client.post("/v1/chat/completions", content=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    chunked = client.post("/v1/chat/completions", content=(b"x" * 65536 for _ in range(20)))  # no length
    assert chunked.status_code == 413
    assert chat(client)["choices"][0]["finish_reason"] in ("stop", "length")


def test_unknown_routes_and_methods_are_openai_shaped(client: httpx.Client) -> None:
    assert client.get("/v1/nope").json()["error"]["code"] == "not_found"
    r = client.get("/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert client.get("/static/../api.py").status_code == 404


# --- safety -------------------------------------------------------------------------------------------------


def test_api_key_guards_every_v1_route_and_cors_is_opt_in(registry, client: httpx.Client) -> None:
    key = "s3cret-key-value"
    app = create_app(registry, api_key=key, cors_origins=["http://friend.example"])
    with run_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        calls = [("GET", "/v1/models", None), ("GET", "/v1/models/poet", None),
                 ("POST", "/v1/chat/completions", {"messages": USER}),
                 ("POST", "/v1/completions", {"prompt": "x"})]
        for method, path, body in calls:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": key}):
                r = c.request(method, path, json=body, headers=headers)
                assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
                assert key not in r.text
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200
        preflight = {"Origin": "http://friend.example", "Access-Control-Request-Method": "POST"}
        r = c.options("/v1/chat/completions", headers=preflight)
        assert r.headers["access-control-allow-origin"] == "http://friend.example"
        r = c.options("/v1/chat/completions", headers={**preflight, "Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers
    r = client.get("/v1/models", headers={"Origin": "http://friend.example"})  # the default app: CORS off
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    assert client.options("/v1/chat/completions", headers=preflight).status_code == 405


def test_adapter_specs_and_foreign_adapters_are_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    assert parse_adapters(["a=x", " b = y "]) == {"a": "x", "b": "y"}
    for bad in (["nodir"], ["=x"], ["a="], ["a=x", "a=y"]):
        with pytest.raises(LlamabrewError, match="--adapter"):
            parse_adapters(bad)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    cfg = json.loads((runs["poet"] / "adapter_config.json").read_text())
    (foreign / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": "other/base"}))
    with pytest.raises(LlamabrewError, match="trained on 'other/base'"):
        plan_adapters(str(runs["pirate"]), {"foreign": str(foreign)})
    with pytest.raises(LlamabrewError, match="not a PEFT adapter"):
        plan_adapters(str(runs["pirate"]), {"x": str(tmp_path)})
    with pytest.raises(LlamabrewError, match="already served"):
        plan_adapters(str(runs["pirate"]), {"pirate": str(runs["poet"])})


# --- disconnects --------------------------------------------------------------------------------------------


def test_a_client_that_hangs_up_frees_its_slot(client: httpx.Client, url: str, registry, base: str) -> None:
    before = client.get("/health").json()
    t0 = time.monotonic()
    with client.stream("POST", "/v1/chat/completions", json={**LONG, "model": base, "stream": True}) as r:
        for line in r.iter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                break  # hang up after the first piece of text
    wait_health(client, running=0, cancelled=before["cancelled"] + 1)
    assert registry.get(base).engine.last.completion_tokens < 200  # stopped long before its 400+ tokens

    # a non-streaming client that gives up, and one that leaves while waiting in the queue
    with httpx.Client(base_url=url, timeout=httpx.Timeout(60, read=0.2)) as impatient:
        with client.stream("POST", "/v1/chat/completions", json={**LONG, "model": base, "stream": True}) as r:
            next(r.iter_lines())
            with pytest.raises(httpx.ReadTimeout):
                impatient.post("/v1/chat/completions", json={**LONG, "model": base})  # queued behind `r`
        wait_health(client, running=0, waiting=0, cancelled=before["cancelled"] + 3)
        with pytest.raises(httpx.ReadTimeout):
            impatient.post("/v1/chat/completions", json={**LONG, "model": base})  # runs, then is abandoned
    health = wait_health(client, running=0, cancelled=before["cancelled"] + 4)
    assert health["completed"] == before["completed"] and time.monotonic() - t0 < 30
    assert registry.get(base).engine.last.completion_tokens < 300
    assert chat(client)["choices"][0]["message"]["content"]


# --- llama.cpp ----------------------------------------------------------------------------------------------


def test_serves_a_gguf_and_a_lora_gguf_by_name(runs: dict[str, Path], tmp_path: Path) -> None:
    from llamabrew.export import export_adapter_gguf, export_gguf

    model = export_gguf(runs["poet"], "f16", tmp_path / "poet.gguf",
                        verify=False, modelfile=False, verbose=False).results[0].path
    lora = export_adapter_gguf(runs["pirate"], tmp_path / "pirate-lora.gguf")
    reg = open_registry(str(model), {"pirate": str(lora)}, ctx=256, threads=1)
    assert reg.names == ["poet", "pirate"] and reg.get("pirate").parent == "poet"
    with run_in_thread(create_app(reg)) as url, httpx.Client(base_url=url, timeout=60) as c:
        answers = {name: chat(c, model=name)["choices"][0]["message"]["content"] for name in reg.names}
        assert all(answers.values()) and answers["poet"] != answers["pirate"]
        r = c.post("/v1/chat/completions", json={"model": "poet", "messages": [{"role": "user", "content":
                                                                                  "fox " * 300}]})
        assert r.json()["error"]["code"] == "context_length_exceeded"


# --- the command --------------------------------------------------------------------------------------------


def run_serve(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    code = "import typer; from llamabrew.serve.cli import serve; typer.run(serve)"
    env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def invoke(*args: str):
    """`serve` as `llamabrew serve` runs it, in this process."""
    import typer
    from typer.testing import CliRunner

    from llamabrew.serve.cli import serve

    app = typer.Typer()
    app.command()(serve)
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def test_print_vllm_command(runs: dict[str, Path], tiny_model_dir: Path, base: str) -> None:
    result = invoke(str(runs["pirate"]), "--adapter", f"poet={runs['poet']}", "--print-vllm-command")
    assert result.exit_code == 0, result.output
    assert shlex.split(result.stdout.strip()) == [
        "vllm", "serve", str(tiny_model_dir.resolve()), "--served-model-name", base, "--enable-lora",
        "--lora-modules", f"pirate={runs['pirate'].resolve()}", f"poet={runs['poet'].resolve()}",
        "--max-loras", "2", "--max-lora-rank", "8"]
    assert "different chat templates" in result.stderr  # chatml and alpaca cannot share one vLLM server
    alone = invoke(str(runs["pirate"]), "--print-vllm-command").stdout
    assert alone.split()[-2:] == ["--chat-template", str((runs["pirate"] / "chat_template.jinja").resolve())]
    failed = invoke(str(tiny_model_dir / "missing.gguf"))
    assert failed.exit_code == 2 and "no such GGUF file" in failed.stderr
    failed = invoke(str(tiny_model_dir), "--engine", "tgi")
    assert failed.exit_code == 2 and "field 'engine'" in failed.stderr and "'vllm'" in failed.stderr


def test_serve_command_starts_keeps_the_key_private_and_stops(tiny_model_dir: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key = "k-" + "7" * 20
    proc = run_serve(str(tiny_model_dir), "--port", str(port), env={"LLAMABREW_API_KEY": key})
    try:
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None, proc.communicate()[1]
                time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401
        ok = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert [m["id"] for m in ok.json()["data"]] == [served_name(str(tiny_model_dir))]
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert key not in out + err and "API key required" in err and f"localhost:{port}/v1" in err
