"""Supervised fine-tuning (LoRA or full) of any Hugging Face causal LM on instruction data."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from llamabrew.data.batching import Batcher
from llamabrew.data.encode import Encoded, EncodeReport, encode_examples
from llamabrew.data.formats import Example, find_duplicates, load_examples
from llamabrew.data.templates import Template, get_template
from llamabrew.errors import LlamabrewError
from llamabrew.io import read_jsonl
from llamabrew.models import check_4bit, load_causal_lm, load_tokenizer, pick_device, pick_dtype, set_threads
from llamabrew.progress import progress_bar
from llamabrew.recipe import Recipe, save_recipe
from llamabrew.run import Run, RunSummary
from llamabrew.train import fastpath, untrained
from llamabrew.train.checkpoint import list_checkpoints
from llamabrew.train.cost import budget_seconds, run_cost
from llamabrew.train.defaults import lora_targets
from llamabrew.train.defaults import resolve as resolve_defaults
from llamabrew.train.distributed import DataParallel, choose_strategy, launched
from llamabrew.train.loop import FitResult, fit
from llamabrew.train.memory import ModelShape
from llamabrew.train.objective import Objective
from llamabrew.train.plan import estimate_time, print_plan
from llamabrew.train.tracking import check_trackers

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class TrainResult:
    out: Path
    train_examples: int
    val_examples: int
    steps: int
    train_loss: float | None
    val_loss: float | None
    stopped_early: bool
    elapsed_s: float
    metrics: dict[str, float] | None = None  # held-out figures of the objective (reward accuracy, margins)


def split_validation(examples: list[T], recipe: Recipe, load: Callable[[Path], list[T]] = load_examples,  # type: ignore[assignment]
                     ) -> tuple[list[T], list[T]]:
    """Held-out files if given (read with ``load``), else a seeded random split of the training data."""
    data = recipe.data
    if data.val_files:
        return examples, [ex for f in data.val_files for ex in load(f)]
    n_val = min(data.val_max, round(len(examples) * data.val_fraction))
    if n_val == 0 or len(examples) - n_val < 1:
        return examples, []
    order = list(range(len(examples)))
    random.Random(recipe.optim.seed).shuffle(order)
    val_idx = set(order[:n_val])
    return [e for i, e in enumerate(examples) if i not in val_idx], [examples[i] for i in sorted(val_idx)]


def load_training_data(recipe: Recipe) -> list[Example]:
    if not recipe.data.train_files:
        raise LlamabrewError("no training data: pass --data FILE (or data.train_files in the recipe)")
    examples = [ex for f in recipe.data.train_files for ex in load_examples(f)]
    dups = find_duplicates(examples)
    if dups:
        shown = ", ".join(f"{d} = {f}" for d, f in dups[:3])
        action = "dropped" if recipe.data.drop_duplicates else "kept (--drop-duplicates to remove)"
        log.warning(f"{len(dups)} exact duplicate example(s) {action}: {shown}" + (" ..." if len(dups) > 3 else ""))
        if recipe.data.drop_duplicates:
            dup_sources = {d for d, _ in dups}
            examples = [e for e in examples if e.source not in dup_sources]
    return examples


def encode_split(name: str, examples: list[Example], tokenizer: Any, template: Template,
                 recipe: Recipe) -> tuple[list[Encoded], EncodeReport]:
    with progress_bar(transient=True) as bar:
        task = bar.add_task(f"tokenizing {name}", total=len(examples), unit="ex", info="")
        encoded, report = encode_examples(
            examples, tokenizer, template, recipe.data.cutoff_len, recipe.data.overlong,
            recipe.data.train_on_inputs, progress=lambda: bar.advance(task),
        )
    over = report.truncated + report.dropped + report.no_target
    if over:
        log.info(f"{name}: {over} example(s) longer than cutoff {recipe.data.cutoff_len} tokens: "
                 f"{report.truncated} truncated, {report.dropped} dropped, "
                 f"{report.no_target} dropped with no response left")
    return encoded, report


def attach_lora(model: Any, recipe: Recipe, task_type: str = "CAUSAL_LM", checkpointing: bool = True,
                token_rows: list[int] | None = None) -> Any:
    """PEFT LoRA on ``recipe.lora``'s modules; ``token_rows``: embedding rows trained too (`train.untrained`)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if recipe.model.quantize_4bit:  # non-reentrant: under DDP the reentrant kind marks gradients ready twice
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    cfg = LoraConfig(
        r=recipe.lora.r, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
        target_modules=lora_targets(recipe.lora, recipe.model.base), task_type=task_type,
        use_dora=recipe.lora.use_dora, use_rslora=recipe.lora.use_rslora,
        trainable_token_indices=token_rows or None,
    )
    return get_peft_model(model, cfg)


