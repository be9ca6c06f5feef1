"""The models a server answers for, by name: a base with its LoRA adapters (torch) or GGUF files (llama.cpp).

Names are what clients send as ``"model"``. A request can only pick one of these names: nothing it sends is
ever used as a path. Several adapters of one base share a single copy of the base weights (the way vLLM's
``--lora-modules`` does); each request switches to its adapter under the engine lock and renders the chat
template that adapter was trained with.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamabrew.data.templates import Template
from llamabrew.engines import Engine, GenerationStats, Sampling
from llamabrew.engines.torch_engine import TorchEngine
from llamabrew.errors import LlamabrewError
from llamabrew.gguf.reader import is_adapter_gguf
from llamabrew.models import adapter_base, is_adapter_dir
from llamabrew.run import trained_template

# /v1/completions continues the prompt as given: no chat template, no template stop strings.
RAW = Template("raw", "{% for m in messages %}{{ m.content }}{% endfor %}", ())
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")


class AdapterEngine:
    """One adapter of a PEFT model shared with other adapters, or the bare base (``adapter=None``).

    ``stream`` holds the shared re-entrant lock while it switches adapters and generates, so two names never
    interleave on the shared weights; the inner `TorchEngine` takes the same lock again in the same thread.
    """

    name = "torch"

    def __init__(self, inner: TorchEngine, peft_model: Any, adapter: str | None,
                 lock: threading.RLock) -> None:
        self.inner, self.peft, self.adapter, self.lock = inner, peft_model, adapter, lock
        inner.lock = lock

    template = property(lambda self: self.inner.template)
    context_length = property(lambda self: self.inner.context_length)
    last = property(lambda self: self.inner.last)

    def count_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return self.inner.count_prompt_tokens(messages)

    def stream(self, messages: list[dict[str, str]], sampling: Sampling,
               cancel: threading.Event | None = None) -> Iterator[str]:
        with self.lock:
            if self.adapter is not None:
                self.peft.set_adapter(self.adapter)
            with self.peft.disable_adapter() if self.adapter is None else nullcontext():
                yield from self.inner.stream(messages, sampling, cancel)


def with_template(engine: Engine, template: Template) -> Engine:
    """The same weights and lock rendering prompts with another template (own `last` stats)."""
    clone = copy.copy(engine)
    if isinstance(engine, AdapterEngine):
        clone.inner = with_template(engine.inner, template)  # type: ignore[attr-defined]
    else:
        clone.template, clone.last = template, GenerationStats()
    return clone


@dataclass
class ServedModel:
    """A name clients can ask for: ``engine`` answers chats, ``raw`` answers plain completions."""

    name: str
    engine: Engine
    parent: str | None = None  # the base model's name, for adapters

    def __post_init__(self) -> None:
        self.raw = with_template(self.engine, RAW)


class Registry:
    """The served models in a fixed order (the first one is the default of the web page)."""

    def __init__(self, models: list[ServedModel]) -> None:
        if not models:
            raise LlamabrewError("nothing to serve")
        self.models: dict[str, ServedModel] = {}
        for m in models:
            if not NAME.fullmatch(m.name):
                raise LlamabrewError(f"model name '{m.name}': use letters, digits, . _ - : / @ + (max 128)")
            if m.name in self.models:
                raise LlamabrewError(f"two models are named '{m.name}'; name them with --adapter NAME=DIR")
            self.models[m.name] = m

    def describe_slots(self) -> list[str]:
        """How many requests each model in memory generates at once, and the KV cache each one takes."""
        lines, seen = [], set()
        for m in self.models.values():
            runner = getattr(m.engine, "runner", None)
            if runner is None and "torch" not in seen:
                seen.add("torch")
                lines.append(f"{m.name}: torch, one generation at a time (no batching)")
            elif runner is not None and id(runner) not in seen:
                seen.add(id(runner))
                lines.append(f"{m.name}: llama.cpp, {m.engine.describe_slots()}")  # type: ignore[attr-defined]
        return lines

    def get(self, name: str) -> ServedModel | None:
        return self.models.get(name)

    @property
    def names(self) -> list[str]:
        return list(self.models)


def served_name(model: str) -> str:
    """A local directory or file is served under its own name (no paths leak); a hub id as it is."""
    path = Path(model)
    if not path.exists():
        return model
    return path.stem if path.suffix == ".gguf" else path.resolve().name


def _same_model(a: str, b: str) -> bool:
    pa, pb = Path(a), Path(b)
    return pa.resolve() == pb.resolve() if pa.exists() and pb.exists() else a == b


def plan_adapters(model_or_run: str, adapters: dict[str, str], name: str | None = None
                  ) -> tuple[str, str, dict[str, str]]:
    """(base, the base's served name, {adapter name: dir}) for MODEL_OR_RUN plus ``--adapter`` entries.

    A run directory is served under its own name and its base under the base's; every adapter must have been
    trained on that same base, since they share its weights.
    """
    runs: dict[str, str] = {}
    if is_adapter_dir(model_or_run):
        base = adapter_base(model_or_run)
        runs[name or served_name(model_or_run)] = model_or_run
        base_name = served_name(base)
    else:
        base, base_name = model_or_run, name or served_name(model_or_run)
    for adapter_name, folder in adapters.items():
        if adapter_name in runs or adapter_name == base_name:
            raise LlamabrewError(f"--adapter {adapter_name}=...: that name is already served; pick another")
        if not is_adapter_dir(folder):
            raise LlamabrewError(f"--adapter {adapter_name}={folder}: not a PEFT adapter directory "
                                 "(no adapter_config.json)")
        if not _same_model(adapter_base(folder), base):
            raise LlamabrewError(f"--adapter {adapter_name}={folder}: trained on '{adapter_base(folder)}', "
                                 f"but the served base is '{base}'; adapters of one server share one base")
        runs[adapter_name] = folder
    return base, base_name, runs


def _open_torch(model_or_run: str, adapters: dict[str, str], name: str | None, template: str | None
                ) -> list[ServedModel]:
    """The base loaded once, every adapter on it by name, and the base itself under its own name."""
    from peft import PeftModel

    from llamabrew.models import load_causal_lm, load_tokenizer

    base, base_name, runs = plan_adapters(model_or_run, adapters, name)
    base_tok = load_tokenizer(base)
    peft_model: Any = load_causal_lm(base)
    lock = threading.RLock()
    served: list[ServedModel] = []
    for i, (adapter_name, folder) in enumerate(runs.items()):
        key = f"adapter{i}"  # PEFT adapter names become module keys: no dots or slashes allowed
        try:
            if i == 0:
                peft_model = PeftModel.from_pretrained(peft_model, folder, adapter_name=key)
            else:
                peft_model.load_adapter(folder, adapter_name=key)
        except Exception as e:  # shape mismatch with the base, truncated weights, ...
            raise LlamabrewError(f"{folder}: cannot load this adapter onto '{base}' ({str(e)[:300]})") from e
        tok = load_tokenizer(folder) if (Path(folder) / "tokenizer_config.json").is_file() else base_tok
        inner = TorchEngine(peft_model, tok, trained_template(folder, tok, template))
        engine = AdapterEngine(inner, peft_model, key, lock)
        served.append(ServedModel(adapter_name, engine, parent=base_name))
    peft_model.eval()
    bare = AdapterEngine(TorchEngine(peft_model, base_tok, trained_template(base, base_tok, template)),
                         peft_model, None, lock)
    return [*served, ServedModel(base_name, bare)]


def _open_gguf(path: str, adapters: dict[str, str], name: str | None, template: str | None,
               ctx: int | None, threads: int | None, quant: str, parallel: int | None,
               prompt_cache: bool) -> list[ServedModel]:
    """A GGUF model (a run or model directory is exported on the fly, cached), plus other GGUF files by name:
    LoRA GGUFs go on top of it, whole models load as they are. Each is its own llama.cpp model in memory
    (llama.cpp applies a LoRA at load time)."""
    from llamabrew.data.templates import get_template
    from llamabrew.engines.llamacpp import LlamaCppEngine
    from llamabrew.export import open_llamacpp_engine

    main = open_llamacpp_engine(path, threads=threads, ctx=ctx, quant=quant, template=template, parallel=parallel,
                                prompt_cache=prompt_cache)
    served = [ServedModel(name or served_name(path), main)]
    for adapter_name, file in adapters.items():
        if Path(file).suffix != ".gguf" or not Path(file).is_file():
            raise LlamabrewError(f"--adapter {adapter_name}={file}: with a .gguf model, adapters are .gguf "
                                 "files (`llamabrew export` LoRA GGUFs or whole models)")
        if is_adapter_gguf(file):
            tmpl = get_template(template) if template and template != "auto" else main.template
            engine: Engine = LlamaCppEngine(main.path, threads=threads, ctx=ctx, template=tmpl, lora=file,
                                            parallel=parallel, prompt_cache=prompt_cache)
        else:
            engine = open_llamacpp_engine(file, threads=threads, ctx=ctx, template=template, parallel=parallel,
                                          prompt_cache=prompt_cache)
        served.append(ServedModel(adapter_name, engine, parent=served[0].name))
    return served


def open_registry(model_or_run: str, adapters: dict[str, str] | None = None, *, name: str | None = None,
                  template: str | None = None, ctx: int | None = None, threads: int | None = None,
                  engine: str = "auto", quant: str = "q8_0", parallel: int | None = None,
                  prompt_cache: bool = True) -> Registry:
    """Load what ``llamabrew serve`` serves. ``engine`` auto: a .gguf runs on llama.cpp, anything else on torch;
    llamacpp: a run or model directory is exported to GGUF (``quant``) on the fly, and ``parallel`` requests
    generate together (torch serves one at a time)."""
    from llamabrew.engines import runs_on_llamacpp
    from llamabrew.engines.torch_engine import open_torch_engine

    adapters = adapters or {}
    if runs_on_llamacpp(engine, model_or_run):
        return Registry(_open_gguf(model_or_run, adapters, name, template, ctx, threads, quant, parallel,
                                   prompt_cache))
    if adapters or is_adapter_dir(model_or_run):
        return Registry(_open_torch(model_or_run, adapters, name, template))
    engine = open_torch_engine(model_or_run, template=template)
    return Registry([ServedModel(name or served_name(model_or_run), engine)])


def lora_rank(folder: str) -> int:
    """The largest LoRA rank in an adapter (``r`` and any per-module ``rank_pattern``)."""
    cfg = json.loads((Path(folder) / "adapter_config.json").read_text(encoding="utf-8"))
    return max([int(cfg.get("r", 8)), *(int(v) for v in (cfg.get("rank_pattern") or {}).values())])
