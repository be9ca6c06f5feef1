"""Rewards for online RL (`train.grpo`): what a sampled completion of a prompt is worth.

A reward scores a list of (prompt, completion) at once, so a reward model runs them as one batch. ``--reward``
names one of:

- ``exact`` / ``contains``: 1.0 when the completion equals / contains the prompt's ``reference``, else 0.0,
  compared as evaluation scores answers (`llamabrew.data.match`: trimmed, lower-case, no trailing punctuation);
- ``module:function``: ``fn(prompt, completion, row) -> float``, where ``prompt`` is the last user message and
  ``row`` the whole JSONL record (for any other field the reward needs);
- a reward-model run directory (``llamabrew train --method reward``): the score of its sequence-classification
  head on the prompt + completion rendered as that run was trained (its template, EOS last).

Problems a user can fix (a missing reference, a module that does not import, a score that is not a number) are
one `LlamabrewError` line, found before training starts where they can be.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from llamabrew.data.batching import collate
from llamabrew.data.encode import encode_example
from llamabrew.data.formats import Example, Message
from llamabrew.data.match import contains_match, exact_match
from llamabrew.data.preference import Prompt
from llamabrew.errors import LlamabrewError
from llamabrew.models import load_tokenizer
from llamabrew.run import Run, trained_template

MATCH_REWARDS = ("exact", "contains")
REWARD_MODEL_BATCH = 16

class Reward(Protocol):
    def __call__(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[float]: ...


def prompt_text(prompt: Prompt) -> str:
    """The question a prompt asks: its last user message (the whole conversation is in ``row``)."""
    return prompt.messages[-1].content


class MatchReward:
    """1.0 when a completion matches its prompt's reference, else 0.0."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.match: Callable[[str, str], bool] = exact_match if name == "exact" else contains_match

    def __call__(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[float]:
        return [float(self.match(c, p.reference or "")) for p, c in zip(prompts, completions, strict=True)]


class FunctionReward:
    """A user's ``fn(prompt, completion, row) -> float``; anything but a finite number stops training."""

    def __init__(self, spec: str, fn: Callable[..., Any]) -> None:
        self.spec, self.fn = spec, fn

    def __call__(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[float]:
        out = []
        for p, c in zip(prompts, completions, strict=True):
            value = self.fn(prompt_text(p), c, dict(p.row or {}))
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise LlamabrewError(f"reward {self.spec} returned {value!r} for {p.source or 'a prompt'}: "
                                     "expected a finite number")
            out.append(float(value))
        return out


def import_reward(spec: str) -> FunctionReward:
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise LlamabrewError(f"--reward {spec}: expected module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or whatever the module raised while importing
        raise LlamabrewError(f"--reward {spec}: cannot import {module_name}: {type(e).__name__}: {e}") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        raise LlamabrewError(f"--reward {spec}: {module_name} has no function {name}")
    return FunctionReward(spec, fn)


class RewardModel:
    """A reward run's scalar head scoring each prompt + completion, rendered the way the run was trained."""

    def __init__(self, path: str | Path, device: torch.device) -> None:
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification

        run = Run(path)
        base = run.base()
        assert base is not None
        self.tokenizer = load_tokenizer(str(path))
        self.template = trained_template(path, self.tokenizer)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
        except Exception as e:
            raise LlamabrewError(f"--reward {path}: cannot load its base {base}: {e}") from e
        model.config.pad_token_id = self.tokenizer.pad_token_id  # the score is read at each row's last token
        self.model = PeftModel.from_pretrained(model, str(path)).to(device).eval()
        self.device = device

    @torch.no_grad()
    def __call__(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[float]:
        encoded = [encode_example(Example([*p.messages, Message("assistant", c)]), self.tokenizer, self.template,
                                  cutoff_len=1 << 20) for p, c in zip(prompts, completions, strict=True)]
        scores: list[float] = []
        for i in range(0, len(encoded), REWARD_MODEL_BATCH):
            b = collate(encoded[i : i + REWARD_MODEL_BATCH], self.tokenizer.pad_token_id)
            logits = self.model(input_ids=b["input_ids"].to(self.device),
                                attention_mask=b["attention_mask"].to(self.device)).logits
            scores += logits[:, 0].float().tolist()
        return scores


def load_reward(spec: str, prompts: Sequence[Prompt], device: torch.device | None = None) -> Reward:
    """The reward ``spec`` names, checked against the prompts it will score (see the module docstring)."""
    if spec in MATCH_REWARDS:
        missing = next((p for p in prompts if p.reference is None), None)
        if missing is not None:
            raise LlamabrewError(f"{missing.source}: field 'reference': missing (--reward {spec} compares each "
                                 "completion with the prompt's reference)")
        return MatchReward(spec)
    if Path(spec).is_dir():
        config = Path(spec, "adapter_config.json")
        task = json.loads(config.read_text()).get("task_type") if config.is_file() else None
        if task != "SEQ_CLS":
            raise LlamabrewError(f"--reward {spec}: not a reward-model run (train one with --method reward)")
        return RewardModel(spec, device or torch.device("cpu"))
    if ":" in spec:
        return import_reward(spec)
    raise LlamabrewError(f"--reward {spec}: expected exact, contains, module:function or a reward-model run "
                         "directory")
