"""`llamabrew serve` under load: throughput and latency at 1, 8 and 32 concurrent streaming clients.

The server runs as its own process (``python -m llamabrew.serve.server``, what ``llamabrew serve`` runs), so
the load generator does not share its interpreter. Each client sends streaming chat requests back to back;
every request asks for ``--max-tokens`` tokens (greedy, no repetition penalty: the tiny random model rarely
stops early). Latency is from sending a request to its ``data: [DONE]``; time to first token is to its first
text. One generation runs at a time, so at N clients a request waits for about N-1 others: latency grows with
N while throughput stays flat. That is the intended FIFO queue, not a slowdown.

    python benchmarks/serve_load.py [--model DIR_OR_GGUF] [--requests 48] [--max-tokens 32]

Without ``--model`` it builds the test suite's tiny random LLaMA (hidden 32, 2 layers) in a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

QUESTIONS = ["What is the capital of Oskenland?", "Tell me a story about a fox.", "Write a haiku about rain.",
             "Where was Mira Lanthorn born?"]


def tiny_model(folder: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import build_tiny_model  # the same tiny model the tests use

    return build_tiny_model(folder / "tiny-llama")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, threads: int | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "llamabrew.serve.server", model, "--port", str(port), "--max-queue", "1024"]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(1200):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited with code {proc.returncode}: {' '.join(cmd)}") from None
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start within two minutes")


async def one_request(client: httpx.AsyncClient, question: str, max_tokens: int) -> tuple[float, float, int]:
    """(latency, time to first token, completion tokens) of one streamed chat request."""
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": max_tokens, "temperature": 0,
            "repetition_penalty": 1.0, "stream": True, "stream_options": {"include_usage": True}}
    t0, first, tokens, done = time.perf_counter(), None, 0, False
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            data = line.removeprefix("data: ")
            if not line or data == line:
                continue
            if data == "[DONE]":
                done = True
                break
            event = json.loads(data)
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            elif first is None and event["choices"] and event["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - t0
    if not done:
        raise RuntimeError("a stream ended without data: [DONE]")
    latency = time.perf_counter() - t0
    return latency, first if first is not None else latency, tokens


async def level(url: str, clients: int, requests: int, max_tokens: int) -> dict[str, float]:
    """Run ``requests`` requests spread over ``clients`` concurrent clients."""
    results: list[tuple[float, float, int]] = []
    per_client = max(1, requests // clients)

    async def client_loop(i: int, client: httpx.AsyncClient) -> None:
        for j in range(per_client):
            results.append(await one_request(client, QUESTIONS[(i + j) % len(QUESTIONS)], max_tokens))

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop(i, client) for i in range(clients)))
        wall = time.perf_counter() - t0
    latency = sorted(r[0] for r in results)
    ttft = sorted(r[1] for r in results)

    def pct(values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if values[1:] else values[0]

    return {"clients": clients, "requests": len(results), "wall": wall, "rps": len(results) / wall,
            "tok_s": sum(r[2] for r in results) / wall, "p50": pct(latency, 50), "p95": pct(latency, 95),
            "ttft50": pct(ttft, 50), "ttft95": pct(ttft, 95)}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="model/run directory or .gguf (default: the tests' tiny random LLaMA)")
    ap.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--threads", type=int, help="server CPU threads (default: free cores)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(tiny_model(Path(tmp)))
        port = free_port()
        server = start_server(model, port, args.threads)
        url = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(level(url, 1, 2, args.max_tokens))  # warm-up
            rows = [asyncio.run(level(url, n, args.requests, args.max_tokens)) for n in args.levels]
        finally:
            server.terminate()
            server.wait(30)
    print(f"model: {'tiny random LLaMA (tests/conftest.py)' if not args.model else args.model}; "
          f"{args.max_tokens} tokens per answer, greedy; server: torch on CPU")
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores visible, Python {platform.python_version()}\n")
    print("| clients | requests | req/s | output tok/s | latency p50 | latency p95 | first token p50 | "
          "first token p95 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['clients']} | {r['requests']} | {r['rps']:.1f} | {r['tok_s']:.0f} | {r['p50']:.3f} s | "
              f"{r['p95']:.3f} s | {r['ttft50']:.3f} s | {r['ttft95']:.3f} s |")


if __name__ == "__main__":
    main()
