"""Write a LLaMA-family torch model (llama, mistral, qwen2) as a GGUF file llama.cpp and Ollama can run.

f16, q8_0 and q4_0 are written directly with the `gguf` package (its numpy quantizers port llama.cpp's
reference ones); K-quants need llama.cpp's own quantizer, so q4_k_m is an f16 file re-quantized by
`llama_model_quantize` from llama-cpp-python.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from gguf import MODEL_ARCH, GGMLQuantizationType, GGUFWriter, LlamaFileType

from llamabrew.errors import LlamabrewError
from llamabrew.extras import require
from llamabrew.gguf.keys import STOP_STRINGS, TEMPLATE_NAME
from llamabrew.gguf.vocab import GGUFVocab, add_vocab

QUANTS = ("f16", "q8_0", "q4_0", "q4_k_m")
# HF model_type -> (llama.cpp architecture, whether q/k rows need LLaMA's rotary permutation)
ARCHS: dict[str, tuple[MODEL_ARCH, bool]] = {
    "llama": (MODEL_ARCH.LLAMA, True),
    "mistral": (MODEL_ARCH.LLAMA, True),
    "qwen2": (MODEL_ARCH.QWEN2, False),
}
_FILE_TYPE = {"f16": LlamaFileType.MOSTLY_F16, "q8_0": LlamaFileType.MOSTLY_Q8_0,
              "q4_0": LlamaFileType.MOSTLY_Q4_0, "q4_k_m": LlamaFileType.MOSTLY_Q4_K_M}
_BLOCK = 32  # Q8_0 / Q4_0 block size: rows whose length is not a multiple stay f16
_IGNORED = ("rotary_emb.inv_freq",)
_F16_MAX = 65000.0


@dataclass
class ChatInfo:
    """The chat format the model was trained with, stored in the file so runtimes answer in that format."""

    jinja: str | None
    name: str | None = None
    stop: tuple[str, ...] = ()


def check_quant(quant: str) -> str:
    q = quant.lower()
    if q not in QUANTS:
        raise LlamabrewError(f"unknown quant type '{quant}'; choose one of: {', '.join(QUANTS)}")
    return q


def arch_of(config: Any) -> tuple[MODEL_ARCH, bool]:
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHS:
        raise LlamabrewError(f"GGUF export supports {', '.join(ARCHS)} models; this one is '{model_type}'")
    return ARCHS[model_type]


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF keeps each head's q/k rows as [first halves | second halves] of the rotary pairs; llama.cpp wants
    the pairs interleaved."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rope(config: Any) -> tuple[float, dict[str, Any]]:
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    theta = params.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0
    return float(theta), params


def _llama3_rope_factors(params: dict[str, Any], theta: float, head_dim: int) -> np.ndarray:
    """Per-frequency divisors of Llama 3.x's long-context rope, which llama.cpp reads from ``rope_freqs``."""
    factor = params.get("factor", 8.0)
    low, high = params.get("low_freq_factor", 1.0), params.get("high_freq_factor", 4.0)
    old_ctx = params.get("original_max_position_embeddings", 8192)
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * theta ** (i / head_dim)
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def add_hparams(writer: GGUFWriter, config: Any, quant: str) -> dict[str, int]:
    """Architecture hyper-parameters; returns the head counts the tensor conversion needs."""
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    if head_dim * n_head != config.hidden_size:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    theta, rope = _rope(config)
    writer.add_rope_freq_base(theta)
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "linear":
        from gguf import RopeScalingType

        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif kind not in ("default", "llama3"):
        raise LlamabrewError(f"rope scaling '{kind}' is not supported by GGUF export yet")
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(_FILE_TYPE[quant])
    return {"n_head": n_head, "n_kv": n_kv, "head_dim": head_dim}


def tensor_type(name: str, shape: tuple[int, ...], quant: str, tied: bool = False) -> GGMLQuantizationType:
    """Norms and biases stay f32; q4_0 keeps the output projection at q8_0 (llama.cpp also keeps it above
    4 bits), which with tied embeddings is ``token_embd``; rows that are not whole 32-blocks stay f16."""
    if len(shape) < 2 or name.endswith(".bias") or name.startswith("rope_freqs"):
        return GGMLQuantizationType.F32
    if quant in ("q8_0", "q4_0") and shape[-1] % _BLOCK == 0:
        output = name == "output.weight" or (tied and name == "token_embd.weight")
        if quant == "q4_0" and not output:
            return GGMLQuantizationType.Q4_0
        return GGMLQuantizationType.Q8_0
    return GGMLQuantizationType.F16


def add_tensor(writer: GGUFWriter, name: str, data: np.ndarray, quant: str, tied: bool = False) -> None:
    qtype = tensor_type(name, data.shape, quant, tied)
    if qtype == GGMLQuantizationType.F16 and np.abs(data).max(initial=0.0) > _F16_MAX:
        qtype = GGMLQuantizationType.F32  # bf16 weights beyond f16's range would become inf
    if qtype == GGMLQuantizationType.F32:
        writer.add_tensor(name, data.astype(np.float32))
    elif qtype == GGMLQuantizationType.F16:
        writer.add_tensor(name, data.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(data.astype(np.float32), qtype), raw_dtype=qtype)


