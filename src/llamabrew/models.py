"""Loading models and tokenizers through the standard `from_pretrained` path, and picking device/precision."""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from llamabrew.errors import LlamabrewError
from llamabrew.extras import pip_line, require


def _busy_cores(seconds: float = 0.2) -> float:
    """Cores kept busy by other processes right now, from two readings of /proc/stat (0 where unreadable)."""
    def read() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    try:
        total0, idle0 = read()
        time.sleep(seconds)
        total1, idle1 = read()
    except (OSError, ValueError, IndexError):
        return 0.0
    dt = total1 - total0
    return 0.0 if dt <= 0 else (os.cpu_count() or 1) * (1 - (idle1 - idle0) / dt)


@functools.cache
def free_cores() -> int:
    """CPU cores this process may use and nobody else is using: oversubscribed threads collapse CPU throughput."""
    try:
        allowed = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        allowed = max(1, os.cpu_count() or 1)
    return max(1, min(allowed, round(allowed - _busy_cores())))


def set_threads(threads: int | None = None) -> int:
    """``threads``, else the free cores shared among the processes a launcher (torchrun) started here."""
    n = threads or max(1, free_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)))
    torch.set_num_threads(n)
    return n


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX): there bf16 autocast trains about twice as
    fast as fp32 (measured on 2 EPYC cores: 91 → 52 ms a step at hidden 160, 583 → 258 ms at 384)."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(callable(probe) and probe() for probe in probes)


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype: bf16 where the hardware runs it fast (CUDA with bf16, a CPU with native bf16
    instructions), else fp16 on older CUDA and fp32 on other CPUs; weights stay fp32 on CPU either way."""
    fast_bf16 = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_fast_bf16()
    if precision == "bf16" or (precision == "auto" and fast_bf16):
        return torch.bfloat16
    if precision == "fp16" or (precision == "auto" and device.type == "cuda"):
        return torch.float16
    return torch.float32


def _hub_error(name: str, e: Exception) -> LlamabrewError:
    hint = "" if Path(name).exists() else " (not a local directory; hub downloads need network access)"
    return LlamabrewError(f"cannot load '{name}'{hint}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")


def load_tokenizer(name_or_dir: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_dir, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise _hub_error(name_or_dir, e) from e
    if tok.eos_token is None:
        raise LlamabrewError(f"tokenizer of '{name_or_dir}' has no EOS token; cannot end answers")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def check_4bit() -> None:
    """QLoRA's needs, said in one line before any data or weights are loaded."""
    if not torch.cuda.is_available():
        raise LlamabrewError("4-bit loading (--qlora) needs a CUDA GPU and the 'gpu' extra: "
                             f"{pip_line('gpu')}; on a CPU train without --qlora")
    require("gpu", "4-bit loading (--qlora)", "bitsandbytes")


def load_causal_lm(
    name_or_dir: str,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    quantize_4bit: bool = False,
) -> Any:
    """Any Hugging Face causal LM; 4-bit NF4 (QLoRA) through bitsandbytes when asked and CUDA is there."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if quantize_4bit:
        check_4bit()
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["device_map"] = {"": torch.cuda.current_device()}  # this rank's device under torchrun
    try:
        return AutoModelForCausalLM.from_pretrained(name_or_dir, **kwargs)
    except Exception as e:
        raise _hub_error(name_or_dir, e) from e


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def adapter_base(path: str | Path) -> str:
    """The base model an adapter directory was trained on."""
    cfg = json.loads((Path(path) / "adapter_config.json").read_text())
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise LlamabrewError(f"{path}/adapter_config.json: field 'base_model_name_or_path': missing; pass --base")
    return str(base)


def load_for_inference(
    model_or_run: str, base: str | None = None, adapter: str | None = None, trust_remote_code: bool = False
) -> tuple[Any, Any]:
    """(model, tokenizer) for a plain model dir/hub id, a run directory holding an adapter, or base + adapter."""
    from peft import PeftModel

    if adapter is None and is_adapter_dir(model_or_run):
        adapter = model_or_run
    if adapter is not None and not is_adapter_dir(adapter):
        raise LlamabrewError(f"{adapter}: not a PEFT adapter directory (no adapter_config.json)")
    base_name = base or (adapter_base(adapter) if adapter else model_or_run)
    tok_source = adapter if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else base_name
    tokenizer = load_tokenizer(tok_source, trust_remote_code)
    model = load_causal_lm(base_name, torch.float32, trust_remote_code)
    if adapter:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    return model, tokenizer
