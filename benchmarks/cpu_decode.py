"""CPU decode speed of llama.cpp (q4_0, q8_0, f16, q4_k_m) and transformers `generate`, vs memory bandwidth.

Builds a random-weight LLaMA (~0.5B parameters by default, with the 2048 width of 1B-class models), exports it
with llamabrew's GGUF writer (f16 checked against torch), then measures greedy decode tokens/s for

* llama-cpp-python called directly (`Llama.create_completion`, streaming),
* llamabrew's `LlamaCppEngine` on the same file and prompt (goal: within 5% of the direct call),
* transformers' CPU `generate` in bf16 on the same model (goal: q4_0 at least 3x faster),

and the machine's read bandwidth. Decoding is memory-bound: every token reads every weight once, so
(bytes read per token x tokens/s) / bandwidth is the fraction of the hardware limit reached (goal: f16 and
q8_0 at 70% or more). Results go to benchmarks/RESULTS.md (its `cpu_decode` section only).

    python benchmarks/cpu_decode.py [--hidden 2048 --layers 8] [--tokens 128] [--rounds 5] [--threads N]
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import platform
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from statistics import median

import torch

from llamabrew.data.templates import BUILTIN
from llamabrew.engines import Sampling
from llamabrew.engines.llamacpp import LlamaCppEngine
from llamabrew.export.verify import reference_logits, verify_gguf
from llamabrew.gguf.runtime import default_threads, extra_buffers_work, load_llama
from llamabrew.gguf.vocab import build_vocab
from llamabrew.gguf.writer import ChatInfo, write_gguf

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT.parent / "shared" / "data" / "self_instruct_seed_tasks.jsonl"
PROMPT = "Write a short story about a clockmaker who lives by the river."
GREEDY = Sampling(temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0)


def build_model(hidden: int, layers: int, vocab: int, seed: int = 0):
    """A random LLaMA (GQA, 128-dim heads) with a byte-level BPE tokenizer; EOS never wins greedy decoding."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from llamabrew.train.tokenizer import train_bpe_tokenizer

    texts = [json.loads(line)["instruction"] for line in SEEDS.read_text().splitlines()] if SEEDS.is_file() \
        else [PROMPT] * 50
    tok = train_bpe_tokenizer(texts * 4, vocab_size=4096)
    heads = hidden // 128
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=int(hidden * 2.75) // 256 * 256,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=max(1, heads // 2), max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight[tok.eos_token_id] = 0.0  # logit 0 < the max of 32k random logits: never stops
    return model, tok


def bandwidth(threads: int, gib: float = 1.0, repeats: int = 6) -> float:
    """Read bandwidth in bytes/s: the best of several multi-threaded sums over a buffer far beyond cache."""
    torch.set_num_threads(threads)
    x = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best


def bytes_per_token(path: Path) -> int:
    """Weight bytes one decode step reads: every tensor except the embedding table (one row per token)."""
    from gguf import GGUFReader

    return sum(int(t.n_bytes) for t in GGUFReader(path).tensors if t.name != "token_embd.weight")


def time_direct(llm, ids: list[int], tokens: int) -> float:
    """tokens/s of llama-cpp-python's own streaming completion on the same prompt ids."""
    llm.reset()
    t0, n = time.perf_counter(), 0
    for _ in llm.create_completion(ids, max_tokens=tokens, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0,
                                   repeat_penalty=1.0, stream=True):
        n += 1
    return n / (time.perf_counter() - t0)


def time_engine(engine: LlamaCppEngine, ids: list[int], tokens: int) -> float:
    """(opened without the prompt cache: it reads the prompt every round, as the direct call after its reset)"""
    sampling = Sampling(**{**GREEDY.__dict__, "max_new_tokens": tokens})
    t0 = time.perf_counter()
    for _ in engine.stream_ids(ids, sampling):
        pass
    return engine.last.completion_tokens / (time.perf_counter() - t0)


