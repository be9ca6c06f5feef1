"""Training throughput, side by side in one run: the alpaca-lora and HF QLoRA recipes against llamabrew's fast path.

A LLaMA-7B shape with random weights (``--shape 1b`` / ``tiny`` for smaller ones) trains on Alpaca-like lengths
(lognormal, median 150 tokens, clipped to 60-1024, the first 40% of each example a masked prompt). Each
configuration runs in its own process (a clean peak-memory reading, and one that fails cannot stop the others)
and reports real (non-padding) tokens a second, peak memory and MFU (model FLOPs: 2 × forward for LoRA,
recomputation not counted, as issue 14 counts them), and its ratio to the recipe it is compared with:

- ``alpaca-lora``: LoRA r=8 on q,v; micro-batch 4; cutoff 256; padded to the longest; gradient checkpointing;
  bf16 base; plain loss; sdpa; torch AdamW (the recipe the seeds used).
- ``default``: llamabrew's defaults (LoRA r=16 on every linear layer, micro-batch 4, cutoff 512), fast path auto.
- ``default-flex``: the same with flex attention for the packed rows (where flash-attn is not installed; CUDA only).
- ``default-nocompile``: the same without torch.compile (what compile adds; CUDA only).
- ``fits-24g``: the defaults with the fast path deciding for a 24 GiB card (an RTX 4090).
- ``hf-qlora``: NF4 double-quant base, LoRA r=64 on every linear layer, micro-batch 4, cutoff 512, padded,
  checkpointing, paged AdamW (32-bit): the Hugging Face + PEFT + bitsandbytes QLoRA recipe (CUDA only).
- ``qlora-8g``: llamabrew QLoRA with the same adapter, fast path auto for an 8 GiB budget (CUDA only).
- ``qlora-8g-compile``, ``qlora-8g-mb8``: leads for QLoRA's speed (compiled 4-bit layers; 8 rows a micro-batch
  and half the micro-batches a step), run last.
- ``packed-cpu``: on a CPU only, the defaults with packing forced on (auto keeps it off there; this measures it).

On a GPU (one command, sized for about 9 minutes on an H200 at `--seconds 20`; not run yet):

    python benchmarks/train_throughput.py --device cuda            # 7B shape, prints every figure and the goals

On a CPU (what this machine can run): ``python benchmarks/train_throughput.py --device cpu --shape tiny``.
Results go to benchmarks/RESULTS.md (this benchmark's section only) unless ``--no-results``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]

from alpaca_like import examples, write_alpaca_like  # noqa: E402  (benchmarks/alpaca_like.py)

SHAPES = {  # hidden, layers, intermediate, vocab, heads
    "7b": (4096, 32, 11008, 32000, 32),  # LLaMA-7B
    "1b": (2048, 16, 5504, 32000, 16),
    "tiny": (256, 4, 688, 8000, 4),
}
QV, ALL = ["q_proj", "v_proj"], "all-linear"


@dataclass(frozen=True)
class Config:
    name: str
    lora_r: int
    targets: Any
    cutoff: int
    quant: bool
    recipe_path: bool  # a fixed recipe (padded, sdpa, plain loss, checkpointing), not llamabrew's choice
    optimizer: str = "auto"
    card_gib: float | None = None  # decide the fast path as for a card of this size
    speed: tuple[tuple[str, str], ...] = ()
    packing: str = "auto"
    cuda_only: bool = False
    cpu_only: bool = False
    compared_to: str = "alpaca-lora"
    micro_batch: int = 4  # rows a micro-batch (the step's examples stay micro_batch × --grad-accum)


CONFIGS = [
    Config("alpaca-lora", 8, QV, 256, False, True, "adamw", compared_to=""),
    Config("default", 16, ALL, 512, False, False),
    Config("fits-24g", 16, ALL, 512, False, False, card_gib=24.0),
    Config("packed-cpu", 16, ALL, 512, False, False, packing="on", cpu_only=True),
    Config("hf-qlora", 64, ALL, 512, True, True, "paged_adamw", cuda_only=True, compared_to=""),
    Config("qlora-8g", 64, ALL, 512, True, False, card_gib=8.0, cuda_only=True, compared_to="hf-qlora"),
    Config("default-flex", 16, ALL, 512, False, False, speed=(("attention", "flex"),), cuda_only=True),
    Config("default-nocompile", 16, ALL, 512, False, False, speed=(("compile", "off"),), cuda_only=True),
    # leads for QLoRA's 4x, measured after the rest: compiled 4-bit layers; 8 rows a micro-batch (dequantising each
    # weight once for twice the tokens), half the micro-batches a step
    Config("qlora-8g-compile", 64, ALL, 512, True, False, card_gib=8.0, speed=(("compile", "on"),), cuda_only=True,
           compared_to="hf-qlora"),
    Config("qlora-8g-mb8", 64, ALL, 512, True, False, card_gib=8.0, cuda_only=True, compared_to="hf-qlora",
           micro_batch=8),
]  # in the order they run: what the goals compare first, so a run cut short by --deadline still answers them


def build_model(shape: tuple[int, ...], cfg: Config, device: Any, work: Path) -> Any:
    """Random weights: built on the device in bf16 (fp32 on a CPU, as llamabrew loads there); a 4-bit base goes
    through llamabrew's own loader (from_pretrained + NF4 double-quant) from a saved random bf16 copy."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    hidden, layers, inter, vocab, heads = shape
    config = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=inter, vocab_size=vocab,
                         num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=2048)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if not cfg.quant:
        torch.manual_seed(0)
        with torch.device(device):  # made in its dtype on the device: a 7B never exists in fp32
            return AutoModelForCausalLM.from_config(config, dtype=dtype)
    from llamabrew.models import load_causal_lm

    saved = work / f"random-{'-'.join(map(str, shape))}"
    if not (saved / "config.json").is_file():
        torch.manual_seed(0)
        with torch.device(device):
            AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(saved)
    return load_causal_lm(str(saved), torch.bfloat16, quantize_4bit=True)


