"""GRPO (Shao et al. 2024, DeepSeekMath): online RL with group-relative advantages, on LoRA, through `train.loop.fit`.

``llamabrew train --method grpo --adapter SFT_RUN --data prompts.jsonl --reward contains``: each step samples
``group_size`` completions per prompt from the current policy, scores them (`train.rewards`), and pushes up the
completions that beat their group's mean. There is no value model: the group is the baseline. A KL penalty
(``kl_coef``) to the starting point holds the policy near it; the reference is the frozen copy of the SFT adapter
(or the base with adapters off), as DPO's is (`preference.as_reference`).

The pieces are those of every objective: a `PromptBatcher` makes micro-batches of prompts, `GRPO` turns one
into a loss summed over completion tokens and their count, so `fit` gives it the same steps, checkpoints and
loss log as SFT. Sampling draws from torch's global RNG, which the loop seeds for each micro-batch: a killed run
resumes exactly, and ranks under torchrun sample what one process would.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from llamabrew.data.batching import Batch, micro_batch_indices
from llamabrew.data.encode import encode_text
from llamabrew.data.preference import Prompt, load_prompts
from llamabrew.data.templates import Template
from llamabrew.errors import LlamabrewError
from llamabrew.models import pick_device, pick_dtype
from llamabrew.recipe import OptimConfig, Recipe
from llamabrew.train.align import load_policy, save_trained_adapter, start_run
from llamabrew.train.objective import ObjectiveOutput
from llamabrew.train.preference import as_reference
from llamabrew.train.rewards import Reward, load_reward
from llamabrew.train.sft import TrainResult, fit_and_save, split_validation

log = logging.getLogger(__name__)

ADVANTAGE_EPS = 1e-4  # keeps a group whose rewards barely differ from blowing its advantages up
GREEDY = "greedy"  # a batch key: score greedy completions (validation), do not sample and train


# ---- prompts as micro-batches ----

@dataclass(frozen=True)
class EncodedPrompt:
    """A prompt's tokens (rendered with the generation prompt) and its position in the objective's prompt list."""

    input_ids: list[int]
    index: int

    def __len__(self) -> int:
        return len(self.input_ids)


def collate_prompts(prompts: Sequence[EncodedPrompt], pad_id: int) -> Batch:
    """Left-padded, so every row's completion starts at the same column when generation appends to it."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p.input_ids)
        mask[i, width - len(p):] = 1
    return {"input_ids": ids, "attention_mask": mask, "index": torch.tensor([p.index for p in prompts])}


@dataclass(frozen=True)
class PromptBatcher:
    """``micro_batch_size`` prompts per micro-batch (each becomes ``group_size`` completions), seeded order."""

    pad_id: int

    def micro_batches_per_epoch(self, examples: Sequence[EncodedPrompt], cfg: OptimConfig) -> int:
        return math.ceil(len(examples) / cfg.micro_batch_size)

    def batch(self, examples: Sequence[EncodedPrompt], cfg: OptimConfig, index: int) -> Batch:
        return collate_prompts([examples[i] for i in micro_batch_indices(len(examples), cfg, index)], self.pad_id)

    def eval_batches(self, examples: Sequence[EncodedPrompt], cfg: OptimConfig) -> list[Batch]:
        """Marked ``greedy``: the objective scores greedy completions of held-out prompts instead of sampling."""
        size = cfg.micro_batch_size
        return [collate_prompts(examples[i : i + size], self.pad_id) | {GREEDY: torch.tensor(True)}
                for i in range(0, len(examples), size)]


def encode_prompts(prompts: Sequence[Prompt], tokenizer: Any, template: Template, start: int = 0,
                   ) -> list[EncodedPrompt]:
    """Each prompt as inference sees it: rendered with the generation prompt, tokenized as training does."""
    return [EncodedPrompt(encode_text(tokenizer, template.render(tokenizer, [m.as_dict() for m in p.messages],
                                                                 add_generation_prompt=True)), start + i)
            for i, p in enumerate(prompts)]


# ---- the math ----

