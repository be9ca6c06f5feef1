"""CPU decode speed of llama.cpp (q4_0, q8_0, f16, q4_k_m) and transformers `generate`, vs memory bandwidth.

Builds a random-weight LLaMA (~0.35B parameters by default), exports it with llamabrew's GGUF writer (f16
checked against torch), then measures greedy decode tokens/s for

* llama-cpp-python called directly (`Llama.create_completion`, streaming),
* llamabrew's `LlamaCppEngine` on the same file and prompt (goal: within 5% of the direct call),
* transformers' CPU `generate` in bf16 on the same model (goal: q4_0 at least 3x faster),

and the machine's read bandwidth. Decoding is memory-bound: every token reads every weight once, so
(bytes read per token x tokens/s) / bandwidth is the fraction of the hardware limit reached (goal: f16 and
q8_0 at 70% or more). Results go to benchmarks/RESULTS.md (its `cpu_decode` section only).

    python benchmarks/cpu_decode.py [--hidden 1024 --layers 24] [--tokens 128] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import tempfile
import time
from pathlib import Path

import torch

from llamabrew.data.templates import BUILTIN
from llamabrew.export.gguf_tokenizer import build_vocab
from llamabrew.export.gguf_writer import ChatInfo, write_gguf
from llamabrew.export.verify import reference_logits, verify_gguf
from llamabrew.serve.engines import Sampling
from llamabrew.serve.llamacpp import LlamaCppEngine, default_threads, extra_buffers_work, load_llama

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
    engine.llm.reset()
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


def measure_gguf(path: Path, ids: list[int], tokens: int, threads: int) -> tuple[float, float]:
    """(direct, engine) tokens/s, best of three alternating runs each after a warm-up (weights paged in);
    the best run is the one least disturbed by other processes."""
    llm = load_llama(path, n_ctx=512, threads=threads)
    engine = LlamaCppEngine(path, threads=threads, ctx=512, announce=False)
    time_direct(llm, ids, 8)
    time_engine(engine, ids, 8)
    direct, ours = [], []
    for _ in range(3):
        direct.append(time_direct(llm, ids, tokens))
        ours.append(time_engine(engine, ids, tokens))
    engine.close()
    llm.close()
    return max(direct), max(ours)


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
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="default: free cores")
    ap.add_argument("--quants", default="q4_0,q8_0,f16,q4_k_m")
    ap.add_argument("--no-results", action="store_true", help="do not update benchmarks/RESULTS.md")
    args = ap.parse_args()
    threads = args.threads or default_threads()
    t_start = time.perf_counter()
    model, tok = build_model(args.hidden, args.layers, args.vocab)
    n_params = sum(p.numel() for p in model.parameters())
    embed = model.model.embed_tokens.weight.numel()
    bufs = "on" if extra_buffers_work() else "off: this build's AMX kernels crash on this CPU/VM"
    print(f"model: {n_params / 1e9:.3f}B params, hidden {args.hidden}, {args.layers} layers; "
          f"threads {threads}; "
          f"llama.cpp extra weight buffers (AMX / repacking): {bufs}")
    template = BUILTIN["alpaca"]
    text = template.render(tok, [{"role": "user", "content": PROMPT}], True)
    ids = tok(text, add_special_tokens=True)["input_ids"]
    vocab = build_vocab(tok, model.config.vocab_size, template.stop)
    chat = ChatInfo(template.jinja, template.name, template.stop)
    torch.set_num_threads(threads)
    ref = reference_logits(model, tok, template, prompts=(PROMPT,))
    rows, state = [], model.state_dict()
    with tempfile.TemporaryDirectory() as tmp:
        for quant in args.quants.split(","):
            t0 = time.perf_counter()
            path = write_gguf(state, model.config, vocab, chat, Path(tmp) / f"bench-{quant}.gguf", quant,
                              threads=threads)
            note = f"written in {time.perf_counter() - t0:.0f}s"
            if quant == "f16":
                check = verify_gguf(path, ref, quant, threads)
                note += f"; {check.summary()}"
            direct, ours = measure_gguf(path, ids, args.tokens, threads)
            rows.append((quant, path.stat().st_size, bytes_per_token(path), direct, ours, note))
            print(f"{quant}: direct {direct:.1f} tok/s, engine {ours:.1f} tok/s ({note})", flush=True)
    bf16 = model.to(torch.bfloat16)
    torch_tps = time_torch(bf16, ids, args.tokens // 2, threads)
    torch_bytes = 2 * (n_params - embed)
    bw = bandwidth(threads)
    print(f"transformers bf16 generate: {torch_tps:.1f} tok/s; read bandwidth {bw / 1e9:.1f} GB/s")

    lines = [f"## CPU decode ({time.strftime('%Y-%m-%d')}, `benchmarks/cpu_decode.py`)", "",
             f"Machine: {platform.processor() or platform.machine()} "
             f"{_cpu_name()}, {threads} threads, read bandwidth {bw / 1e9:.1f} GB/s (torch sum over 1 GiB). "
             f"Model: random LLaMA, {n_params / 1e9:.3f}B params (hidden {args.hidden}, {args.layers} layers,"
             " "
             f"vocab {args.vocab}); greedy decode of {args.tokens} tokens after a {len(ids)}-token prompt. "
             f"llama.cpp extra weight buffers (AMX / repacking): {bufs}.",
             "", "| engine | file MiB | MB read/token | tok/s | GB/s | of bandwidth limit | vs torch bf16 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for quant, size, per_tok, direct, ours, _ in rows:
        for label, tps in ((f"llama.cpp {quant} (direct)", direct), (f"llamabrew engine {quant}", ours)):
            lines.append(f"| {label} | {size / 2**20:.0f} | {per_tok / 1e6:.0f} | {tps:.1f} | "
                         f"{per_tok * tps / 1e9:.1f} | {per_tok * tps / bw:.0%} | {tps / torch_tps:.1f}x |")
    lines.append(f"| transformers bf16 generate | - | {torch_bytes / 1e6:.0f} | {torch_tps:.1f} | "
                 f"{torch_bytes * torch_tps / 1e9:.1f} | {torch_bytes * torch_tps / bw:.0%} | 1.0x |")
    goals = []
    by_quant = {r[0]: r for r in rows}
    for quant, _, _, direct, ours, _ in rows:
        goals.append(f"- engine vs direct, {quant}: {ours / direct:.1%} (goal >= 95%)")
    for quant in ("f16", "q8_0"):
        if quant in by_quant:
            _, _, per_tok, direct, _, _ = by_quant[quant]
            goals.append(f"- {quant} of bandwidth limit: {per_tok * direct / bw:.0%} (goal >= 70%)")
    if "q4_0" in by_quant:
        goals.append(f"- q4_0 vs transformers bf16: {by_quant['q4_0'][3] / torch_tps:.1f}x (goal >= 3x)")
    notes = [f"- {quant}: {note}" for quant, *_, note in rows]
    text = "\n".join(lines + ["", "Goals:", *goals, "", "Export:", *notes,
                              "", f"Total benchmark time {time.perf_counter() - t_start:.0f}s."])
    print("\n" + text)
    if not args.no_results:
        write_results(text)


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.is_file() else ""
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
    return names[0] if names else ""


if __name__ == "__main__":
    main()
