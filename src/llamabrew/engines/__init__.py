"""Engines: what turns chat messages into streamed text, below every stage that needs answers.

`open_engine` takes what a user names as "the model": a run or model directory (or hub id) runs on torch, a
``.gguf`` file on llama.cpp, ``openai:URL[#MODEL]`` on any OpenAI-compatible server. Exporting a run to GGUF on
the fly is the export stage's job (`llamabrew.export.open_llamacpp_engine`), so engines never import a stage.
"""

from __future__ import annotations

from pathlib import Path

from llamabrew.engines.base import (
    GREEDY,
    ContextLengthError,
    Engine,
    GenerationStats,
    Sampling,
    StopScanner,
    answer_all,
    generate_text,
)
from llamabrew.errors import LlamabrewError

__all__ = ["ENGINES", "GREEDY", "ContextLengthError", "Engine", "GenerationStats", "Sampling", "StopScanner",
           "answer_all", "describe", "generate_text", "open_engine", "runs_on_llamacpp"]

ENGINES = ("auto", "torch", "llamacpp")


def runs_on_llamacpp(engine: str, model_or_run: str | Path) -> bool:
    """Whether ``--engine`` (auto: a .gguf file goes to llama.cpp, anything else to torch) picks llama.cpp."""
    if engine not in ENGINES:
        raise LlamabrewError(f"unknown engine '{engine}': choose auto, torch or llamacpp")
    return engine == "llamacpp" or (engine == "auto" and Path(model_or_run).suffix == ".gguf")


def is_remote(model: str | Path) -> bool:
    from llamabrew.engines.openai_engine import PREFIX

    return str(model).startswith(PREFIX)


def open_engine(model: str | Path, *, adapter: str | None = None, template: str | None = None,
                threads: int | None = None, ctx: int | None = None, api_key: str | None = None,
                trust_remote_code: bool = False) -> Engine:
    """An engine for ``model``: ``openai:URL[#MODEL]``, a ``.gguf`` file, or anything torch loads."""
    if is_remote(model):
        from llamabrew.engines.openai_engine import OpenAIEngine, parse_spec

        url, name = parse_spec(str(model))
        return OpenAIEngine(url, name, api_key=api_key)
    if Path(model).suffix == ".gguf":
        from llamabrew.data.templates import get_template
        from llamabrew.engines.llamacpp import LlamaCppEngine

        if not Path(model).is_file():
            raise LlamabrewError(f"{model}: no such GGUF file")
        tmpl = get_template(template) if template and template != "auto" else None  # default: the file's own
        return LlamaCppEngine(model, threads=threads, ctx=ctx, template=tmpl, announce=False)
    from llamabrew.engines.torch_engine import open_torch_engine

    return open_torch_engine(str(model), adapter=adapter, template=template, trust_remote_code=trust_remote_code)


def describe(engine: Engine) -> str:
    """A short name of where answers come from, for reports and cache keys."""
    where = getattr(engine, "source", None) or getattr(engine, "path", None) or getattr(engine, "base_url", None) or ""
    return f"{engine.name}:{where}" if where else engine.name
