"""The fine-tuning defaults that depend on the model and the data, written down once and printed in the plan.

Fixed defaults sized for Alpaca's 52K examples on a 7B model leave a person's few hundred examples, or a small
model, unchanged (measured: SmolLM2-135M on 142 examples ran 15 optimizer steps at batch 32 and learned nothing;
at batch 4, 108 steps, it learned the answer form). Three rules, each used only when the recipe leaves the value
unset:

- **learning rate** follows the model's width: ``REFERENCE_LR[method] × (REFERENCE_WIDTH / hidden) ** 0.5``, so
  alpaca-lora's 3e-4 at LLaMA-7B's 4096 becomes ~8e-4 at SmolLM2's 576 and ~1.7e-3 at a 128-wide toy base
  (narrow LoRA'd models need larger rates), clamped to ``LR_RANGE``. Preference tuning (dpo) and online RL
  (grpo) on LoRA take a fifth of it: on the quickstart world's 1.5M base, DPO at the SFT rate (1.5e-3)
  degenerated into repeated tokens, at 3e-4 it learnt the preferred form (97.5%) with no fact lost.
- **LoRA targets** (``lora.target_modules: auto``): every linear layer, as QLoRA found best for instruction
  tuning, except on a base ``llamabrew pretrain`` made: such a base is a small store of its corpus's facts, and an
  adapter on its MLPs rewrites facts of the people the tuning data does not ask about. On its attention
  projections only, the held-out score rose on all seven worlds it was tried on (guild 79.1 → 83.5%, caravan
  83.8 → 89.3%, voyage 91.0 → 94.3%, harbor 96.9 → 98.8%, orchard 91.4 → 92.8%, market 90.5 → 90.8%, quickstart
  99.6 → 100%), then on an eighth world made to judge it (observatory 82.0 → 84.3%; ``benchmarks/RESULTS.md``).
- **gradient accumulation** is the largest of 8, 7, ..., 1 micro-batches per step that still gives the run
  ``MIN_STEPS`` optimizer steps: large data keeps alpaca-lora's batch of 32, small data takes smaller steps
  rather than too few of them. 400, not 200: at 225 steps (accumulation 4) a world's adapter confused three
  question forms that differ in one word ("What is the pest of X?" answered with X's queen) and scored 85.9%;
  at 447 steps of 2, the same examples and time, 98.2%, and the other worlds held (``benchmarks/RESULTS.md``).

``benchmarks/default_worlds.py`` measures these rules on worlds they were not chosen on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from llamabrew.recipe import LoraConfig, OptimConfig
from llamabrew.run import Run

REFERENCE_WIDTH = 4096
REFERENCE_LR = {"lora": 3e-4, "full": 2e-5, "dpo": 6e-5, "grpo": 6e-5}
LR_RANGE = {"lora": (5e-5, 3e-3), "full": (5e-6, 1e-3), "dpo": (1e-5, 6e-4), "grpo": (1e-5, 6e-4)}
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]  # the projections of the LLaMA bases pretrain makes
MAX_GRAD_ACCUM = 8
MIN_STEPS = 400


@dataclass
class ResolvedDefaults:
    """The values chosen, and a line saying why, for the plan."""

    optim: OptimConfig
    notes: list[str]
    lora: LoraConfig | None = None  # with its targets decided, when a new adapter is trained


def model_width(model: Any) -> int | None:
    """The hidden size of a Hugging Face model (PEFT-wrapped or not), if its config says."""
    config = getattr(model, "config", None)
    for name in ("hidden_size", "n_embd", "d_model"):
        if isinstance(value := getattr(config, name, None), int) and value > 0:
            return value
    return None


def default_learning_rate(method: str, width: int | None) -> float:
    reference = REFERENCE_LR[method]
    if width is None:
        return reference
    low, high = LR_RANGE[method]
    return min(high, max(low, reference * math.sqrt(REFERENCE_WIDTH / width)))


def pretrained_by_llamabrew(base: str | None) -> bool:
    """Whether ``base`` is a directory ``llamabrew pretrain`` wrote (its run summary says so)."""
    try:
        summary = Run(base).summary() if base else None
    except (OSError, ValueError, TypeError, KeyError):
        return False
    return summary is not None and summary.kind == "pretrain"


def lora_targets(lora: LoraConfig, base: str | None) -> list[str] | str:
    """The modules a new adapter trains: the recipe's, or for ``auto`` all-linear except on a pretrained-here base."""
    if lora.target_modules != "auto":
        return lora.target_modules
    return list(ATTENTION) if pretrained_by_llamabrew(base) else "all-linear"


def default_grad_accum(micro_per_epoch: int, cfg: OptimConfig) -> int:
    """The largest accumulation (≤ MAX_GRAD_ACCUM) whose run still has ``MIN_STEPS`` optimizer steps, given the
    micro-batches of one epoch (padded: examples / micro_batch_size; packed: rows / micro_batch_size)."""
    for accum in range(MAX_GRAD_ACCUM, 1, -1):
        if math.ceil(cfg.epochs * math.ceil(micro_per_epoch / accum)) >= MIN_STEPS:
            return accum
    return 1


def resolve(cfg: OptimConfig, method: str, model: Any, micro_per_epoch: int,
            lora: LoraConfig | None = None, base: str | None = None) -> ResolvedDefaults:
    """Fill the learning rate and gradient accumulation the recipe left unset (``method``: lora, full, or the
    objective for dpo / grpo, which have their own rate), and the targets of a new adapter (``lora``)."""
    notes, update = [], {}
    chosen_lora = None
    if lora is not None:
        chosen_lora = lora.model_copy(update={"target_modules": lora_targets(lora, base)})
        if lora.target_modules == "auto" and chosen_lora.target_modules != "all-linear":
            notes.append("LoRA on the attention projections only (a base llamabrew pretrained: on its MLPs the "
                         "adapter rewrites the facts of people the data does not ask about)")
    if cfg.learning_rate is None:
        width = model_width(model)
        update["learning_rate"] = default_learning_rate(method, width)
        notes.append(f"lr {update['learning_rate']:.2g} ({method} at width {width or '?'}: "
                     f"{REFERENCE_LR[method]:g} × √({REFERENCE_WIDTH}/width))")
    if cfg.grad_accum is None:
        update["grad_accum"] = default_grad_accum(micro_per_epoch, cfg)
        if update["grad_accum"] < MAX_GRAD_ACCUM:
            notes.append(f"grad accum {update['grad_accum']} (small data: at least {MIN_STEPS} steps "
                         f"where possible, instead of batches of {cfg.micro_batch_size * MAX_GRAD_ACCUM})")
        else:
            notes.append(f"grad accum {MAX_GRAD_ACCUM}")
    return ResolvedDefaults(cfg.model_copy(update=update), notes, chosen_lora)