def untrained_rows(recipe: Recipe, train: list[Encoded]) -> list[int]:
    """The embedding rows LoRA should train with its layers: tokens of ``train`` the base never read."""
    if recipe.method != "lora" or not recipe.lora.train_untrained_tokens:
        return []
    rows = untrained.used(recipe.model.base, train)
    if rows:
        log.info(f"  trains the embeddings of {len(rows)} tokens of the data that the base never read in "
                 f"pretraining ({untrained.FILE}): LoRA alone would leave them as initialised",
                 extra={"style": "dim"})
    return rows


def check_start(recipe: Recipe) -> Recipe:
    """What every fine-tuning run checks before loading anything; a local base becomes an absolute path (the
    adapter records its base: it must work from any directory)."""
    if recipe.model.adapter and not recipe.model.base:
        from llamabrew.models import adapter_base

        if not Path(recipe.model.adapter, "adapter_config.json").is_file():
            raise LlamabrewError(f"{recipe.model.adapter}: not a LoRA adapter directory (no adapter_config.json)")
        recipe = recipe.model_copy(deep=True)
        recipe.model.base = adapter_base(recipe.model.adapter)
    if not recipe.model.base:
        raise LlamabrewError("no base model: pass --base (hub id or local directory)")
    if recipe.model.quantize_4bit:
        check_4bit()
    if Path(recipe.model.base).is_dir():
        recipe = recipe.model_copy(deep=True)
        recipe.model.base = str(Path(recipe.model.base).resolve())
    budget_seconds(recipe.optim)  # a budget without a price fails now, not after the model has loaded
    strategy(recipe)  # and so does a strategy that does not fit the method
    check_trackers(recipe.optim.log_to)  # and a tracker whose extra is missing
    if list_checkpoints(Run(recipe.out).checkpoints) and not recipe.resume:
        raise LlamabrewError(f"{recipe.out} already holds checkpoints: pass --resume to continue, or choose "
                             "another --out")
    return recipe


def strategy(recipe: Recipe) -> str:
    """How this process trains among the launcher's ranks: single, ddp or fsdp (`train.distributed`)."""
    return choose_strategy(recipe.method, recipe.optim.parallel, launched().world)


@dataclass
class Prepared:
    """A supervised run set up to train: what `run` fits and `estimate_seconds` times."""

    recipe: Recipe
    model: Any
    tokenizer: Any
    template: Template
    train: list[Encoded]
    val: list[Encoded]
    batcher: Batcher
    objective: Objective
    device: torch.device
    dtype: torch.dtype
    threads: int
    fast: fastpath.FastPath


def prepare(recipe: Recipe) -> Prepared:
    """Check, read and tokenize the data, load the base (+ LoRA) on the device."""
    recipe = fastpath.keep_resumed_choices(check_start(recipe))
    if recipe.model.adapter:
        raise LlamabrewError("--adapter continues an adapter with dpo, reward or grpo; for more supervised "
                             "tuning, merge it first (llamabrew merge) and pass the merged model as --base")
    threads = set_threads(recipe.optim.threads)
    tokenizer = load_tokenizer(recipe.model.base, recipe.model.trust_remote_code)
    template = get_template(recipe.data.template, tokenizer)
    train_ex, val_ex = split_validation(load_training_data(recipe), recipe)
    train, _ = encode_split("train", train_ex, tokenizer, template, recipe)
    val, _ = encode_split("validation", val_ex, tokenizer, template, recipe) if val_ex else ([], None)
    if not train:
        raise LlamabrewError("no training examples left after applying the cutoff")
    device = pick_device()
    dtype = pick_dtype(recipe.optim.precision, device)
    torch.manual_seed(recipe.optim.seed)
    model = load_causal_lm(recipe.model.base, torch.float32 if device.type == "cpu" else dtype,
                           recipe.model.trust_remote_code, recipe.model.quantize_4bit)
    fast = fastpath.choose(recipe, fastpath.environment(device, dtype), ModelShape.from_config(model.config))
    fastpath.prepare_base(model, fast)
    if recipe.method == "lora":
        model = attach_lora(model, recipe, checkpointing=fast.gradient_checkpointing,
                            token_rows=untrained_rows(recipe, train))
    if not recipe.model.quantize_4bit and strategy(recipe) != "fsdp":  # FSDP moves each rank's shards itself
        model.to(device)
    fastpath.limit_checkpointing(model, fast)
    fastpath.compile_layers(model, fast)
    batcher = fast.batcher(tokenizer.pad_token_id, recipe.data.cutoff_len)
    return Prepared(fastpath.record(recipe, fast), model, tokenizer, template, train, val, batcher,
                    fast.objective(), device, dtype, threads, fast)


