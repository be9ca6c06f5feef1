"""The training loop shared by fine-tuning and pretraining: one optimizer step fits on one screen.

Data order is a pure function of (seed, epoch); checkpoints hold weights, optimizer, scheduler and RNG, so a run
killed at any moment and resumed reaches the same weights as one that was never interrupted.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from llamabrew.data.encode import Encoded
from llamabrew.io import append_jsonl, atomic_write_text, read_jsonl
from llamabrew.progress import progress_bar
from llamabrew.recipe import OptimConfig
from llamabrew.train.checkpoint import LoopProgress, list_checkpoints, load_checkpoint, save_checkpoint
from llamabrew.train.loss import collate, loss_sum, mean_loss, target_tokens
from llamabrew.train.report import write_loss_plot

LOSS_LOG = "loss.jsonl"


@dataclass
class FitResult:
    steps: int
    train_loss: float | None
    val_loss: float | None
    stopped_early: bool
    elapsed_s: float


def steps_per_epoch(n_examples: int, cfg: OptimConfig) -> int:
    return max(1, math.ceil(math.ceil(n_examples / cfg.micro_batch_size) / cfg.grad_accum))


def total_steps(n_examples: int, cfg: OptimConfig) -> int:
    return cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch(n_examples, cfg)))


def lr_schedule(cfg: OptimConfig, total: int) -> Callable[[int], float]:
    """Linear warmup, then cosine decay to ``min_lr_ratio`` of the peak."""
    warmup = int(cfg.warmup_ratio * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def micro_batch_indices(n: int, cfg: OptimConfig, global_micro: int) -> list[int]:
    """Example indices of the ``global_micro``-th micro-batch of the run (epochs reshuffled by seed)."""
    per_epoch = math.ceil(n / cfg.micro_batch_size)
    epoch, k = divmod(global_micro, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
    return order[k * cfg.micro_batch_size : (k + 1) * cfg.micro_batch_size].tolist()


STALL_CHECK_AT = 0.25  # share of the steps after which a loss that has not fallen is reported
STALL_RATIO = 0.9  # "not fallen": the recent mean is still above this share of the first steps' mean


def stall_warning(losses: Sequence[float], n_steps: int, lr: float) -> str | None:
    """A warning once a good share of the steps has run and the loss is still about where it started."""
    k = max(3, len(losses) // 10)
    if len(losses) < max(20, int(STALL_CHECK_AT * n_steps)):
        return None
    first, recent = sum(losses[:k]) / k, sum(losses[-k:]) / k
    if recent < STALL_RATIO * first:
        return None
    return (f"training is not learning: the loss has not fallen ({first:.3f} → {recent:.3f}) after "
            f"{len(losses)} of {n_steps} steps. Try a larger learning rate (now {lr:.2g}, --lr) or more steps "
            "(--grad-accum 1, --epochs)")


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.95), fused=device.type == "cuda")


def fit(
    model: torch.nn.Module,
    train: Sequence[Encoded],
    val: Sequence[Encoded],
    cfg: OptimConfig,
    out: Path,
    *,
    pad_id: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    resume: bool = False,
    description: str = "training",
) -> FitResult:
    """Train ``model``'s trainable parameters; checkpoints go to ``out/checkpoints``, the loss log to ``out``."""
    if cfg.learning_rate is None or cfg.grad_accum is None:
        raise ValueError("fit needs a learning rate and gradient accumulation (llamabrew.train.defaults.resolve)")
    n_steps = total_steps(len(train), cfg)
    per_epoch = steps_per_epoch(len(train), cfg)
    eval_every = cfg.eval_every or per_epoch
    save_every = cfg.save_every or per_epoch
    optimizer = make_optimizer(model, cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(cfg, n_steps))
    ckpt_root, log_path = out / "checkpoints", out / LOSS_LOG
    progress = LoopProgress()
    if resume and (found := list_checkpoints(ckpt_root)):
        progress = load_checkpoint(found[-1], model, optimizer, scheduler)
    else:
        torch.manual_seed(cfg.seed)
    # Keep the log consistent with the checkpoint: drop lines written after it by the killed run.
    kept = [r for r in read_jsonl(log_path) if r.get("step", 0) <= progress.step] if resume else []
    _rewrite_log(log_path, kept)
    val_batches = [collate(val[i : i + cfg.micro_batch_size], pad_id) for i in range(0, len(val), cfg.micro_batch_size)]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    model.train()
    started, stopped_early = time.monotonic() - progress.elapsed_s, False
    last_train = next((r["loss"] for r in reversed(kept) if "loss" in r), None)
    last_val = next((r["val_loss"] for r in reversed(kept) if "val_loss" in r), None)
    losses: list[float] = []  # this session's step losses, to notice a run that is not learning
    warned = False
    with progress_bar() as bar:
        task = bar.add_task(description, total=n_steps, completed=progress.step, unit="tok", info="")
        while progress.step < n_steps:
            # ---- one optimizer step: grad_accum micro-batches, loss normalised by the step's target tokens ----
            first = progress.step * cfg.grad_accum
            micro = [collate([train[i] for i in micro_batch_indices(len(train), cfg, first + k)], pad_id)
                     for k in range(cfg.grad_accum)]
            n_targets = max(1, sum(target_tokens(b) for b in micro))
            step_loss, t0 = 0.0, time.monotonic()
            for b in micro:
                b = {k: v.to(device) for k, v in b.items()}
                with autocast:
                    loss = loss_sum(model, b)
                (loss / n_targets).backward()
                step_loss += float(loss.detach())
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm or float("inf"))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            # ---- bookkeeping ----
            progress.step += 1
            step_tokens = sum(int(b["attention_mask"].sum()) for b in micro)
            progress.tokens += step_tokens
            progress.elapsed_s = time.monotonic() - started
            last_train = step_loss / n_targets
            record = {"step": progress.step, "loss": round(last_train, 6), "lr": scheduler.get_last_lr()[0],
                      "grad_norm": round(float(grad_norm), 4), "tokens": progress.tokens}
            out_of_time = cfg.max_minutes is not None and progress.elapsed_s >= cfg.max_minutes * 60
            done = progress.step >= n_steps or out_of_time
            if val_batches and (progress.step % eval_every == 0 or done):
                last_val = mean_loss(model, val_batches, device)
                record["val_loss"] = round(last_val, 6)
            if progress.step % cfg.log_every == 0 or "val_loss" in record or done:
                append_jsonl(log_path, record)
            if progress.step % save_every == 0 or done:
                save_checkpoint(ckpt_root, model, optimizer, scheduler, progress, cfg.keep_checkpoints)
            losses.append(last_train)
            if not warned and (warning := stall_warning(losses, n_steps, cfg.learning_rate or 0.0)):
                bar.console.print(f"[yellow]warning:[/] {warning}", highlight=False)
                warned = True
            info = f"loss {last_train:.3f}" + (f" val {last_val:.3f}" if last_val is not None else "")
            bar.update(task, completed=progress.step, rate=step_tokens / max(time.monotonic() - t0, 1e-9), info=info)
            if out_of_time and progress.step < n_steps:
                stopped_early = True
                break
    write_loss_plot(log_path, out / "loss.png")
    return FitResult(progress.step, last_train, last_val, stopped_early, progress.elapsed_s)


def _rewrite_log(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
