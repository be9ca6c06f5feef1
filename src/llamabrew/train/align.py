"""Preference tuning on LoRA: DPO (and IPO, hinge, SimPO) and reward models, through the loop SFT uses.

``llamabrew train --method dpo --adapter SFT_RUN --data pairs.jsonl`` continues the SFT adapter; the reference is
a frozen copy of that adapter (a few MB), not a second base. ``--method reward --base B --data pairs.jsonl``
trains a scalar head with LoRA (``AutoModelForSequenceClassification`` + PEFT load it back).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from llamabrew.data.batching import PairBatcher
from llamabrew.data.encode import EncodedPair, encode_pairs
from llamabrew.data.preference import PreferencePair, load_pairs
from llamabrew.data.templates import Template, get_template
from llamabrew.errors import LlamabrewError
from llamabrew.models import _hub_error, load_causal_lm, load_tokenizer, pick_device, pick_dtype, set_threads
from llamabrew.progress import progress_bar
from llamabrew.recipe import Recipe
from llamabrew.run import Run
from llamabrew.train.preference import DPO, REFERENCE_ADAPTER, RewardBT
from llamabrew.train.sft import TrainResult, attach_lora, check_start, fit_and_save, split_validation


def load_preference_data(recipe: Recipe, tokenizer: Any, template: Any
                         ) -> tuple[list[EncodedPair], list[EncodedPair]]:
    if not recipe.data.train_files:
        raise LlamabrewError("no preference pairs: pass --data FILE (JSONL of prompt/chosen/rejected)")
    pairs: list[PreferencePair] = [p for f in recipe.data.train_files for p in load_pairs(f)]
    train_pairs, val_pairs = split_validation(pairs, recipe, load=load_pairs)
    encoded = []
    for name, part in (("train", train_pairs), ("validation", val_pairs)):
        with progress_bar(transient=True) as bar:
            bar.add_task(f"tokenizing {name} pairs", total=None, unit="pair", info="")
            enc, _ = encode_pairs(part, tokenizer, template, recipe.data.cutoff_len, recipe.data.overlong)
        encoded.append(enc)
    if not encoded[0]:
        raise LlamabrewError("no preference pairs left after applying the cutoff")
    return encoded[0], encoded[1]


def load_policy(recipe: Recipe, dtype: torch.dtype, reference: bool = True) -> Any:
    """The causal LM to tune: the SFT adapter continued (with, if ``reference``, its frozen copy as the
    reference of DPO or GRPO's KL term), or a fresh LoRA on the base (the base with adapters disabled is then
    the reference)."""
    from peft import PeftModel

    model = load_causal_lm(recipe.model.base, dtype, recipe.model.trust_remote_code, recipe.model.quantize_4bit)
    if not recipe.model.adapter:
        return attach_lora(model, recipe)
    model = PeftModel.from_pretrained(model, recipe.model.adapter, is_trainable=True)
    if reference:
        model.load_adapter(recipe.model.adapter, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
    return model


def save_trained_adapter(model: Any) -> Callable[[Path], None]:
    """Save only the adapter being trained, never the frozen reference beside it."""
    return lambda out: model.save_pretrained(out, safe_serialization=True, selected_adapters=["default"])


def start_run(recipe: Recipe) -> tuple[Recipe, Any, Template, int]:
    """(recipe, tokenizer, template, threads) for a run that may continue an SFT adapter: the tokenizer is the
    adapter's, and an ``auto`` template becomes the one the SFT run was taught (its answers' format)."""
    if recipe.method != "lora":
        raise LlamabrewError(f"{recipe.objective} trains a LoRA adapter: drop --method full")
    recipe = check_start(recipe)
    threads = set_threads(recipe.optim.threads)
    start = recipe.model.adapter or recipe.model.base
    assert start is not None and recipe.model.base is not None
    tokenizer = load_tokenizer(start, recipe.model.trust_remote_code)
    if recipe.model.adapter and recipe.data.template == "auto":
        recipe = recipe.model_copy(deep=True)
        recipe.data.template = Run(recipe.model.adapter).template_name()
    return recipe, tokenizer, get_template(recipe.data.template, tokenizer), threads


def _reward_model(recipe: Recipe, dtype: torch.dtype, pad_id: int) -> Any:
    from transformers import AutoModelForSequenceClassification

    if recipe.model.adapter:
        raise LlamabrewError("a reward model starts from a base: merge the SFT adapter first (llamabrew merge) and "
                             "pass the merged model as --base")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            recipe.model.base, num_labels=1, dtype=dtype, trust_remote_code=recipe.model.trust_remote_code)
    except Exception as e:
        raise _hub_error(recipe.model.base, e) from e
    model.config.pad_token_id = pad_id  # the score is read at each row's last real token
    return attach_lora(model, recipe, task_type="SEQ_CLS")  # the new head is trained in full with the adapter


def run_preference(recipe: Recipe) -> TrainResult:
    """`--method dpo` or `--method reward`: pairs in, a LoRA adapter (and, for reward, its head) out."""
    recipe, tokenizer, template, threads = start_run(recipe)
    train, val = load_preference_data(recipe, tokenizer, template)
    device = pick_device()
    dtype = pick_dtype(recipe.optim.precision, device)
    torch.manual_seed(recipe.optim.seed)
    load_dtype = torch.float32 if device.type == "cpu" else dtype
    if recipe.objective == "reward":
        model, objective = _reward_model(recipe, load_dtype, tokenizer.pad_token_id), RewardBT()
    else:
        model = load_policy(recipe, load_dtype, reference=recipe.preference.loss != "simpo")  # SimPO has none
        p = recipe.preference
        objective = DPO(beta=p.beta, loss=p.loss, simpo_gamma=p.simpo_gamma, nll_weight=p.nll_weight)
    if not recipe.model.quantize_4bit:
        model.to(device)
    return fit_and_save(recipe, model, tokenizer, template, train, val, PairBatcher(tokenizer.pad_token_id),
                        objective, device, dtype, threads, kind=recipe.objective, save=save_trained_adapter(model))
