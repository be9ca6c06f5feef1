"""Say what a run will cost before it starts: parameters, tokens, steps, and time measured on this machine."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from llamabrew.data.batching import Batcher, PackedBatcher, to_device
from llamabrew.data.encode import Encoded
from llamabrew.recipe import OptimConfig
from llamabrew.train.cost import hourly_price
from llamabrew.train.loop import autocast_for, steps_per_epoch, total_steps
from llamabrew.train.objective import CausalLM, Objective

log = logging.getLogger(__name__)


@dataclass
class TimeEstimate:
    """Seconds a run will take, from parts measured on this machine: each optimizer step (its micro-batches,
    sampled across the epoch, plus the optimizer update) and the validation passes."""

    step_s: float
    eval_s: float  # one pass over the validation batches
    steps: int
    evals: int

    @property
    def total_s(self) -> float:
        return self.step_s * self.steps + self.eval_s * self.evals


SAMPLED_MICRO_BATCHES = 4  # micro-batches timed, spread over the first epoch (lengths vary across it)
OPTIMIZER_PROBE_ELEMENTS = 4_000_000  # an AdamW update timed on this many values, scaled to the trainable ones


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    t0 = time.monotonic()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.monotonic() - t0


def optimizer_seconds(n_trainable: int, device: torch.device) -> float:
    """One AdamW update of ``n_trainable`` values, timed on stand-in tensors (the model's own stay untouched)."""
    n = max(1, min(n_trainable, OPTIMIZER_PROBE_ELEMENTS))
    param = torch.zeros(n, device=device, requires_grad=True)
    param.grad = torch.ones_like(param)
    opt = torch.optim.AdamW([param], lr=1e-3, fused=device.type == "cuda")
    times = [_timed(opt.step, device) for _ in range(3)]
    return sorted(times)[1] * n_trainable / n


def estimate_time(model: torch.nn.Module, train: Sequence[Encoded], val: Sequence[Encoded], cfg: OptimConfig,
                  batcher: Batcher, device: torch.device, objective: Objective | None = None,
                  dtype: torch.dtype = torch.float32, ranks: int = 1) -> TimeEstimate:
    """Time forward+backward on micro-batches sampled across the epoch (after one untimed warm-up), the
    optimizer update and a validation pass; leaves weights, gradients and RNG untouched. With ``ranks`` data-
    parallel processes, a step is each rank's share of the micro-batches and a rank's share of validation (the
    all-reduce of a LoRA's gradients is not counted)."""
    rng = torch.get_rng_state()
    objective = objective or CausalLM()
    per_epoch = batcher.micro_batches_per_epoch(train, cfg)
    picks = sorted({round(i * per_epoch / SAMPLED_MICRO_BATCHES) % per_epoch for i in range(SAMPLED_MICRO_BATCHES)})

    def forward_backward(index: int) -> None:
        with autocast_for(device, dtype):
            loss = objective(model, to_device(batcher.batch(train, cfg, index), device)).loss
        loss.backward()

    forward_backward(picks[0])  # first calls pay one-time set-up costs
    micro = sum(_timed(lambda i=i: forward_backward(i), device) for i in picks) / len(picks)
    model.zero_grad(set_to_none=True)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    step = micro * math.ceil((cfg.grad_accum or 1) / ranks) + optimizer_seconds(n_trainable, device)
    eval_s = 0.0
    if val:
        batches = batcher.eval_batches(val, cfg)
        was_training = model.training
        model.eval()
        with torch.no_grad(), autocast_for(device, dtype):
            first = _timed(lambda: objective(model, to_device(batches[0], device)), device)
        model.train(was_training)
        eval_s = first * math.ceil(len(batches) / ranks)
    torch.set_rng_state(rng)
    steps = total_steps(train, cfg, batcher)
    every = cfg.eval_every or steps_per_epoch(train, cfg, batcher)
    evals = (steps // every + (steps % every != 0)) if val else 0
    return TimeEstimate(step, eval_s, steps, evals)


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def print_plan(model: torch.nn.Module, train: Sequence[Encoded], val: Sequence[Encoded], cfg: OptimConfig,
               batcher: Batcher, device: torch.device, threads: int, what: str, notes: Sequence[str] = (),
               objective: Objective | None = None, dtype: torch.dtype = torch.float32, ranks: int = 1,
               strategy: str = "single", speed: str = "", speed_notes: Sequence[str] = ()) -> float | None:
    """Log the plan and return the estimated seconds (None under FSDP: the model is split across the devices
    only when training starts, and one device may not hold it whole)."""
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    steps = total_steps(train, cfg, batcher)
    epochs = steps / steps_per_epoch(train, cfg, batcher)
    tokens = sum(len(e) for e in train)
    est = None if strategy == "fsdp" else estimate_time(model, train, val, cfg, batcher, device, objective,
                                                        dtype=dtype, ranks=ranks).total_s
    if cfg.max_minutes:
        est = min(est, cfg.max_minutes * 60) if est is not None else cfg.max_minutes * 60
    cost = ""
    if (price := hourly_price(cfg)) is not None and est is not None:
        cost = f", about ${price * est / 3600 * ranks:.2f} at ${price:g}/h" + (" per device" if ranks > 1 else "")
        if cfg.budget_usd is not None:
            cost += (f" (budget ${cfg.budget_usd:g}: stops after "
                     f"{format_duration(cfg.budget_usd / price * 3600 / ranks)})")
    rows = "packed rows" if isinstance(batcher, PackedBatcher) else "examples"
    where = f"{device.type} ({threads} threads)" if ranks == 1 else f"{ranks} × {device.type} ({strategy})"
    timed = f"expected time {format_duration(est)}" if est is not None else "time not measured under FSDP"
    log.info(
        f"plan {what}: {n_params / 1e6:.2f}M parameters ({n_train / 1e6:.3f}M trainable) on {where}"
        f" · {len(train)} train / {len(val)} validation examples · {tokens:,} tokens/epoch · "
        f"{steps} steps ({epochs:.2f} epochs, {cfg.micro_batch_size}×{cfg.grad_accum} {rows}/step"
        f"{', bf16 autocast' if dtype == torch.bfloat16 else ', fp16 autocast' if dtype == torch.float16 else ''}) · "
        f"{timed}{cost}")
    if notes:
        log.info(f"  defaults chosen: {'; '.join(notes)}", extra={"style": "dim"})
    if speed:
        log.info(f"  fast path: {speed}" + (f" (auto: {'; '.join(speed_notes)})" if speed_notes else ""),
                 extra={"style": "dim"})
    return est
