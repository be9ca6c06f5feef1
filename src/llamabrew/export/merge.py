"""Merge one or several LoRA adapters into their base model and save a standard HF directory (safetensors).

Merging always happens in full precision: the base is loaded from its bf16/fp16/fp32 checkpoint even when the
adapter was trained on a 4-bit base (QLoRA), because adding a LoRA delta to 4-bit weights and re-quantizing
(or saving the rounded 4-bit values) loses much of what the adapter learned. Several adapters stack: W' = W +
sum_i weight_i * scale_i * B_i A_i, e.g. an instruction adapter plus a domain adapter at half strength.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llamabrew.errors import LlamabrewError
from llamabrew.extras import require
from llamabrew.io import atomic_dir, atomic_write_text
from llamabrew.models import adapter_base, is_adapter_dir, load_causal_lm, load_tokenizer

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class MergeReport:
    out: Path
    base: str
    adapters: list[str]
    weights: list[float]
    dtype: str
    notes: list[str] = field(default_factory=list)


def read_adapter_config(adapter: str | Path) -> dict[str, Any]:
    """The adapter's config, with a clear error for a missing, corrupt or non-LoRA adapter."""
    path = Path(adapter)
    if not is_adapter_dir(path):
        raise LlamabrewError(f"{path}: not a PEFT adapter directory (no adapter_config.json)")
    try:
        cfg = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LlamabrewError(f"{path}/adapter_config.json: not valid JSON ({e})") from e
    if cfg.get("peft_type", "LORA") != "LORA":
        raise LlamabrewError(
            f"{path}: a {cfg.get('peft_type')} adapter; only LoRA adapters can be merged/exported"
        )
    if not any((path / n).is_file() for n in ("adapter_model.safetensors", "adapter_model.bin")):
        raise LlamabrewError(f"{path}: adapter weights (adapter_model.safetensors) are missing")
    return cfg


def stored_config(base: str) -> dict[str, Any]:
    """The base checkpoint's config.json as stored (dtype, quantization), before any loading changes it."""
    cfg_file = Path(base) / "config.json"
    try:
        if cfg_file.is_file():
            return json.loads(cfg_file.read_text(encoding="utf-8"))
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(base).to_dict()
    except Exception:
        return {}  # loading will report the real problem


def load_full_precision(base: str, trust_remote_code: bool = False) -> Any:
    """The base in fp32, dequantizing a checkpoint stored in 4/8 bits when possible, refusing otherwise."""
    quant = stored_config(base).get("quantization_config")
    if quant is None:
        return load_causal_lm(base, torch.float32, trust_remote_code)
    method = quant.get("quant_method", "?")
    if method == "bitsandbytes" and torch.cuda.is_available():
        require("gpu", f"dequantizing the 4-bit base '{base}'", "bitsandbytes")
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            base, device_map={"": 0}, trust_remote_code=trust_remote_code
        )
        return model.dequantize().to("cpu", torch.float32)
    raise LlamabrewError(
        f"base '{base}' is stored quantized ({method}); merging into quantized weights loses quality. "
        "Pass the original bf16/fp16 model with --base (the one this checkpoint was quantized from)"
    )


def _scale_adapter(model: Any, name: str, weight: float) -> None:
    """Scale an adapter's change by ``weight``: LoRA's delta, and trained token rows (stored whole, so moved
    ``weight`` of the way from their base values)."""
    from peft.tuners.lora import LoraLayer
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    for module in model.modules():
        if isinstance(module, LoraLayer) and name in module.scaling:
            module.scaling[name] *= weight
        elif isinstance(module, TrainableTokensLayer) and name in module.trainable_tokens_delta \
                and module.tied_adapter is None:  # a tied layer shares its rows with the one scaled here
            rows, original = module.trainable_tokens_delta[name], module.trainable_tokens_original[name]
            with torch.no_grad():
                rows.copy_(original.to(rows) + weight * (rows - original.to(rows)))


def merge_into(model: Any, adapters: Sequence[str | Path], weights: Sequence[float]) -> Any:
    """Add each adapter's delta (times its weight) to ``model``'s weights, one adapter at a time."""
    from peft import PeftModel

    for adapter, weight in zip(adapters, weights, strict=True):
        read_adapter_config(adapter)
        try:
            peft_model = PeftModel.from_pretrained(model, str(adapter), adapter_name="merging")
        except Exception as e:  # truncated safetensors, shape mismatch with the base, ...
            raise LlamabrewError(f"{adapter}: cannot load this adapter onto the base ({str(e)[:300]})") from e
        if weight != 1.0:
            _scale_adapter(peft_model, "merging", weight)
        model = peft_model.merge_and_unload()
    return model


def _saved_dtype(base: str) -> torch.dtype:
    """The precision the base was published in (bf16 / fp16 stay so; anything else is saved as fp32)."""
    cfg = stored_config(base)
    dtype = _DTYPES.get(str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32"))
    return dtype if dtype in (torch.bfloat16, torch.float16) else torch.float32


def merge(
    adapters: Sequence[str | Path],
    out: str | Path,
    base: str | None = None,
    weights: Sequence[float] | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
) -> MergeReport:
    """Merge ``adapters`` (weights default to 1.0 each) into ``base`` (default: the first adapter's base)."""
    if not adapters:
        raise LlamabrewError("give at least one --adapter to merge")
    weights = list(weights) if weights else [1.0] * len(adapters)
    if len(weights) != len(adapters):
        raise LlamabrewError(
            f"{len(weights)} --weight values for {len(adapters)} adapters; give one per adapter"
        )
    if dtype != "auto" and dtype not in _DTYPES:
        raise LlamabrewError(f"unknown dtype '{dtype}'; choose auto, {', '.join(_DTYPES)}")
    configs = [read_adapter_config(a) for a in adapters]
    bases = {c.get("base_model_name_or_path") for c in configs}
    if base is None:
        if len(bases) > 1:
            raise LlamabrewError(
                f"the adapters were trained on different bases ({', '.join(map(str, bases))}); "
                "pass --base to merge them into one anyway"
            )
        base = adapter_base(adapters[0])
    notes = []
    from llamabrew.recipe import read_saved_recipe

    recipes = [read_saved_recipe(a) for a in adapters]
    if any(r is not None and r.model.quantize_4bit for r in recipes):
        notes.append(
            f"adapter trained on a 4-bit (QLoRA) base: merged into the full-precision weights of {base}"
        )
    model = merge_into(load_full_precision(base, trust_remote_code), adapters, weights)
    target = _DTYPES[dtype] if dtype != "auto" else _saved_dtype(base)
    tok_src = next((str(a) for a in adapters if (Path(a) / "tokenizer_config.json").is_file()), base)
    tokenizer = load_tokenizer(tok_src, trust_remote_code)
    out = Path(out)
    with atomic_dir(out) as tmp:
        model.to(target).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if (Path(adapters[0]) / "recipe.yaml").is_file():  # keeps the chat template name for chat/export
            shutil.copy(Path(adapters[0]) / "recipe.yaml", tmp / "recipe.yaml")
        info = {"base": base, "adapters": [str(a) for a in adapters], "weights": weights, "notes": notes}
        atomic_write_text(tmp / "merge.json", json.dumps(info, indent=2))
    return MergeReport(
        out, base, [str(a) for a in adapters], weights, str(target).removeprefix("torch."), notes
    )
