"""A LoRA adapter alone as a GGUF adapter file, for ``llama.cpp --lora`` / Ollama ``ADAPTER``.

A few-MB adapter is easier to share than a whole model: anyone with the base model's GGUF applies it at load
time. llama.cpp computes ``W x + (alpha / rank) * B (A x)`` with one alpha per file, so per-module scales that
differ from that (rsLoRA, rank or alpha patterns) are folded into B.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llamabrew.errors import LlamabrewError
from llamabrew.export.merge import read_adapter_config

_PREFIX = "base_model.model."


def _module_scale(cfg: dict[str, Any], module: str, rank: int) -> float:
    """PEFT's scale for one module: alpha / r (or alpha / sqrt(r) with rsLoRA), with per-module overrides."""
    key = module.removeprefix(_PREFIX)
    alpha = next(
        (v for k, v in (cfg.get("alpha_pattern") or {}).items() if key.endswith(k)), cfg["lora_alpha"]
    )
    return alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank


def load_adapter_tensors(adapter: str | Path) -> dict[str, torch.Tensor]:
    path = Path(adapter) / "adapter_model.safetensors"
    if not path.is_file():
        raise LlamabrewError(f"{adapter}: GGUF adapter export needs adapter_model.safetensors")
    try:
        from safetensors.torch import load_file

        return load_file(str(path))
    except Exception as e:  # truncated or corrupt file
        raise LlamabrewError(f"{path}: cannot read adapter weights (corrupt or truncated: {e})") from e


def export_adapter_gguf(
    adapter: str | Path, out: str | Path, base: str | None = None, dtype: str = "f16"
) -> Path:
    """Write ``adapter`` as a GGUF LoRA for its base model's architecture; returns the path written."""
    import gguf
    from transformers import AutoConfig

    from llamabrew.gguf.writer import _permute, arch_of, publish
    from llamabrew.models import adapter_base

    cfg = read_adapter_config(adapter)
    if cfg.get("use_dora"):
        raise LlamabrewError(
            f"{adapter}: DoRA adapters cannot run as llama.cpp LoRAs; merge and export the model"
        )
    if cfg.get("modules_to_save"):
        raise LlamabrewError(
            f"{adapter}: the adapter also retrains whole modules ({cfg['modules_to_save']}); "
            "merge and export the model instead"
        )
    if cfg.get("trainable_token_indices"):
        raise LlamabrewError(
            f"{adapter}: the adapter also trains token embeddings (the base's untrained tokens), which a llama.cpp "
            "LoRA cannot carry; merge and export the model instead"
        )
    base = base or adapter_base(adapter)
    try:
        config = AutoConfig.from_pretrained(base)
    except Exception as e:
        raise LlamabrewError(f"cannot read the base model's config '{base}': {e}") from e
    arch, permute = arch_of(config)
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tensors = load_adapter_tensors(adapter)
    alpha = float(cfg["lora_alpha"])
    np_dtype = np.float16 if dtype == "f16" else np.float32
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch])
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        for key in sorted(k for k in tensors if k.endswith(".lora_A.weight")):
            module = key.removesuffix(".lora_A.weight")
            if "embed" in module:
                raise LlamabrewError(
                    f"{adapter}: LoRA on embeddings ({module}) is not supported; merge instead"
                )
            a = tensors[key].float().numpy()
            b_key = f"{module}.lora_B.weight"
            if b_key not in tensors:
                raise LlamabrewError(f"{adapter}: '{b_key}' is missing from the adapter weights")
            rank = a.shape[0]
            b = tensors[b_key].float().numpy() * (_module_scale(cfg, module, rank) / (alpha / rank))
            name = names.get_name(module.removeprefix(_PREFIX) + ".weight", try_suffixes=(".weight",))
            if name is None:
                raise LlamabrewError(f"{adapter}: module '{module}' has no GGUF equivalent")
            if permute and ".attn_q." in name:
                b = _permute(b, n_head)  # the base's q/k rows were permuted; B's output rows follow them
            elif permute and ".attn_k." in name:
                b = _permute(b, n_kv)
            writer.add_tensor(f"{name}.lora_a", a.astype(np_dtype))
            writer.add_tensor(f"{name}.lora_b", b.astype(np_dtype))
        if not any(k.endswith(".lora_A.weight") for k in tensors):
            raise LlamabrewError(f"{adapter}: no LoRA weights found")
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        publish(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out
