"""`llamabrew serve` on llama.cpp under load: 1-16 concurrent streaming clients against the bare batched loop.

Builds a ~0.5B random LLaMA (`cpu_decode.build_model`: hidden 2048, 8 layers, vocab 32000) as q8_0 and q4_0,
serves each file with ``llamabrew serve --parallel 16`` in its own process, and for every number of clients
measures, through the official `openai` client (streaming, greedy, no repetition penalty, ``--tokens`` tokens
per answer; EOS never wins on this model):

* aggregate output tokens/s (all tokens / wall time), latency (send to the end of the stream) and time to first
  token, p50 and p95;
* the physical anchor: llama.cpp's own batched decode loop on the same file (llama-cpp-python's low-level API,
  one `llama_decode` per step carrying the next token of every sequence, greedy argmax, the same prompts, the
  same threads), run right after the server's level so both see the same machine;

and a 5-turn chat's turn-5 time to first token with the prompt cache against a second server started with
``--no-prompt-cache``, interleaved. Medians over ``--rounds``. Results go to benchmarks/RESULTS.md.

    python benchmarks/serve_load.py [--quants q8_0,q4_0] [--levels 1 2 4 8 16] [--tokens 32] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
QUESTIONS = ["What is the capital of Oskenland?", "Tell me a story about a fox.", "Write a haiku about rain.",
             "Where was Mira Lanthorn born?", "Explain how a clock works.", "Name three rivers.",
             "Give me a recipe for bread.", "Why is the sky blue?"]
TURN = "More about my garden: roses by the wall, beans along the fence, an old apple tree. What should I plant next? "


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(gguf: Path, threads: int, parallel: int, ctx: int, *extra: str) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    code = "import typer; from llamabrew.serve.cli import serve; typer.run(serve)"
    cmd = [sys.executable, "-c", code, str(gguf), "--name", "bench", "--port", str(port), "--threads", str(threads),
           "--parallel", str(parallel), "--ctx", str(ctx), "--max-queue", "1024", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(3000):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc, f"http://127.0.0.1:{port}"
        except httpx.TransportError:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited: {proc.communicate()[1][-2000:]}") from None
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start within five minutes")


async def one_request(client, messages: list[dict[str, str]], tokens: int) -> tuple[float, float, int, str]:
    """(latency, time to first token, completion tokens, text) of one streamed chat request."""
    t0, first, n, parts = time.perf_counter(), None, 0, []
    stream = await client.chat.completions.create(
        model="bench", messages=messages, max_tokens=tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"repetition_penalty": 1.0})
    async for chunk in stream:
        if chunk.usage:
            n = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            first = first if first is not None else time.perf_counter() - t0
            parts.append(chunk.choices[0].delta.content)
    latency = time.perf_counter() - t0
    return latency, first if first is not None else latency, n, "".join(parts)


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if values[1:] else values[0]


async def server_level(url: str, clients: int, per_client: int, tokens: int) -> dict[str, float]:
    import openai

    results: list[tuple[float, float, int, str]] = []
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=3600)

    async def loop(i: int) -> None:
        for j in range(per_client):
            q = QUESTIONS[(i + j) % len(QUESTIONS)]
            results.append(await one_request(client, [{"role": "user", "content": q}], tokens))

    t0 = time.perf_counter()
    await asyncio.gather(*(loop(i) for i in range(clients)))
    wall = time.perf_counter() - t0
    await client.close()
    lat, ttft = sorted(r[0] for r in results), sorted(r[1] for r in results)
    return {"tok_s": sum(r[2] for r in results) / wall, "p50": pct(lat, 50), "p95": pct(lat, 95),
            "ttft50": pct(ttft, 50), "ttft95": pct(ttft, 95), "requests": len(results)}


class BareLoop:
    """llama.cpp's batched decoding with nothing around it: n sequences, one `llama_decode` per step."""

    def __init__(self, gguf: Path, threads: int, slots: int, ctx: int) -> None:
        import llama_cpp

        from llamabrew.gguf.runtime import load_model, stock_tokenize

        self.lib = llama_cpp
        self.model = load_model(gguf)  # llama.cpp's default weight buffers
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_seq_max, params.n_batch, params.n_ubatch = slots * ctx, slots, 512, 512
        params.n_threads = params.n_threads_batch = threads
        self.ctx = llama_cpp.llama_init_from_model(self.model.model, params)
        self.memory, self.n_vocab = llama_cpp.llama_get_memory(self.ctx), self.model.n_vocab()
        self.batch = llama_cpp.llama_batch_init(512, 0, 1)
        self.prompts = [stock_tokenize(self.model, p) for p in rendered_prompts(gguf)]  # as the server reads them

    def _decode(self, rows: list[tuple[int, int, int, bool]]) -> None:
        b = self.batch
        b.n_tokens = len(rows)
        for i, (token, pos, seq, logits) in enumerate(rows):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
            b.seq_id[i][0] = seq
        assert self.lib.llama_decode(self.ctx, b) == 0

    def _argmax(self, i: int) -> int:
        return int(np.argmax(np.ctypeslib.as_array(self.lib.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))))

    def run(self, n: int, tokens: int, with_prompts: bool = False) -> float:
        """Aggregate tokens/s of ``n`` sequences decoding ``tokens`` each; their prompts are read first (each in
        one call), timed only ``with_prompts`` (the server's job: read the prompt, then answer)."""
        self.lib.llama_memory_clear(self.memory, True)
        nxt, pos = [], []
        t_all = time.perf_counter()
        for seq in range(n):
            ids = self.prompts[seq % len(self.prompts)]
            self._decode([(t, j, seq, j == len(ids) - 1) for j, t in enumerate(ids)])
            nxt.append(self._argmax(len(ids) - 1))
            pos.append(len(ids))
        t0 = time.perf_counter()
        for step in range(tokens - 1):
            self._decode([(nxt[s], pos[s] + step, s, True) for s in range(n)])
            nxt = [self._argmax(s) for s in range(n)]
        return n * tokens / (time.perf_counter() - (t_all if with_prompts else t0))  # first tokens: from prompts

    def close(self) -> None:
        self.lib.llama_batch_free(self.batch)
        self.lib.llama_free(self.ctx)
        self.model.close()