def run(recipe: Recipe) -> TrainResult:
    """Supervised fine-tuning of ``recipe.model.base`` on ``recipe.data``; the adapter (or model) goes to
    ``recipe.out``. (`llamabrew.train.run` sends the other objectives to their own set-up.)"""
    p = prepare(recipe)
    return fit_and_save(p.recipe, p.model, p.tokenizer, p.template, p.train, p.val, p.batcher, p.objective,
                        p.device, p.dtype, p.threads, kind="sft", fast=p.fast)


def estimate_seconds(recipe: Recipe) -> float:
    """What `run` would take on this machine: the plan's own timing (`plan.estimate_time`), within max_minutes."""
    p = prepare(recipe.model_copy(update={"resume": True}))  # an estimate never minds existing checkpoints
    chosen = resolve_defaults(p.recipe.optim, p.recipe.method, p.model,
                              p.batcher.micro_batches_per_epoch(p.train, p.recipe.optim))
    seconds = estimate_time(p.model, p.train, p.val, chosen.optim, p.batcher, p.device, p.objective,
                            dtype=p.dtype).total_s
    return min(seconds, recipe.optim.max_minutes * 60) if recipe.optim.max_minutes else seconds


def fit_and_save(recipe: Recipe, model: Any, tokenizer: Any, template: Template, train: Sequence[Any],
                 val: Sequence[Any], batcher: Batcher, objective: Objective, device: torch.device,
                 dtype: torch.dtype, threads: int, kind: str, save: Callable[[Path], None] | None = None,
                 fast: fastpath.FastPath | None = None) -> TrainResult:
    """The part every fine-tuning objective shares: defaults, the plan, the loop, the saved run and summary (rank
    0 writes; the others train alongside it)."""
    out, ranks, how = Path(recipe.out), launched(), strategy(recipe)
    rate_of = recipe.objective if recipe.objective in ("dpo", "grpo") else recipe.method
    new_adapter = recipe.method == "lora" and not recipe.model.adapter  # a continued one keeps its targets
    chosen = resolve_defaults(recipe.optim, rate_of, model, batcher.micro_batches_per_epoch(train, recipe.optim),
                              recipe.lora if new_adapter else None, recipe.model.base)
    # the saved recipe repeats the run exactly: the rate, accumulation and targets as chosen
    recipe = recipe.model_copy(update={"optim": chosen.optim, "lora": chosen.lora or recipe.lora})
    what = recipe.method if kind == "sft" else f"{kind} ({recipe.method})"
    print_plan(model, train, val, recipe.optim, batcher, device, threads, what=what, notes=chosen.notes,
               objective=objective, dtype=dtype, ranks=ranks.world, strategy=how,
               speed=fast.describe() if fast else "", speed_notes=fast.reasons if fast else ())
    run = Run(out)
    if ranks.main:
        out.mkdir(parents=True, exist_ok=True)
        save_recipe(recipe, out)
    parallel = DataParallel(model, objective, device, how, ranks)
    result: FitResult = fit(model, train, val, recipe.optim, out, device=device, batcher=batcher, dtype=dtype,
                            objective=objective, resume=recipe.resume, description=f"{what} training",
                            parallel=parallel)
    tokenizer.chat_template = template.jinja  # the trained format travels with the run (chat, export, vLLM)
    parallel.save_pretrained(out, save)
    if not ranks.main:
        return TrainResult(out, len(train), len(val), result.steps, result.train_loss, result.val_loss,
                           result.stopped_early, result.elapsed_s)
    tokenizer.save_pretrained(out)
    last = next((r for r in reversed(read_jsonl(run.loss_log)) if "val_loss" in r), None)
    metrics = {k: v for k, v in (last or {}).items() if k.startswith("val_") and k != "val_loss"} or None
    run.write_summary(RunSummary(
        kind, recipe.method, result.steps, result.train_loss, result.val_loss, result.stopped_early,
        result.elapsed_s, len(train), len(val), sum(p.numel() for p in model.parameters()),
        sum(p.numel() for p in model.parameters() if p.requires_grad), metrics,
        *run_cost(recipe.optim, result.elapsed_s, devices=ranks.world), fast.as_dict() if fast else None))
    return TrainResult(out, len(train), len(val), result.steps, result.train_loss, result.val_loss,
                       result.stopped_early, result.elapsed_s, metrics)
