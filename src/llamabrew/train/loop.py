"""The training loop shared by fine-tuning and pretraining: one optimizer step fits on one screen.

What is minimised (an `Objective`, default next-token cross-entropy) and how examples become micro-batches (a
`Batcher`, default one padded example per row) are arguments, so packing, other losses or DPO need no loop edits.
Data order is a pure function of (seed, epoch), dropout and sampling of the micro-batch's index; checkpoints hold
weights, optimizer and scheduler, so a run killed at any moment and resumed reaches the same weights as one that
was never interrupted. Under torchrun / accelerate launch a `DataParallel` (`train.distributed`) shares each
step's micro-batches out among the ranks and sums what they found; the step itself reads the same.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llamabrew.data.batching import Batcher, PaddedBatcher, count_tokens, to_device
from llamabrew.data.batching import micro_batch_indices as micro_batch_indices  # the planner's import
from llamabrew.data.encode import Encoded
from llamabrew.io import append_jsonl, atomic_write_text, read_jsonl
from llamabrew.progress import progress_bar
from llamabrew.recipe import OptimConfig
from llamabrew.run import Run
from llamabrew.train.checkpoint import LoopProgress
from llamabrew.train.cost import budget_seconds
from llamabrew.train.distributed import DataParallel, micro_seed
from llamabrew.train.objective import CausalLM, Objective
from llamabrew.train.report import write_loss_plot
from llamabrew.train.tracking import Trackers

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    steps: int
    train_loss: float | None
    val_loss: float | None
    stopped_early: bool
    elapsed_s: float


def steps_per_epoch(train: int | Sequence[Encoded], cfg: OptimConfig, batcher: Batcher | None = None) -> int:
    """Optimizer steps per pass over ``train``; a bare count stands for one example per row (the planners'
    estimates), a batcher that packs needs the examples themselves."""
    if batcher is None:
        micro = math.ceil((train if isinstance(train, int) else len(train)) / cfg.micro_batch_size)
    elif isinstance(train, int):
        raise TypeError("steps_per_epoch with a batcher needs the examples, not their count")
    else:
        micro = batcher.micro_batches_per_epoch(train, cfg)
    return max(1, math.ceil(micro / cfg.grad_accum))


def total_steps(train: int | Sequence[Encoded], cfg: OptimConfig, batcher: Batcher | None = None) -> int:
    return cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch(train, cfg, batcher)))


def lr_schedule(cfg: OptimConfig, total: int) -> Callable[[int], float]:
    """Linear warmup, then cosine decay to ``min_lr_ratio`` of the peak."""
    warmup = int(cfg.warmup_ratio * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


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


def autocast_for(device: torch.device, dtype: torch.dtype) -> Any:
    """The mixed-precision context of a step (none for fp32); the planner times steps under the same one."""
    return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer not in ("auto", "adamw"):  # bitsandbytes' 8-bit / paged AdamW (train.fastpath chose it)
        from llamabrew.train.fastpath import bnb_optimizer

        return bnb_optimizer(cfg.optimizer, groups, cfg.learning_rate or 0.0)
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.95), fused=device.type == "cuda")


def fit(
    model: torch.nn.Module,
    train: Sequence[Encoded],
    val: Sequence[Encoded],
    cfg: OptimConfig,
    out: Path,
    *,
    device: torch.device,
    pad_id: int | None = None,
    objective: Objective | None = None,
    batcher: Batcher | None = None,
    dtype: torch.dtype = torch.float32,
    resume: bool = False,
    description: str = "training",
    parallel: DataParallel | None = None,
) -> FitResult:
    """Train ``model``'s trainable parameters; checkpoints go to ``out/checkpoints``, the loss log to ``out``.

    ``objective`` defaults to `CausalLM` and ``batcher`` to `PaddedBatcher(pad_id)`: the same run as before
    either existed. ``parallel``: ``model`` set up for several ranks with its objective
    (`train.distributed.DataParallel`); default one process.
    """
    if cfg.learning_rate is None or cfg.grad_accum is None:
        raise ValueError("fit needs a learning rate and gradient accumulation (llamabrew.train.defaults.resolve)")
    if batcher is None:
        if pad_id is None:
            raise ValueError("fit needs pad_id, or a batcher that knows its padding")
        batcher = PaddedBatcher(pad_id)
    if parallel is not None and objective is not None and objective is not parallel.objective:
        raise ValueError("fit: the objective is the one parallel was set up with")
    par = parallel or DataParallel(model, objective or CausalLM(), device)
    objective, main = par.objective, par.ranks.main
    n_steps = total_steps(train, cfg, batcher)
    per_epoch = steps_per_epoch(train, cfg, batcher)
    eval_every = cfg.eval_every or per_epoch
    save_every = cfg.save_every or per_epoch
    optimizer = make_optimizer(model, cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(cfg, n_steps))
    trainable = [p for p in model.parameters() if p.requires_grad]
    run = Run(out)
    ckpt_root, log_path = run.checkpoints, run.loss_log
    progress = LoopProgress()
    if resume and (found := par.latest_checkpoint(ckpt_root)):
        progress = par.load(found, optimizer, scheduler)
    # Keep the log consistent with the checkpoint: drop lines written after it by the killed run.
    kept = [r for r in read_jsonl(log_path) if r.get("step", 0) <= progress.step] if resume and main else []
    if main:
        _rewrite_log(log_path, kept)
    trackers = Trackers(cfg.log_to if main else [], out, progress.step)  # what the loss log gets, rank 0 only
    val_batches = batcher.eval_batches(val, cfg) if val else []
    autocast = autocast_for(device, dtype)
    model.train()
    started, stopped_early = time.monotonic() - progress.elapsed_s, False
    last_train = next((r["loss"] for r in reversed(kept) if "loss" in r), None)
    last_val = next((r["val_loss"] for r in reversed(kept) if "val_loss" in r), None)
    losses: list[float] = []  # this session's step losses, to notice a run that is not learning
    budget_s = budget_seconds(cfg, par.ranks.world)
    warned = False
    with progress_bar() as bar:
        task = bar.add_task(description, total=n_steps, completed=progress.step, unit="tok", info="")
        while progress.step < n_steps:
            # ---- one optimizer step: grad_accum micro-batches (this rank's share of them); the summed loss's
            # gradients are divided by the step's target count (over all ranks), so every target weighs the same
            # whatever micro-batch it landed in. A slot past the step's end (None) runs at weight 0. ----
            first, t0 = progress.step * cfg.grad_accum, time.monotonic()
            step_loss, n_targets, step_tokens, extra = 0.0, 0, 0, []
            share = par.ranks.share(first, cfg.grad_accum)
            for k, index in enumerate(share):
                weight, index = int(index is not None), first if index is None else index
                torch.manual_seed(micro_seed(cfg.seed, index))  # dropout and sampling follow the micro-batch
                b = batcher.batch(train, cfg, index)
                with par.accumulating(last=k == len(share) - 1):
                    with autocast:
                        o = par(to_device(b, device))
                    (o.loss * weight).backward()
                step_tokens += weight * count_tokens(b)
                step_loss, n_targets = step_loss + weight * float(o.loss.detach()), n_targets + weight * o.targets
                extra.append((o.metrics, weight))
            step_loss, n_targets, step_tokens = par.sum(step_loss, n_targets, step_tokens)
            par.unscale(trainable, n_targets)
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm or float("inf"))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            # ---- bookkeeping ----
            progress.step += 1
            progress.tokens += int(step_tokens)
            progress.elapsed_s = time.monotonic() - started
            last_train = step_loss / max(1, n_targets)
            record = {"step": progress.step, "loss": round(last_train, 6), "lr": scheduler.get_last_lr()[0],
                      "grad_norm": round(float(grad_norm), 4), "tokens": progress.tokens}
            record |= {k: v for k, v in mean_metrics(extra, par.sum).items() if k not in record}
            out_of_time = par.any((cfg.max_minutes is not None and progress.elapsed_s >= cfg.max_minutes * 60) or (
                budget_s is not None and progress.elapsed_s >= budget_s))
            done = progress.step >= n_steps or out_of_time
            if val_batches and (progress.step % eval_every == 0 or done):
                last_val, val_metrics = par.evaluate(val_batches)
                record["val_loss"] = round(last_val, 6)
                record |= {f"val_{k}": round(v, 6) for k, v in val_metrics.items()}
            if main and (progress.step % cfg.log_every == 0 or "val_loss" in record or done):
                append_jsonl(log_path, record)
                trackers.log(record)
            if progress.step % save_every == 0 or done:
                par.save(ckpt_root, optimizer, scheduler, progress, cfg.keep_checkpoints)
            losses.append(last_train)
            if not warned and getattr(objective, "loss_falls", True) and (
                    warning := stall_warning(losses, n_steps, cfg.learning_rate or 0.0)):
                log.warning(warning)
                warned = True
            info = f"loss {last_train:.3f}" + (f" val {last_val:.3f}" if last_val is not None else "")
            bar.update(task, completed=progress.step, rate=step_tokens / max(time.monotonic() - t0, 1e-9), info=info)
            if out_of_time and progress.step < n_steps:
                stopped_early = True
                if budget_s is not None and progress.elapsed_s >= budget_s:
                    log.warning(f"budget ${cfg.budget_usd:g} spent after {progress.step} of {n_steps} steps: stopped "
                                "with a checkpoint; raise --budget-usd and pass --resume to go on")
                break
    trackers.close()
    if main:
        write_loss_plot(log_path, run.loss_plot)
    return FitResult(progress.step, last_train, last_val, stopped_early, progress.elapsed_s)


def mean_metrics(per_micro: Sequence[tuple[dict[str, float], int]],
                 reduce: Callable[..., list[float]] = lambda *v: list(v)) -> dict[str, float]:
    """An objective's extra metrics averaged over the step's (metrics, weight) micro-batches, for the loss log;
    ``reduce`` sums over the ranks (`DataParallel.sum`), which all name the same metrics."""
    names = list(dict.fromkeys(name for m, _ in per_micro for name in m))
    sums = [sum(w * m[n] for m, w in per_micro if n in m) for n in names]
    counts = [sum(w for m, w in per_micro if n in m) for n in names]
    totals = reduce(*sums, *counts)
    return {n: round(s / c, 6) for n, s, c in zip(names, totals[:len(names)], totals[len(names):], strict=True) if c}


def _rewrite_log(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