def time_torch(model, ids: list[int], tokens: int, threads: int) -> float:
    torch.set_num_threads(threads)
    inputs = torch.tensor([ids])
    with torch.inference_mode():
        model.generate(inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)  # warm-up
        t0 = time.perf_counter()
        out = model.generate(inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    return (out.shape[1] - len(ids)) / (time.perf_counter() - t0)


def time_decode_loop(llm, ids: list[int], tokens: int) -> float:
    """tokens/s of bare `llama_decode` calls, one token each, no sampling: llama.cpp's ceiling from Python."""
    llm.reset()
    llm.eval(ids)
    t0 = time.perf_counter()
    for i in range(tokens):
        llm.eval([ids[i % len(ids)]])
    return tokens / (time.perf_counter() - t0)


@dataclass
class Speeds:
    """Per-round tokens/s of each way of running one GGUF file, measured interleaved."""

    direct: list[float]
    engine: list[float]
    loop: list[float]
    torch: list[float]  # transformers bf16 generate, in the same rounds

    def ratios(self) -> list[float]:
        """engine / direct within each round: both ran back to back, so slow drifts of the machine cancel."""
        return [e / d for e, d in zip(self.engine, self.direct, strict=True)]

    def vs_torch(self) -> list[float]:
        """direct / transformers within each round."""
        return [d / t for d, t in zip(self.direct, self.torch, strict=True)]


def llama_worker(conn: Connection, path: str, ids: list[int], tokens: int, threads: int) -> None:
    """Child process: llama-cpp-python direct and llamabrew's engine on one file, a round per request.
    llama.cpp runs apart from torch because torch's oneDNN releases the AMX tiles after its bf16 kernels, and
    llama.cpp (which configures them once per thread) then dies with SIGILL on its next batched prompt."""
    llm = load_llama(path, n_ctx=512, threads=threads)
    engine = LlamaCppEngine(path, threads=threads, ctx=512, announce=False, parallel=1, prompt_cache=False)
    direct = functools.partial(time_direct, llm, ids, tokens)
    ours = functools.partial(time_engine, engine, ids, tokens)
    time_direct(llm, ids, 8)  # warm-up: weights paged in
    time_engine(engine, ids, 8)
    while (r := conn.recv()) is not None:  # the round number; who goes first alternates
        if r % 2:
            ours_tps, direct_tps = ours(), direct()
        else:
            direct_tps, ours_tps = direct(), ours()
        conn.send((direct_tps, ours_tps, time_decode_loop(llm, ids, tokens)))
    engine.close()
    llm.close()


def measure_gguf(path: Path, ids: list[int], tokens: int, threads: int, rounds: int,
                 torch_speed: Callable[[], float]) -> Speeds:
    """Direct, engine, bare-loop and transformers tokens/s over ``rounds`` rounds; each round runs all four
    back to back, so drifts of the machine's speed cancel in the within-round ratios."""
    parent, child = multiprocessing.get_context("spawn").Pipe()
    worker = multiprocessing.get_context("spawn").Process(target=llama_worker,
                                                          args=(child, str(path), ids, tokens, threads))
    worker.start()
    speeds = Speeds([], [], [], [])
    try:
        for r in range(rounds):
            parent.send(r)
            direct, ours, loop = parent.recv()
            speeds.direct.append(direct)
            speeds.engine.append(ours)
            speeds.loop.append(loop)
            speeds.torch.append(torch_speed())
        parent.send(None)
    finally:
        worker.join(timeout=60)
    if worker.exitcode != 0:
        raise RuntimeError(f"llama.cpp worker for {path.name} exited with {worker.exitcode}")
    return speeds


def gemv_bandwidth(threads: int, mib: int = 512) -> float:
    """Bytes/s that torch's bf16 matrix-vector product streams: what a well-prefetched decode kernel can
    reach on this machine, to tell a memory limit from a kernel limit."""
    torch.set_num_threads(threads)
    matrix = torch.ones(mib * 2**20 // 2 // 4096, 4096, dtype=torch.bfloat16)
    vector = torch.ones(4096, dtype=torch.bfloat16)
    best = float("inf")
    for _ in range(6):
        t0 = time.perf_counter()
        matrix @ vector
        best = min(best, time.perf_counter() - t0)
    return matrix.numel() * 2 / best


def write_results(text: str, path: Path = ROOT / "benchmarks" / "RESULTS.md") -> None:
    """Replace only this benchmark's section, so other benchmarks' figures stay."""
    start, end = "<!-- cpu_decode:start -->", "<!-- cpu_decode:end -->"
    block = f"{start}\n{text}\n{end}"
    old = path.read_text() if path.is_file() else "# Benchmark results\n"
    new = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, old, flags=re.S) \
        if start in old else old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=2048, help="as in 1B-class models (TinyLlama, Llama-3.2-1B)")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved direct/engine rounds per quant")
    ap.add_argument("--threads", type=int, default=None, help="default: free cores")
    ap.add_argument("--quants", default="q4_0,q8_0,f16,q4_k_m")
    ap.add_argument("--no-results", action="store_true", help="do not update benchmarks/RESULTS.md")
    args = ap.parse_args()
    threads = args.threads or default_threads()
    t_start = time.perf_counter()
    model, tok = build_model(args.hidden, args.layers, args.vocab)
    n_params = sum(p.numel() for p in model.parameters())
    embed = model.model.embed_tokens.weight.numel()
    bufs = "on" if extra_buffers_work() else "off: this build's AMX kernels crash here (README: -fno-dse)"
    print(f"model: {n_params / 1e9:.3f}B params, hidden {args.hidden}, {args.layers} layers; threads {threads}; "
          f"llama.cpp extra weight buffers (AMX / repacking): {bufs}")
    template = BUILTIN["alpaca"]
    text = template.render(tok, [{"role": "user", "content": PROMPT}], True)
    ids = tok(text, add_special_tokens=True)["input_ids"]
    vocab = build_vocab(tok, model.config.vocab_size, template.stop)
    chat = ChatInfo(template.jinja, template.name, template.stop)
    torch.set_num_threads(threads)
    ref = reference_logits(model, tok, template, prompts=(PROMPT,))
    paths, notes, state = {}, {}, model.state_dict()
    with tempfile.TemporaryDirectory() as tmp:
        for quant in args.quants.split(","):  # all files first: the f16 check needs the fp32 weights
            t0 = time.perf_counter()
            paths[quant] = write_gguf(state, model.config, vocab, chat, Path(tmp) / f"bench-{quant}.gguf", quant,
                                      threads=threads)
            notes[quant] = f"written in {time.perf_counter() - t0:.0f}s"
            if quant == "f16":
                notes[quant] += f"; {verify_gguf(paths[quant], ref, quant, threads).summary()}"
        del state
        bf16 = model.to(torch.bfloat16)
        torch_speed = functools.partial(time_torch, bf16, ids, args.tokens // 2, threads)
        rows = []
        for quant, path in paths.items():
            speeds = measure_gguf(path, ids, args.tokens, threads, args.rounds, torch_speed)
            rows.append((quant, path.stat().st_size, bytes_per_token(path), speeds, notes[quant]))
            print(f"{quant}: direct {median(speeds.direct):.1f}, engine {median(speeds.engine):.1f}, "
                  f"decode loop {median(speeds.loop):.1f}, transformers {median(speeds.torch):.1f} tok/s",
                  flush=True)
    torch_tps = median(t for row in rows for t in row[3].torch)
    torch_bytes = 2 * (n_params - embed)
    del model, bf16
    read, gemv = bandwidth(threads), gemv_bandwidth(threads)
    print(f"transformers bf16 generate: {torch_tps:.1f} tok/s; torch sum {read / 1e9:.1f} GB/s, "
          f"torch bf16 GEMV {gemv / 1e9:.1f} GB/s")
    text = report(args, rows, ids, n_params, threads, bufs, (read, gemv), torch_tps, torch_bytes)
    text += f"\n\nTotal benchmark time {time.perf_counter() - t_start:.0f}s."
    print("\n" + text)
    if not args.no_results:
        write_results(text)


def report(args: argparse.Namespace, rows: list, ids: list[int], n_params: int, threads: int, bufs: str,
           bandwidths: tuple[float, float], torch_tps: float, torch_bytes: int) -> str:
    """The Markdown section: medians over the rounds, goals, and the export notes. The bandwidth limit is the
    faster of two pure streaming reads (a sum, and a bf16 matrix-vector product: what a decode step does)."""
    read, gemv = bandwidths
    bw = max(bandwidths)
    lines = [f"## CPU decode ({time.strftime('%Y-%m-%d')}, `benchmarks/cpu_decode.py`)", "",
             f"Machine: {platform.processor() or platform.machine()} {_cpu_name()}, {threads} threads, read "
             f"bandwidth {bw / 1e9:.1f} GB/s (the faster of a torch sum over 1 GiB, {read / 1e9:.1f} GB/s, and a "
             f"torch bf16 matrix-vector product over 512 MiB, {gemv / 1e9:.1f} GB/s). Model: random LLaMA, "
             f"{n_params / 1e9:.3f}B params (hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}); "
             f"greedy decode of {args.tokens} tokens after a {len(ids)}-token prompt (transformers: "
             f"{args.tokens // 2}); medians of {args.rounds} interleaved rounds. "
             f"llama.cpp extra weight buffers (AMX / repacking): {bufs}.",
             "", "| engine | file MiB | MB read/token | tok/s | GB/s | of bandwidth limit | vs torch bf16 |",
             "|---|---:|---:|---:|---:|---:|---:|"]

    def row(label: str, size: str, per_tok: float, tps: float) -> str:
        return (f"| {label} | {size} | {per_tok / 1e6:.0f} | {tps:.1f} | {per_tok * tps / 1e9:.1f} | "
                f"{per_tok * tps / bw:.0%} | {tps / torch_tps:.1f}x |")

    for quant, size, per_tok, speeds, _ in rows:
        mib = f"{size / 2**20:.0f}"
        lines += [row(f"llama-cpp-python {quant} (direct)", mib, per_tok, median(speeds.direct)),
                  row(f"llamabrew engine {quant}", mib, per_tok, median(speeds.engine)),
                  row(f"bare llama_decode loop {quant}", mib, per_tok, median(speeds.loop))]
    lines.append(row("transformers bf16 generate", "-", torch_bytes, torch_tps))
    goals = []
    for quant, *_, speeds, _ in rows:
        ratios = speeds.ratios()
        goals.append(f"- engine vs direct, {quant}: {median(ratios):.1%} median (rounds {min(ratios):.1%} to "
                     f"{max(ratios):.1%}; goal >= 95%)")
    by_quant = {r[0]: r for r in rows}
    for quant in ("f16", "q8_0"):
        if quant in by_quant:
            _, _, per_tok, speeds, _ = by_quant[quant]
            goals.append(f"- {quant} of bandwidth limit: engine {per_tok * median(speeds.engine) / bw:.0%}, "
                         f"bare llama.cpp loop {per_tok * median(speeds.loop) / bw:.0%} (goal >= 70%)")
    if "q4_0" in by_quant:
        ratios = by_quant["q4_0"][3].vs_torch()
        goals.append(f"- q4_0 (direct) vs transformers bf16: {median(ratios):.1f}x median (rounds {min(ratios):.1f}x "
                     f"to {max(ratios):.1f}x; goal >= 3x)")
    notes = [f"- {quant}: {note}" for quant, *_, note in rows]
    return "\n".join(lines + ["", "Goals:", *goals, "", "Export:", *notes])


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.is_file() else ""
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
    return names[0] if names else ""


if __name__ == "__main__":
    main()