def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """(groups, group_size) rewards → each completion's advantage over its group: (r − mean) / (std + ε), with
    the unbiased std (as TRL); a group whose rewards all tie gets zero, it says nothing about what is better."""
    return (rewards - rewards.mean(-1, keepdim=True)) / (rewards.std(-1, keepdim=True) + ADVANTAGE_EPS)


def completion_mask(completions: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 for a completion's tokens up to and including its first EOS, 0 after (generation pads finished rows)."""
    is_eos = completions == eos_id
    first = torch.where(is_eos.any(-1), is_eos.int().argmax(-1), completions.size(1))
    return (torch.arange(completions.size(1), device=completions.device)[None] <= first[:, None]).long()


def token_logps(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, n_prompt: int,
                temperature: float = 1.0) -> torch.Tensor:
    """Log-probabilities of each completion token (columns from ``n_prompt``) under the distribution sampling
    drew them from (logits / temperature). Positions follow the mask, as in generation with left padding."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
    logits = logits[:, n_prompt - 1 : -1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, ids[:, n_prompt:, None]).squeeze(-1)


def grpo_loss(logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              ref_logps: torch.Tensor | None = None, kl_coef: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss summed over completion tokens, and the per-token KL to the reference (zeros without one).

    Per token: −A·π/π.detach() (equal to −A, with the policy gradient A·∇log π: one update per sample, so the
    ratio is 1 and needs no clipping) + kl_coef · KL, with the k3 estimator exp(ref − π) − (ref − π) − 1 ≥ 0,
    which is 0 where the policy is the reference."""
    per_token = -advantages[:, None] * torch.exp(logps - logps.detach())
    kl = torch.zeros_like(logps)
    if ref_logps is not None:
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + kl_coef * kl
    return (per_token * mask).sum(), kl.detach()


@torch.no_grad()
def generate(model: Any, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, eos_id: int, pad_id: int,
             temperature: float | None = None) -> torch.Tensor:
    """Completion tokens (rows, ≤ max_new_tokens) in eval mode (no dropout); sampled at ``temperature`` from the
    whole distribution (no top-k / top-p / repetition penalty, whatever the model's generation config says: the
    loss assumes the samples came from the policy itself) or greedy without one."""
    was_training = model.training
    model.eval()
    sampling: dict[str, Any] = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    if temperature:
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    try:
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, eos_token_id=eos_id,
                             pad_token_id=pad_id, repetition_penalty=1.0, **sampling)
    finally:
        model.train(was_training)
    return out[:, ids.size(1):]


