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

and a 5-turn chat's time to first token, turn by turn, with the prompt cache against a second server started
with ``--no-prompt-cache``, interleaved: on each random file, and on real weights (SmolLM2-135M-Instruct, the
smollm2 extra) whose answers read back as the tokens generated. Medians over ``--rounds``. Results go to
benchmarks/RESULTS.md.

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


async def one_request(client, messages: list[dict[str, str]], tokens: int) -> tuple[float, float, int, str, int, int]:
    """(latency, time to first token, completion tokens, text, prompt tokens, prompt tokens the cache held) of
    one streamed chat request."""
    t0, first, n, parts, prompt, cached = time.perf_counter(), None, 0, [], 0, 0
    stream = await client.chat.completions.create(
        model="bench", messages=messages, max_tokens=tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"repetition_penalty": 1.0})
    async for chunk in stream:
        if chunk.usage:
            n, prompt = chunk.usage.completion_tokens, chunk.usage.prompt_tokens
            cached = chunk.usage.prompt_tokens_details.cached_tokens if chunk.usage.prompt_tokens_details else 0
        if chunk.choices and chunk.choices[0].delta.content:
            first = first if first is not None else time.perf_counter() - t0
            parts.append(chunk.choices[0].delta.content)
    latency = time.perf_counter() - t0
    return latency, first if first is not None else latency, n, "".join(parts), prompt, cached


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if values[1:] else values[0]


async def server_level(url: str, clients: int, per_client: int, tokens: int) -> dict[str, float]:
    import openai

    results: list[tuple] = []
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


async def chat_turns(url: str, rep: int, tokens: int) -> list[tuple[float, int, int]]:
    """(time to first token, prompt tokens, of them from the cache) of each turn of a fresh 5-turn conversation
    (each turn a 20-word message; each answer sent back as the client got it)."""
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=3600)
    history: list[dict[str, str]] = []
    turns = []
    for turn in range(5):
        history.append({"role": "user", "content": f"(chat {rep}, turn {turn}) " + TURN})
        _, ttft, _, text, prompt, cached = await one_request(client, history, tokens)
        history.append({"role": "assistant", "content": text})
        turns.append((ttft, prompt, cached))
    await client.close()
    return turns


def chat_round(urls: dict[str, str], r: int, tokens: int, into: dict[str, list]) -> None:
    """One chat against the server with the prompt cache and one against the server without, the order
    alternating by round."""
    for which in ("cache", "nocache")[:: 1 if r % 2 == 0 else -1]:
        into[which].append(asyncio.run(chat_turns(urls[which], r, tokens)))
    print(f"  turn-5 time to first token: cache {into['cache'][-1][-1][0]:.2f}s, none "
          f"{into['nocache'][-1][-1][0]:.2f}s ({into['cache'][-1][-1][2]} of {into['cache'][-1][-1][1]} prompt "
          "tokens from the cache)", flush=True)


def chat_medians(turns: dict[str, list]) -> dict[str, list[tuple[float, ...]]]:
    """Per server, per turn: the median over rounds of each figure."""
    return {k: [tuple(statistics.median(x) for x in zip(*per_turn, strict=True)) for per_turn in zip(*v, strict=True)]
            for k, v in turns.items()}


def real_chat(args: argparse.Namespace) -> dict | None:
    """The 5-turn chat on real weights (SmolLM2-135M-Instruct from the smollm2 extra), whose answers read back
    as the tokens it generated, as a real model's do; None without the extra."""
    from llamabrew.errors import LlamabrewError
    from llamabrew.gguf.importer import smollm2_gguf

    try:
        gguf = smollm2_gguf()
    except LlamabrewError:
        return None
    server, url = start_server(gguf, args.threads, 2, 2048)
    nocache, url_nocache = start_server(gguf, args.threads, 1, 2048, "--no-prompt-cache")
    turns: dict[str, list] = {"cache": [], "nocache": []}
    try:
        asyncio.run(server_level(url, 1, 1, 4))
        for r in range(args.rounds):
            chat_round({"cache": url, "nocache": url_nocache}, r, args.chat_tokens, turns)
    finally:
        for proc in (server, nocache):
            proc.terminate()
            proc.communicate(timeout=60)
    return {"turns": chat_medians(turns), "file": gguf.name}


