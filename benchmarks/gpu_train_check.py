"""Issue 14's fast path on a real CUDA card, beyond throughput: does it compute the same thing, and does
`llamabrew train` learn with it chosen automatically?

1. Same loss and gradients: on one random LLaMA (fp32 weights, so the kernels are compared, not the rounding), the
   padded plain-loss batch against each fast-path combination on the same 8 Alpaca-like examples (packed with sdpa + a
   block-diagonal mask, packed with flex attention, chunked loss, liger's fused linear cross-entropy, liger's
   RMSNorm/RoPE/SwiGLU). Prints the largest relative differences.
2. `llamabrew train` end to end on CUDA through the CLI (fast path auto; QLoRA; DoRA; full fine-tuning): the
   first and last logged loss, the fast path the plan chose, and the run's device-hours.

    python benchmarks/gpu_train_check.py [same lora dora qlora full]   # needs CUDA; one line per check; exit 1 if
                                                                         # any failed

Part of `benchmarks/gpu_run.sh run` (one device call). Not part of the suite: CI has no GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks"), str(ROOT / "tests"), str(ROOT / "tests" / "train")]

from alpaca_like import examples  # noqa: E402  (benchmarks/alpaca_like.py)

FAILED: list[str] = []
DEVICE = os.environ.get("CHECK_DEVICE", "cuda")  # cpu: a dry run of the script itself (liger, flex, QLoRA fail)


def check(name: str, fn: Any) -> None:
    t0 = time.perf_counter()
    try:
        print(f"{name}: {fn()} ({time.perf_counter() - t0:.0f}s)", flush=True)
    except Exception as exc:  # noqa: BLE001 - each check reports for itself
        FAILED.append(name)
        print(f"{name}: FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        traceback.print_exc(limit=4)


def same_loss_and_grads() -> str:
    """Each fast-path combination against the padded plain path, on the same 8 examples, fp32."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from llamabrew.data.batching import PackedBatcher, PaddedBatcher, to_device
    from llamabrew.recipe import OptimConfig
    from llamabrew.train.objective import CausalLM

    cfg = LlamaConfig(hidden_size=256, num_hidden_layers=2, intermediate_size=688, vocab_size=32000,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    data = examples(8, cfg.vocab_size, cutoff=512)
    optim = OptimConfig(micro_batch_size=8, seed=0)

    def run(attention: str, batcher: Any, objective: CausalLM, liger: bool = False) -> tuple[float, torch.Tensor]:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).to(DEVICE)
        model.set_attn_implementation(attention)
        if liger:
            from liger_kernel.transformers import _apply_liger_kernel_to_instance

            _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True,
                                            cross_entropy=False, fused_linear_cross_entropy=False)
        batch = to_device(batcher.batch(data, optim, 0), torch.device(DEVICE))
        out = objective(model, batch)
        out.loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        return float(out.loss.detach()) / out.targets, grads

    ref_loss, ref_grad = run("sdpa", PaddedBatcher(0), CausalLM())
    combos = {
        "packed sdpa block mask": ("sdpa", PackedBatcher(0, 512, block_mask=True), CausalLM(), False),
        "packed flex": ("flex_attention", PackedBatcher(0, 512, block_mask=False), CausalLM(), False),
        "padded chunked loss": ("sdpa", PaddedBatcher(0), CausalLM(chunk_tokens=64), False),
        "packed sdpa + liger fused CE": ("sdpa", PackedBatcher(0, 512, block_mask=True), CausalLM(fused=True), False),
        "packed sdpa + liger kernels + fused CE": ("sdpa", PackedBatcher(0, 512, block_mask=True),
                                                   CausalLM(fused=True), True),
    }
    worst, lines = 0.0, []
    for name, (attention, batcher, objective, liger) in combos.items():
        try:
            loss, grad = run(attention, batcher, objective, liger)
        except Exception as exc:  # noqa: BLE001 - report which combination and go on
            lines.append(f"{name}: error {type(exc).__name__}: {str(exc)[:160]}")
            worst = float("inf")
            continue
        dl = abs(loss - ref_loss) / ref_loss
        dg = float((grad - ref_grad).norm() / ref_grad.norm())
        worst = max(worst, dl, dg)
        lines.append(f"{name}: loss rel diff {dl:.1e}, grad rel diff {dg:.1e}")
    print("\n".join("  " + line for line in lines), flush=True)
    if worst > 1e-3 and DEVICE == "cuda":
        raise AssertionError(f"a fast-path combination differs from the padded plain path by {worst:.1e}")
    return f"all within {worst:.1e} of the padded plain path (loss {ref_loss:.3f})"


def tiny_base(root: Path) -> Path:
    from tinymodels import CORPUS, build_tiny_model

    from llamabrew.train.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer(CORPUS + [f"Add {a} and {b}. {a} + {b} = {a + b}." for a in range(40)
                                        for b in range(10)], vocab_size=600)
    return build_tiny_model(root / "base", hidden=256, layers=4, tokenizer=tok)


def train(root: Path, base: Path, data: Path, name: str, *extra: str) -> str:
    out = root / name
    cmd = [sys.executable, "-m", "llamabrew.cli", "train", "--base", str(base), "--data", str(data), "--out",
           str(out), "--template", "alpaca_short", "--max-steps", "30", "--eval-every", "15", "--save-every", "15",
           "--lr", "2e-3", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no output")
    losses = [json.loads(line)["loss"] for line in (out / "loss.jsonl").read_text().splitlines()]
    summary = json.loads((out / "train_summary.json").read_text())
    fast = next((ln.strip() for ln in (done.stdout + done.stderr).splitlines() if "fast path" in ln.lower()), "?")
    if not losses[-1] < 0.75 * losses[0]:
        raise AssertionError(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}: not learning ({fast})")
    return (f"loss {losses[0]:.3f} -> {losses[-1]:.3f} in {len(losses)} steps; {fast}; "
            f"device-hours {summary.get('device_hours', '?')}")


TRAIN_RUNS = {"lora": (), "dora": ("--dora",), "qlora": ("--qlora",), "full": ("--method", "full", "--lr", "3e-4")}


def main() -> int:
    """``python benchmarks/gpu_train_check.py [same] [lora] [dora] [qlora] [full]``: those checks only (default all,
    in that order; the ones a lease did not reach can run alone in the next)."""
    import torch

    chosen = sys.argv[1:] or ["same", *TRAIN_RUNS]
    if unknown := set(chosen) - {"same", *TRAIN_RUNS}:
        print(f"unknown checks {sorted(unknown)}: choose from same, {', '.join(TRAIN_RUNS)}", file=sys.stderr)
        return 2
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("needs CUDA", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "same" in chosen:
        check("same loss and gradients on CUDA", same_loss_and_grads)
    runs = [name for name in TRAIN_RUNS if name in chosen]
    if runs:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            from test_resume import write_data

            try:
                base, data = tiny_base(root), write_data(root / "add.json", n=240)
            except Exception:  # noqa: BLE001
                traceback.print_exc()
                return 1
            for name in runs:
                check(f"train {name}, fast path auto", lambda name=name: train(root, base, data, name,
                                                                               *TRAIN_RUNS[name]))
    print("failed: " + ", ".join(FAILED) if FAILED else "all checks passed", flush=True)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
