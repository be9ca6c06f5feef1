"""Say what a run will cost before it starts: parameters, tokens, steps, and time measured on this machine."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

import torch

from llamabrew.data.batching import Batcher, PackedBatcher, to_device
from llamabrew.data.encode import Encoded
from llamabrew.recipe import OptimConfig
from llamabrew.train.loop import autocast_for, steps_per_epoch, total_steps
from llamabrew.train.objective import CausalLM, Objective

log = logging.getLogger(__name__)
GPU_PRICE_ENV = "LLAMABREW_USD_PER_HOUR"  # what an hour of this machine costs, for the $ line of the plan


def measure_step_seconds(model: torch.nn.Module, train: Sequence[Encoded], cfg: OptimConfig, batcher: Batcher,
                         device: torch.device, objective: Objective | None = None, repeats: int = 2,
                         dtype: torch.dtype = torch.float32) -> float:
    """Time forward+backward of the run's first micro-batch; leaves weights, gradients and RNG untouched."""
    rng = torch.get_rng_state()
    batch = to_device(batcher.batch(train, cfg, 0), device)
    objective = objective or CausalLM()
    times = []
    for _ in range(repeats):
        t0 = time.monotonic()
        with autocast_for(device, dtype):
            loss = objective(model, batch).loss
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.monotonic() - t0)
    model.zero_grad(set_to_none=True)
    torch.set_rng_state(rng)
    return min(times) * (cfg.grad_accum or 1)


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def print_plan(model: torch.nn.Module, train: Sequence[Encoded], val: Sequence[Encoded], cfg: OptimConfig,
               batcher: Batcher, device: torch.device, threads: int, what: str, notes: Sequence[str] = (),
               objective: Objective | None = None, dtype: torch.dtype = torch.float32) -> float:
    """Log the plan and return the estimated seconds."""
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    steps = total_steps(train, cfg, batcher)
    epochs = steps / steps_per_epoch(train, cfg, batcher)
    tokens = sum(len(e) for e in train)
    est = measure_step_seconds(model, train, cfg, batcher, device, objective, dtype=dtype) * steps
    if cfg.max_minutes:
        est = min(est, cfg.max_minutes * 60)
    cost = ""
    if price := os.environ.get(GPU_PRICE_ENV):
        cost = f", about ${float(price) * est / 3600:.2f} at ${float(price)}/h"
    rows = "packed rows" if isinstance(batcher, PackedBatcher) else "examples"
    log.info(
        f"plan {what}: {n_params / 1e6:.2f}M parameters ({n_train / 1e6:.3f}M trainable) on {device.type}"
        f" ({threads} threads) · {len(train)} train / {len(val)} validation examples · {tokens:,} tokens/epoch · "
        f"{steps} steps ({epochs:.2f} epochs, {cfg.micro_batch_size}×{cfg.grad_accum} {rows}/step"
        f"{', bf16 autocast' if dtype == torch.bfloat16 else ', fp16 autocast' if dtype == torch.float16 else ''}) · "
        f"expected time {format_duration(est)}{cost}")
    if notes:
        log.info(f"  defaults chosen: {'; '.join(notes)}", extra={"style": "dim"})
    return est