def measure(gguf: Path, args: argparse.Namespace) -> dict:
    parallel, ctx = max(args.levels), 2048
    server, url = start_server(gguf, args.threads, parallel, ctx)
    nocache, url_nocache = start_server(gguf, args.threads, 1, 2048, "--no-prompt-cache")
    bare = BareLoop(gguf, args.threads, parallel, 256)
    rows: dict[int, dict[str, list[float]]] = {n: {} for n in args.levels}
    turns: dict[str, list] = {"cache": [], "nocache": []}
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
            chat_round({"cache": url, "nocache": url_nocache}, r, args.chat_tokens, turns)
    finally:
        bare.close()
        for proc in (server, nocache):
            proc.terminate()
        err = server.communicate(timeout=60)[1]
        nocache.communicate(timeout=60)
    slots = next((line.strip() for line in err.splitlines() if "slots of" in line), "")
    return {"rows": {n: {k: statistics.median(v) for k, v in d.items()} for n, d in rows.items()},
            "turns": chat_medians(turns),
            "slots": slots,
            "ratio8": [s / b for s, b in zip(rows[8]["tok_s"], rows[8]["bare_all"], strict=True)] if 8 in rows else []}


def cpu_name() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def turn5_ratio(turns: dict[str, list[tuple[float, ...]]]) -> float:
    return turns["nocache"][-1][0] / turns["cache"][-1][0]


def chat_table(turns: dict[str, list[tuple[float, ...]]], what: str) -> list[str]:
    """Time to first token turn by turn, with and without the cache, and how much of each prompt it held."""
    cache, none = turns["cache"], turns["nocache"]
    return [f"A 5-turn chat ({what}; 20-word messages), time to first token of each turn:", "",
            "| | turn 1 | turn 2 | turn 3 | turn 4 | turn 5 |", "|---|" + "---:|" * 5,
            "| with the prompt cache | " + " | ".join(f"{t[0]:.2f} s" for t in cache) + " |",
            "| without (`--no-prompt-cache`) | " + " | ".join(f"{t[0]:.2f} s" for t in none) + " |",
            "| prompt tokens (of them from the cache) | " + " | ".join(f"{t[1]:.0f} ({t[2]:.0f})" for t in cache)
            + " |"]


def report(args: argparse.Namespace, results: dict[str, dict], n_params: int, seconds: float,
           load_before: float, real: dict | None = None) -> str:
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
        t5 = turn5_ratio(res["turns"])
        lines += ["", *chat_table(res["turns"], f"the same file, {args.chat_tokens}-token answers"), ""]
        if 8 in rows:
            lines += [f"Goals ({quant}): 8 clients {rows[8]['tok_s'] / one:.2f}x the aggregate of 1 (goal >= 3x for "
                      f"q8_0); {rows[8]['tok_s'] / rows[8]['bare_all']:.0%} of the bare loop doing the same job at 8 "
                      f"(rounds: "
                      f"{', '.join(f'{x:.0%}' for x in res['ratio8'])}; goal >= 85%); turn-5 first token "
                      f"{t5:.1f}x faster with the cache (goal >= 5x).", ""]
    if real:
        lines += [f"**Real weights** ({real['file']}, the smollm2 extra): the same chat on a model whose answers read "
                  "back as the tokens it generated (a random model's often do not: its token strings are not how "
                  "the tokenizer splits their text, so the cache holds only the turns before its answer).", "",
                  *chat_table(real["turns"], f"{args.chat_tokens}-token answers"), "",
                  f"Turn 5 (goal >= 5x): {turn5_ratio(real['turns']):.1f}x faster to its first token with the "
                  "cache.", ""]
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
    ap.add_argument("--chat-tokens", type=int, default=96, help="tokens per answer in the 5-turn chat")
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
    print("real weights:", flush=True)
    real = real_chat(args)
    text = report(args, results, n_params, time.perf_counter() - t_start, load_before, real)
    print("\n" + text)
    if not args.no_results:
        write_results(text)


if __name__ == "__main__":
    main()