def convert_tensors(writer: GGUFWriter, state: Mapping[str, torch.Tensor], config: Any, quant: str,
                    heads: dict[str, int]) -> None:
    arch, permute = arch_of(config)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for key, value in state.items():
        if key.endswith(_IGNORED) or (tied and key == "lm_head.weight"):
            continue  # llama.cpp reuses token_embd as the output projection when `output` is absent
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise LlamabrewError(f"tensor '{key}' has no GGUF equivalent (a modified {config.model_type}?)")
        data = value.detach().to(torch.float32).cpu().numpy()
        if permute and ".attn_q." in name:
            data = _permute(data, heads["n_head"])
        elif permute and ".attn_k." in name:
            data = _permute(data, heads["n_kv"])
        add_tensor(writer, name, data, quant, tied)
    theta, rope = _rope(config)
    if rope.get("rope_type") == "llama3":
        writer.add_tensor("rope_freqs.weight", _llama3_rope_factors(rope, theta, heads["head_dim"]))


def write_gguf(state: Mapping[str, torch.Tensor], config: Any, vocab: GGUFVocab, chat: ChatInfo, out: Path,
               quant: str, name: str = "llamabrew model", threads: int | None = None) -> Path:
    """Write ``state`` (an HF state dict) as a GGUF of type ``quant`` to ``out``, atomically."""
    quant = check_quant(quant)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    direct = "f16" if quant == "q4_k_m" else quant
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        arch, _ = arch_of(config)
        writer = GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch])
        writer.add_type("model")
        writer.add_name(name)
        heads = add_hparams(writer, config, direct)
        add_vocab(writer, vocab, chat.jinja)
        if chat.name:
            writer.add_string(TEMPLATE_NAME, chat.name)
        if chat.stop:
            writer.add_array(STOP_STRINGS, list(chat.stop))
        convert_tensors(writer, state, config, direct, heads)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        if quant == "q4_k_m":
            llama_quantize(Path(tmp), out, quant, threads)
        else:
            publish(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


def publish(tmp: str | Path, out: Path) -> None:
    """Move a finished temp file into place, readable by others (temp files are created private)."""
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)


def llama_quantize(src: Path, dst: Path, quant: str, threads: int | None = None) -> Path:
    """Re-quantize a GGUF with llama.cpp's quantizer (the only source of K-quants), atomically."""
    llama_cpp = require("llamacpp", f"{quant} export (llama.cpp's quantizer)")
    from llamabrew.models import free_cores

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}")
    params.nthread = threads or free_cores()
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        # llama.cpp prints per-tensor notes (K-quant fallbacks for short rows) straight to stderr: keep them
        # for the error message only
        with tempfile.TemporaryFile() as log:
            saved = os.dup(2)
            os.dup2(log.fileno(), 2)
            try:
                rc = llama_cpp.llama_model_quantize(str(src).encode(), tmp.encode(), params)
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            log.seek(0)
            notes = log.read().decode(errors="replace").strip().splitlines()[-3:]
        if rc != 0:
            raise LlamabrewError(f"llama.cpp could not quantize {src.name} to {quant} (code {rc}): "
                                 + " | ".join(notes))
        publish(tmp, dst)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dst


def write_probe_gguf(out: Path) -> Path:
    """A tiny random q4_0 LLaMA with a byte vocabulary: enough to see whether llama.cpp's kernels run here."""
    from types import SimpleNamespace

    cfg = SimpleNamespace(model_type="llama", num_attention_heads=2, num_key_value_heads=2, hidden_size=64,
                          intermediate_size=128, num_hidden_layers=1, max_position_embeddings=64,
                          rms_norm_eps=1e-5, vocab_size=256, tie_word_embeddings=False)
    shapes = {"model.embed_tokens.weight": (256, 64), "lm_head.weight": (256, 64), "model.norm.weight": (64,)}
    layer = {"self_attn.q_proj": (64, 64), "self_attn.k_proj": (64, 64), "self_attn.v_proj": (64, 64),
             "self_attn.o_proj": (64, 64), "mlp.gate_proj": (128, 64), "mlp.up_proj": (128, 64),
             "mlp.down_proj": (64, 128), "input_layernorm": (64,), "post_attention_layernorm": (64,)}
    shapes |= {f"model.layers.0.{k}.weight": v for k, v in layer.items()}
    vocab = GGUFVocab("llama", None, [f"<0x{i:02X}>" for i in range(256)], [6] * 256, [0.0] * 256,
                      special_ids={"bos": 1, "eos": 2})
    return write_gguf({k: torch.randn(v) for k, v in shapes.items()}, cfg, vocab, ChatInfo(None), out, "q4_0")
