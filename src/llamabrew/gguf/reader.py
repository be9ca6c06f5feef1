"""Read what a GGUF header says about the model, its tokenizer and its chat format, with the keys of `keys`."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import Keys

from llamabrew.data.templates import BUILTIN, Template
from llamabrew.errors import LlamabrewError
from llamabrew.gguf.keys import STOP_STRINGS, TEMPLATE_NAME

log = logging.getLogger(__name__)
DEFAULT_CTX = 4096  # capped by the model's training context
_GiB = 1024**3


@dataclass
class GGUFInfo:
    """What a GGUF header says about the model, its tokenizer and its chat format."""

    path: Path
    arch: str
    tokenizer_model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    context_length: int
    n_layer: int
    n_embd: int
    n_head: int
    n_kv: int
    head_dim: int
    n_vocab: int
    weight_bytes: int
    add_bos: bool
    bos_text: str
    eos_text: str
    chat_template: str | None
    template_name: str | None
    stop: tuple[str, ...]

    def template(self) -> Template:
        """The chat format stored in the file: a built-in one when the Jinja matches, else the file's own."""
        if self.chat_template is None:
            log.warning("%s has no chat template; using alpaca", self.path.name)
            return BUILTIN["alpaca"]
        same = [t for t in BUILTIN.values() if t.jinja == self.chat_template]
        return same[0] if same else Template(self.template_name or "gguf", self.chat_template, self.stop)


def read_gguf_info(path: str | Path) -> GGUFInfo:
    """Read a GGUF header and check the file is complete; a clear error for anything else."""
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise LlamabrewError(f"{path}: no such file")
    try:
        reader = GGUFReader(path)
        end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as e:
        raise LlamabrewError(f"{path}: not a valid GGUF file (corrupt or truncated: {e})") from e
    if end > path.stat().st_size or not reader.tensors:
        raise LlamabrewError(f"{path}: GGUF file is truncated (tensor data ends past the end of the file)")

    def get(key: str, default: Any = None) -> Any:
        field = reader.fields.get(key)
        return field.contents() if field is not None else default

    arch = get(Keys.General.ARCHITECTURE, "")

    def hparam(key: str, default: Any) -> Any:
        return get(key.format(arch=arch), default)

    n_head, n_embd = int(hparam(Keys.Attention.HEAD_COUNT, 1)), int(hparam(Keys.LLM.EMBEDDING_LENGTH, 0))
    tokens = get(Keys.Tokenizer.LIST, [])

    def text_of(key: str) -> str:
        tid = get(key)
        return tokens[tid] if tid is not None and tid < len(tokens) else ""

    return GGUFInfo(
        path, arch, get(Keys.Tokenizer.MODEL, ""), int(hparam(Keys.LLM.CONTEXT_LENGTH, DEFAULT_CTX)),
        int(hparam(Keys.LLM.BLOCK_COUNT, 0)), n_embd, n_head,
        int(hparam(Keys.Attention.HEAD_COUNT_KV, n_head)),
        int(hparam(Keys.Attention.KEY_LENGTH, n_embd // max(n_head, 1))), len(tokens),
        sum(int(t.n_bytes) for t in reader.tensors), bool(get(Keys.Tokenizer.ADD_BOS, True)),
        text_of(Keys.Tokenizer.BOS_ID), text_of(Keys.Tokenizer.EOS_ID),
        get(Keys.Tokenizer.CHAT_TEMPLATE), get(TEMPLATE_NAME), tuple(get(STOP_STRINGS, ())))


def is_adapter_gguf(path: str | Path) -> bool:
    """Whether a GGUF holds a LoRA adapter (``general.type = adapter``) rather than a model."""
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get(Keys.General.TYPE)
    return field is not None and field.contents() == "adapter"


@dataclass
class MemoryEstimate:
    weights: int
    kv_cache: int
    compute: int
    available: int | None  # MemAvailable: what the machine can give without swapping

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute

    def describe(self) -> str:
        free = f", {self.available / _GiB:.1f} GiB free" if self.available else ""
        return (f"needs ~{self.total / _GiB:.2f} GiB (weights {self.weights / _GiB:.2f} + KV cache "
                f"{self.kv_cache / _GiB:.2f} + compute {self.compute / _GiB:.2f}){free}")

    def warning(self) -> str | None:
        if self.available is None or self.total <= self.available:
            return None
        return (f"the model needs ~{self.total / _GiB:.1f} GiB but only {self.available / _GiB:.1f} GiB of "
                "RAM is free; it will swap and crawl. Use a smaller quant (q4_k_m), --ctx or model")


def _available_ram() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def estimate_memory(info: GGUFInfo, n_ctx: int) -> MemoryEstimate:
    """Weights as stored + f16 K and V for every layer and position + compute buffers (estimated)."""
    kv = 2 * n_ctx * info.n_layer * info.n_kv * info.head_dim * 2
    compute = 4 * min(512, n_ctx) * (info.n_vocab + 12 * info.n_embd + n_ctx * info.n_head)
    return MemoryEstimate(info.weight_bytes, kv, compute, _available_ram())