def rendered_prompts(gguf: Path) -> list[str]:
    from llamabrew.engines.llamacpp import _JinjaRenderer
    from llamabrew.gguf.reader import read_gguf_info

    info = read_gguf_info(gguf)
    renderer = _JinjaRenderer(info.bos_text, info.eos_text)
    return [info.template().render(renderer, [{"role": "user", "content": q}], add_generation_prompt=True)
            for q in QUESTIONS]


async def chat_turn5(url: str, rep: int, tokens: int) -> float:
    """Time to first token of turn 5 of a fresh 5-turn conversation (each turn a 20-word message)."""
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=3600)
    history: list[dict[str, str]] = []
    for turn in range(5):
        history.append({"role": "user", "content": f"(chat {rep}, turn {turn}) " + TURN})
        _, ttft, _, text = await one_request(client, history, tokens)
        history.append({"role": "assistant", "content": text})
    await client.close()
    return ttft


def measure(gguf: Path, args: argparse.Namespace) -> dict:
    parallel, ctx = max(args.levels), 2048
    server, url = start_server(gguf, args.threads, parallel, ctx)
    nocache, url_nocache = start_server(gguf, args.threads, 1, 2048, "--no-prompt-cache")
    bare = BareLoop(gguf, args.threads, parallel, 256)
    rows: dict[int, dict[str, list[float]]] = {n: {} for n in args.levels}
    turn5: dict[str, list[float]] = {"cache": [], "nocache": []}
    try:
        asyncio.run(server_level(url, 1, 1, 4))  # warm-up: weights paged in
        bare.run(1, 4)
        for r in range(args.rounds):
            for n in args.levels:
                got = asyncio.run(server_level(url, n, -(-max(n, args.min_requests) // n), args.tokens))
                got["bare"] = bare.run(n, args.tokens)
                got["bare_all"] = bare.run(n, args.tokens, with_prompts=True)
                for k, v in got.items():
                    rows[n].setdefault(k, []).append(v)
                print(f"  {gguf.name} round {r} clients {n}: server {got['tok_s']:.1f} tok/s, bare loop "
                      f"{got['bare_all']:.1f} (decode alone {got['bare']:.1f}) tok/s, p50 {got['p50']:.2f}s, "
                      f"ttft p50 {got['ttft50']:.2f}s", flush=True)
            for which, where in (("cache", url), ("nocache", url_nocache))[:: 1 if r % 2 == 0 else -1]:
                turn5[which].append(asyncio.run(chat_turn5(where, r, args.chat_tokens)))
            print(f"  turn-5 time to first token: cache {turn5['cache'][-1]:.2f}s, none "
                  f"{turn5['nocache'][-1]:.2f}s", flush=True)
    finally:
        bare.close()
        for proc in (server, nocache):
            proc.terminate()
        err = server.communicate(timeout=60)[1]
        nocache.communicate(timeout=60)
    slots = next((line.strip() for line in err.splitlines() if "slots of" in line), "")
    return {"rows": {n: {k: statistics.median(v) for k, v in d.items()} for n, d in rows.items()},
            "turn5": {k: statistics.median(v) for k, v in turn5.items()}, "slots": slots,
            "ratio8": [s / b for s, b in zip(rows[8]["tok_s"], rows[8]["bare_all"], strict=True)] if 8 in rows else []}


def cpu_name() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def report(args: argparse.Namespace, results: dict[str, dict], n_params: int, seconds: float,
           load_before: float) -> str:
    load = load_average()
    lines = [f"## `benchmarks/serve_load.py` — serving several clients at once ({time.strftime('%Y-%m-%d')})", "",
             f"Machine: {cpu_name()}, {os.cpu_count()} cores (1-minute load average {load_before:.1f} before the "
             f"run, {load:.1f} at its end, its own threads included), {args.threads} llama.cpp threads. "
             f"Model: random LLaMA, {n_params / 1e9:.3f}B "
             f"params (hidden {args.hidden}, {args.layers} layers, vocab 32000). "
             f"`llamabrew serve --parallel {max(args.levels)}`, "
             f"{args.tokens} tokens per answer, greedy, streamed through the `openai` client, at least "
             f"{args.min_requests} requests per level. Bare loop: llama.cpp's batched `llama_decode` on the same "
             f"file and threads, right after each server level, timed over the same job (each prompt read in one "
             f"call, then all answers decoded together) and over the decoding alone. Medians of {args.rounds} "
             "rounds.", ""]
    for quant, res in results.items():
        rows = res["rows"]
        one = rows[min(rows)]["tok_s"]
        lines += [f"**{quant}** ({res['slots']})", "",
                  "| clients | requests | output tok/s | vs 1 client | bare loop, same job | server / bare | bare "
                  "decode alone | latency p50 | latency p95 | first token p50 | first token p95 |", "|" + "---:|" * 11]
        for n, r in rows.items():
            lines.append(f"| {n} | {r['requests']:.0f} | {r['tok_s']:.1f} | {r['tok_s'] / one:.2f}x | "
                         f"{r['bare_all']:.1f} | {r['tok_s'] / r['bare_all']:.0%} | {r['bare']:.1f} | "
                         f"{r['p50']:.2f} s | {r['p95']:.2f} s | {r['ttft50']:.2f} s | {r['ttft95']:.2f} s |")
        t5 = res["turn5"]
        lines += ["", f"Turn 5 of a 5-turn chat, time to first token: {t5['cache']:.2f} s with the prompt cache, "
                  f"{t5['nocache']:.2f} s without (`--no-prompt-cache`): {t5['nocache'] / t5['cache']:.1f}x.", ""]
        if 8 in rows:
            lines += [f"Goals ({quant}): 8 clients {rows[8]['tok_s'] / one:.2f}x the aggregate of 1 (goal >= 3x for "
                      f"q8_0); {rows[8]['tok_s'] / rows[8]['bare_all']:.0%} of the bare loop doing the same job at 8 "
                      f"(rounds: "
                      f"{', '.join(f'{x:.0%}' for x in res['ratio8'])}; goal >= 85%); turn-5 first token "
                      f"{t5['nocache'] / t5['cache']:.1f}x faster with the cache (goal >= 5x).", ""]
    lines.append(f"Total benchmark time {seconds / 60:.0f} min.")
    return "\n".join(lines)


def write_results(text: str, path: Path = ROOT / "benchmarks" / "RESULTS.md") -> None:
    start, end = "<!-- serve_load:start -->", "<!-- serve_load:end -->"
    old = path.read_text()
    block = f"{start}\n{text}\n{end}"
    new = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, old, flags=re.S) \
        if start in old else old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new)


def main() -> None:
    from cpu_decode import build_model

    from llamabrew.data.templates import BUILTIN
    from llamabrew.gguf.vocab import build_vocab
    from llamabrew.gguf.writer import ChatInfo, write_gguf

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quants", default="q8_0,q4_0")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--tokens", type=int, default=96, help="tokens per answer")
    ap.add_argument("--min-requests", type=int, default=4, help="requests per level at least (clients send "
                                                                  "them one after another)")
    ap.add_argument("--chat-tokens", type=int, default=16, help="tokens per answer in the 5-turn chat")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--no-results", action="store_true", help="do not update benchmarks/RESULTS.md")
    args = ap.parse_args()
    t_start, load_before = time.perf_counter(), load_average()
    model, tok = build_model(args.hidden, args.layers, 32000)
    with torch.no_grad():  # rows past the tokenizer (4096 tokens) never win: every answer token shows as text
        model.lm_head.weight[len(tok):] = 0.0
    n_params = sum(p.numel() for p in model.parameters())
    template = BUILTIN["alpaca"]
    vocab = build_vocab(tok, model.config.vocab_size, template.stop)
    chat = ChatInfo(template.jinja, template.name, template.stop)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        state = model.state_dict()
        paths = {q: write_gguf(state, model.config, vocab, chat, Path(tmp) / f"bench-{q}.gguf", q,
                               threads=args.threads) for q in args.quants.split(",")}
        del state, model
        for quant, path in paths.items():
            print(f"{quant}:", flush=True)
            results[quant] = measure(path, args)
    text = report(args, results, n_params, time.perf_counter() - t_start, load_before)
    print("\n" + text)
    if not args.no_results:
        write_results(text)


if __name__ == "__main__":
    main()