@dataclass
class GRPO:
    """The GRPO objective over ``prompts`` (train then validation; a batch's ``index`` points into them).

    A training batch: sample ``group_size`` completions per prompt, score them, and sum the loss over completion
    tokens with targets = completion tokens (token-level normalisation, TRL's "dapo"), so `fit` divides by the
    step's tokens. A validation batch (`PromptBatcher.eval_batches`, marked ``greedy``; `fit` scores it in eval
    mode): greedy completions, deterministic; the metric ``reward_greedy`` (logged as ``val_reward_greedy``) is
    their mean reward and the "loss" 1 − reward per prompt (for 0/1 rewards: the error rate), so ``val_loss``
    falls as the held-out reward rises; a policy-gradient loss would say nothing on held-out prompts.
    """

    loss_falls = False  # its loss hovers near zero by design: the rising reward is the progress to watch
    prompts: Sequence[Prompt]
    reward: Reward
    tokenizer: Any
    group_size: int = 4
    kl_coef: float = 0.04
    max_completion_tokens: int = 32
    temperature: float = 1.0

    def decode(self, completions: torch.Tensor, mask: torch.Tensor) -> list[str]:
        return [self.tokenizer.decode(row[: int(n)].tolist(), skip_special_tokens=True)
                for row, n in zip(completions, mask.sum(-1), strict=True)]

    def score(self, index: torch.Tensor, completions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        rows = [self.prompts[int(i)] for i in index]
        return torch.tensor(self.reward(rows, self.decode(completions, mask)), dtype=torch.float32)

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if GREEDY in batch:
            completions = generate(model, ids, mask, self.max_completion_tokens, eos, pad)
            rewards = self.score(batch["index"], completions, completion_mask(completions, eos))
            return ObjectiveOutput((1 - rewards).sum(), len(rewards), {"reward_greedy": float(rewards.mean())})
        g = self.group_size
        ids, mask, index = (batch[k].repeat_interleave(g, 0) for k in ("input_ids", "attention_mask", "index"))
        completions = generate(model, ids, mask, self.max_completion_tokens, eos, pad, self.temperature)
        c_mask = completion_mask(completions, eos)
        rewards = self.score(index, completions, c_mask).to(ids.device)
        groups = rewards.view(-1, g)
        advantages = group_advantages(groups).view(-1)
        full, full_mask = torch.cat([ids, completions], 1), torch.cat([mask, c_mask], 1)
        logps = token_logps(model, full, full_mask, ids.size(1), self.temperature)
        ref = None
        if self.kl_coef > 0:
            with as_reference(model):
                ref = token_logps(model, full, full_mask, ids.size(1), self.temperature)
        loss, kl = grpo_loss(logps, advantages, c_mask, ref, self.kl_coef)
        n = int(c_mask.sum())
        metrics = {"reward": float(rewards.mean()), "reward_std": float(groups.std(-1).mean()),
                   "completion_length": n / len(rewards),
                   "tied_groups": float((groups == groups[:, :1]).all(-1).float().mean())}
        if ref is not None:
            metrics["kl"] = float((kl * c_mask).sum()) / max(n, 1)
        return ObjectiveOutput(loss, n, metrics)


# ---- the run ----

def within(prompts: list[EncodedPrompt], limit: int, name: str) -> list[EncodedPrompt]:
    """The prompts that leave room for a whole completion in the cutoff; the others are dropped, and said so."""
    kept = [p for p in prompts if len(p) <= limit]
    if len(kept) < len(prompts):
        log.warning(f"{name}: {len(prompts) - len(kept)} prompt(s) longer than {limit} tokens (--cutoff-len minus "
                    "--max-completion-tokens) dropped")
    return kept


def run_grpo(recipe: Recipe) -> TrainResult:
    """`--method grpo`: prompts and a reward in, a LoRA adapter out (continuing ``--adapter`` if given)."""
    recipe, tokenizer, template, threads = start_run(recipe)
    if not recipe.data.train_files:
        raise LlamabrewError("no prompts: pass --data FILE (JSONL of prompt, and reference for exact/contains)")
    prompts = [p for f in recipe.data.train_files for p in load_prompts(f)]
    train_p, val_p = split_validation(prompts, recipe, load=load_prompts)
    device = pick_device()
    cfg = recipe.grpo
    reward = load_reward(cfg.reward, [*train_p, *val_p], device)  # a missing reference stops here, not mid-run
    limit = recipe.data.cutoff_len - cfg.max_completion_tokens
    train = within(encode_prompts(train_p, tokenizer, template), limit, "train")
    val = within(encode_prompts(val_p, tokenizer, template, len(train_p)), limit, "validation")
    if not train:
        raise LlamabrewError("no prompts left after applying the cutoff (--cutoff-len, --max-completion-tokens)")
    dtype = pick_dtype(recipe.optim.precision, device)
    torch.manual_seed(recipe.optim.seed)
    model = load_policy(recipe, torch.float32 if device.type == "cpu" else dtype, reference=cfg.kl_coef > 0)
    if not recipe.model.quantize_4bit:
        model.to(device)
    objective = GRPO([*train_p, *val_p], reward, tokenizer, cfg.group_size, cfg.kl_coef, cfg.max_completion_tokens,
                     cfg.temperature)
    return fit_and_save(recipe, model, tokenizer, template, train, val, PromptBatcher(tokenizer.pad_token_id),
                        objective, device, dtype, threads, kind="grpo", save=save_trained_adapter(model))