def measure(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    """One configuration: build, a few warm-up steps (compilation), then optimizer steps for ``args.seconds``."""
    import torch

    from llamabrew.data.batching import count_tokens, to_device
    from llamabrew.models import pick_dtype
    from llamabrew.recipe import Recipe
    from llamabrew.train import fastpath
    from llamabrew.train.loop import autocast_for, make_optimizer
    from llamabrew.train.memory import ModelShape
    from llamabrew.train.sft import attach_lora

    device = torch.device(args.device)
    dtype = pick_dtype("auto", device)
    shape = SHAPES[args.shape]
    recipe = Recipe.model_validate({
        "model": {"quantize_4bit": cfg.quant}, "data": {"cutoff_len": cfg.cutoff, "packing": cfg.packing},
        "lora": {"r": cfg.lora_r, "alpha": 16 if cfg.recipe_path else 32, "target_modules": cfg.targets},
        "optim": {"micro_batch_size": cfg.micro_batch, "grad_accum": max(1, args.grad_accum * 4 // cfg.micro_batch),
                  "learning_rate": 1e-4,
                  "optimizer": cfg.optimizer, "seed": 0},
        "speed": dict(cfg.speed)})
    model = build_model(shape, cfg, device, Path(args.work))
    env = fastpath.environment(device, dtype)
    if cfg.card_gib is not None and env.card_gib is not None:
        env = fastpath.Environment(env.device, env.installed, min(cfg.card_gib, env.card_gib), env.bf16)
    if cfg.recipe_path:
        fast = fastpath.FastPath(False, "sdpa", "plain", 0, False, True, False, cfg.optimizer)
    else:
        fast = fastpath.choose(recipe, env, ModelShape.from_config(model.config))
    fastpath.prepare_base(model, fast)
    model = attach_lora(model, recipe, checkpointing=fast.gradient_checkpointing)
    fastpath.limit_checkpointing(model, fast)
    fastpath.compile_layers(model, fast)
    optim = recipe.optim.model_copy(update={"optimizer": fast.optimizer})
    optimizer = make_optimizer(model, optim, device)
    data = examples(args.examples, shape[3], cfg.cutoff)
    batcher, objective = fast.batcher(0, cfg.cutoff), fast.objective()
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.train()
    micro, losses = 0, []

    def step() -> int:
        nonlocal micro
        tokens, total, targets = 0, 0.0, 0
        for _ in range(optim.grad_accum or 1):
            batch = batcher.batch(data, optim, micro)
            micro += 1
            tokens += count_tokens(batch)
            with autocast_for(device, dtype):
                out = objective(model, to_device(batch, device))
            out.loss.backward()
            total, targets = total + float(out.loss.detach()), targets + out.targets
        for p in trainable:
            p.grad.div_(max(1, targets))
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total / max(1, targets))
        return tokens

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tokens, steps, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < args.seconds or steps < 2:
        tokens += step()
        steps += 1
        sync()
    seconds = time.perf_counter() - t0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 1024**3
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # the process's peak resident set
    lengths = [len(e) for e in data]
    return {"name": cfg.name, "tokens_per_s": tokens / seconds, "peak_gib": peak, "steps": steps,
            "context": sum(n * n for n in lengths) / sum(lengths), "fast_path": fast.describe(),
            "loss_first": losses[0], "loss_last": losses[-1]}


def peak_flops(device: str, override: float | None, dtype_name: str) -> tuple[float, str]:
    """The device's peak (bf16 dense on a GPU, from train/cards.py by name; a CPU's best measured matmul)."""
    import torch

    if override:
        return override * 1e12, f"{override:g} TFLOP/s (given)"
    if device == "cuda":
        from llamabrew.train.cards import CARDS

        name = torch.cuda.get_device_name(0)
        for key, card in CARDS.items():
            if key.lower() in name.lower().replace("rtx ", ""):
                return card.bf16_tflops * 1e12, f"{name}: {card.bf16_tflops:g} TFLOP/s bf16 dense (data sheet)"
        return 989e12, f"{name}: unknown, 989 TFLOP/s assumed (--peak-tflops)"
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * 1024**3 / best, f"this CPU's best {dtype_name} 1024² matmul, {2 * 1024**3 / best / 1e9:.0f} GFLOP/s"


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every chosen configuration, ``args.rounds`` times interleaved (a shared machine's load moves from minute to
    minute): the median throughput of the rounds, the largest peak."""
    chosen = [c for c in CONFIGS if (not args.configs or c.name in args.configs)
              and not (c.cuda_only and args.device != "cuda") and not (c.cpu_only and args.device == "cuda")]
    runs: dict[str, list[dict[str, Any]]] = {c.name: [] for c in chosen}
    for _ in range(args.rounds):
        for cfg in chosen:
            left = (args.deadline - time.time()) if args.deadline else float(args.config_timeout)
            if left < 60:
                runs[cfg.name].append({"name": cfg.name, "error": "not run: out of time (--deadline)"})
                continue
            cmd = [sys.executable, __file__, "--only", cfg.name, *sys.argv[1:]]
            t0 = time.perf_counter()
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=min(args.config_timeout, left))
                lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
                if done.returncode == 0 and lines:
                    result = json.loads(lines[-1])
                else:
                    why = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
                    result = {"name": cfg.name, "error": why}
            except subprocess.TimeoutExpired:
                result = {"name": cfg.name, "error": f"timed out after {time.perf_counter() - t0:.0f}s"}
            runs[cfg.name].append(result)
            # each result as it comes: a run stopped from outside still leaves its figures in the log
            print(f"  {cfg.name}: {time.perf_counter() - t0:.0f}s {json.dumps(result)}", file=sys.stderr, flush=True)
    results = []
    for rs in runs.values():
        ok = sorted((r for r in rs if "error" not in r), key=lambda r: r["tokens_per_s"])
        if not ok:
            results.append(rs[-1])
            continue
        median = dict(ok[len(ok) // 2])
        median["peak_gib"] = max(r["peak_gib"] for r in ok)
        median["range"] = (ok[0]["tokens_per_s"], ok[-1]["tokens_per_s"])
        results.append(median)
    return results


def report(results: list[dict[str, Any]], args: argparse.Namespace, peak: tuple[float, str]) -> str:
    from llamabrew.train.memory import ModelShape, flops_per_token

    hidden, layers, inter, vocab, heads = SHAPES[args.shape]
    shape = ModelShape(hidden, layers, inter, vocab, heads, heads)
    by_name = {r["name"]: r for r in results}
    rows = ["| configuration | fast path | real tokens/s | peak GiB | MFU | vs | loss first → last |",
            "|---|---|---:|---:|---:|---:|---|"]
    for r in results:
        if "error" in r:
            rows.append(f"| {r['name']} | failed: {r['error']} | | | | | |")
            continue
        mfu = r["tokens_per_s"] * flops_per_token(shape, "lora", r["context"]) / peak[0]
        base = by_name.get(next(c.compared_to for c in CONFIGS if c.name == r["name"]) or "", {})
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}× {base['name']}" if "tokens_per_s" in base else ""
        rng = r.get("range")
        spread = f" ({rng[0]:,.0f}-{rng[1]:,.0f})" if rng and rng[0] != rng[1] else ""
        rows.append(f"| {r['name']} | {r['fast_path']} | {r['tokens_per_s']:,.0f}{spread} | {r['peak_gib']:.1f} | "
                    f"{mfu:.1%} | {ratio} | {r['loss_first']:.2f} → {r['loss_last']:.2f} |")
    goals = []

    def tps(name: str) -> float | None:
        return by_name.get(name, {}).get("tokens_per_s")

    if tps("alpaca-lora") and tps("default"):
        goals.append(f"- default vs alpaca-lora: {tps('default') / tps('alpaca-lora'):.2f}× (goal ≥ 5×, stretch "
                     f"20,000 tokens/s: {tps('default'):,.0f})")
    if tps("alpaca-lora") and tps("fits-24g"):
        goals.append(f"- fits-24g: {by_name['fits-24g']['peak_gib']:.1f} GiB (goal ≤ 24), "
                     f"{tps('fits-24g') / tps('alpaca-lora'):.2f}× alpaca-lora (goal ≥ 4×)")
    if tps("hf-qlora") and tps("qlora-8g"):
        goals.append(f"- qlora-8g: {by_name['qlora-8g']['peak_gib']:.1f} GiB (goal ≤ 8), "
                     f"{tps('qlora-8g') / tps('hf-qlora'):.2f}× hf-qlora (goal ≥ 4×)")
    where = ("Goals (issue 14's, for one H100/H200; a CPU is not expected to meet them):" if args.device == "cpu"
             else "Goals (issue 14, one H100/H200):")
    return "\n".join(rows + (["", where, *goals] if goals else []))


def machine(args: argparse.Namespace) -> str:
    import torch

    if args.device == "cuda":
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return f"{cpu}, {torch.get_num_threads()} threads (shared machine), torch {torch.__version__}"


def write_results(text: str, path: Path = ROOT / "benchmarks" / "RESULTS.md") -> None:
    """Replace only this benchmark's section for this device kind, so other figures stay."""
    kind = "gpu" if "cuda" in text.split("\n", 1)[0] else "cpu"
    start, end = f"<!-- train_throughput_{kind}:start -->", f"<!-- train_throughput_{kind}:end -->"
    block = f"{start}\n{text}\n{end}"
    old = path.read_text() if path.is_file() else "# Benchmark results\n"
    new = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, old, flags=re.S) \
        if start in old else old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--shape", choices=list(SHAPES), default=None, help="default: 7b on cuda, tiny on cpu")
    ap.add_argument("--seconds", type=float, default=None, help="timed seconds per configuration (60 cuda, 30 cpu)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed optimizer steps first (3 cuda, 1 cpu)")
    ap.add_argument("--grad-accum", type=int, default=None, help="micro-batches per optimizer step (8 cuda, 2 cpu)")
    ap.add_argument("--examples", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds, median kept (1 cuda, 3 cpu)")
    ap.add_argument("--configs", nargs="*", help="only these configurations")
    ap.add_argument("--peak-tflops", type=float, help="the device's peak, for MFU")
    ap.add_argument("--work", default="/tmp/llamabrew-bench", help="where a random 4-bit base is saved once")
    ap.add_argument("--config-timeout", type=int, default=900)
    ap.add_argument("--deadline", type=float, help="unix time after which no configuration starts (and a running "
                    "one is stopped): a device lease ends the whole benchmark in time to report")
    ap.add_argument("--no-results", action="store_true", help="do not update benchmarks/RESULTS.md")
    ap.add_argument("--write-alpaca-like", type=Path, metavar="FILE", help="only write a 52,002-example stand-in "
                    "with Alpaca-like lengths (for llamabrew plan) and exit")
    ap.add_argument("--only", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.write_alpaca_like:
        write_alpaca_like(args.write_alpaca_like)
        return
    cuda = args.device == "cuda"
    args.shape = args.shape or ("7b" if cuda else "tiny")
    args.seconds = args.seconds if args.seconds is not None else (60 if cuda else 30)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    args.grad_accum = args.grad_accum or (8 if cuda else 2)
    args.rounds = args.rounds or (1 if cuda else 3)
    if args.only:
        print(json.dumps(measure(next(c for c in CONFIGS if c.name == args.only), args)), flush=True)
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from llamabrew.models import pick_dtype

    dtype = str(pick_dtype("auto", torch.device(args.device))).removeprefix("torch.")
    peak = peak_flops(args.device, args.peak_tflops, dtype)
    t0 = time.perf_counter()
    results = run_all(args)
    h, layers, inter, vocab, _ = SHAPES[args.shape]
    text = (f"## Training throughput on {args.device} ({time.strftime('%Y-%m-%d')}, "
            f"`benchmarks/train_throughput.py --device {args.device} --shape {args.shape}`)\n\n"
            f"Machine: {machine(args)}. Shape `{args.shape}`: hidden {h}, {layers} layers, MLP {inter}, vocabulary "
            f"{vocab}, random weights; {args.examples} Alpaca-like examples (lognormal, median 150 tokens, 60-1024); "
            f"{args.seconds:g} s timed per configuration after {args.warmup} warm-up steps ({args.rounds} interleaved "
            f"round{'s' if args.rounds > 1 else ''}, median, range in brackets), {args.grad_accum} "
            f"micro-batches of 4 a step (`-mb8`: half as many of 8); autocast {dtype}; MFU against {peak[1]}. Peak: "
            f"{'torch.cuda.max_memory_allocated' if cuda else 'the process peak resident set (weights included)'}."
            f"\n\n{report(results, args, peak)}\n\nTotal benchmark time {time.perf_counter() - t0:.0f}s.")
    print(text)
    if not args.no_results:
        write_results(text)


if __name__ == "__main__":
    main()
