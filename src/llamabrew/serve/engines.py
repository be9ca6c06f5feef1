"""Text generation engines behind chat, eval and the HTTP server.

Every engine renders chat messages with the template the model was trained with, streams text pieces, stops at
EOS or at the template's stop strings, and records how the last generation went (`last`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from llamabrew.data.encode import encode_text
from llamabrew.data.templates import Template
from llamabrew.errors import LlamabrewError


class ContextLengthError(LlamabrewError):
    """The prompt does not fit the model's context window."""


@dataclass
class Sampling:
    max_new_tokens: int = 256
    temperature: float = 0.7  # 0 = greedy
    top_p: float = 0.9
    top_k: int = 40
    repetition_penalty: float = 1.1
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


GREEDY = Sampling(temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0)


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    finish_reason: str = "stop"  # "stop" (EOS or stop string) or "length"

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


class Engine(Protocol):
    name: str
    template: Template
    context_length: int
    last: GenerationStats

    def stream(self, messages: list[dict[str, str]], sampling: Sampling,
               cancel: threading.Event | None = None) -> Iterator[str]: ...

    def count_prompt_tokens(self, messages: list[dict[str, str]]) -> int: ...


class StopScanner:
    """Feeds streamed text through, holding back any tail that could still become a stop string."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.buffer = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.buffer += piece
        hits = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self.buffer = self.buffer[: min(hits)], ""
            return out
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.buffer.endswith(s[:k])), default=0)
        out = self.buffer[: len(self.buffer) - hold]
        self.buffer = self.buffer[len(out):]
        return out

    def flush(self) -> str:
        out, self.buffer = ("" if self.stopped else self.buffer), ""
        return out


ENGINES = ("auto", "torch", "llamacpp")


def runs_on_llamacpp(engine: str, model_or_run: str | Path) -> bool:
    """Whether ``--engine`` (auto: a .gguf file goes to llama.cpp, anything else to torch) picks llama.cpp."""
    if engine not in ENGINES:
        raise LlamabrewError(f"unknown engine '{engine}': choose auto, torch or llamacpp")
    return engine == "llamacpp" or (engine == "auto" and Path(model_or_run).suffix == ".gguf")


def generate_text(engine: Engine, messages: list[dict[str, str]], sampling: Sampling) -> str:
    return "".join(engine.stream(messages, sampling))


class TorchEngine:
    """transformers `generate` on CPU or GPU, for a base model with or without a PEFT adapter."""

    name = "torch"

    def __init__(self, model: Any, tokenizer: Any, template: Template) -> None:
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.device = next(model.parameters()).device
        self.context_length = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        self.last = GenerationStats()
        self.lock = threading.Lock()  # one generation at a time per model

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return encode_text(self.tokenizer, self.template.render(self.tokenizer, messages, add_generation_prompt=True))

    def count_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(self.prompt_ids(messages))

    def _generate_kwargs(self, sampling: Sampling, max_new: int) -> dict[str, Any]:
        kw: dict[str, Any] = {"max_new_tokens": max_new, "pad_token_id": self.tokenizer.pad_token_id,
                              "eos_token_id": self.tokenizer.eos_token_id,
                              "repetition_penalty": sampling.repetition_penalty}
        if sampling.temperature > 0:
            kw.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
                      top_k=sampling.top_k or None)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw

    def stream(self, messages: list[dict[str, str]], sampling: Sampling,
               cancel: threading.Event | None = None) -> Iterator[str]:
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        ids = self.prompt_ids(messages)
        if len(ids) >= self.context_length:
            raise ContextLengthError(f"prompt is {len(ids)} tokens; the model's context is {self.context_length}")
        max_new = max(1, min(sampling.max_new_tokens, self.context_length - len(ids)))
        scanner = StopScanner([*self.template.stop, *sampling.stop])
        halt = threading.Event()
        counter = {"n": 0}

        class Halt(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: Any, **_: Any) -> torch.Tensor:
                counter["n"] = input_ids.shape[1] - len(ids)
                stop = halt.is_set() or scanner.stopped or (cancel is not None and cancel.is_set())
                return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = self._generate_kwargs(sampling, max_new)
        inputs = torch.tensor([ids], device=self.device)
        error: list[BaseException] = []

        def work() -> None:
            try:
                if sampling.seed is not None:
                    torch.manual_seed(sampling.seed)
                with torch.inference_mode():
                    out = self.model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs),
                                              streamer=streamer, stopping_criteria=StoppingCriteriaList([Halt()]),
                                              **kwargs)
                counter["n"] = out.shape[1] - len(ids)
                counter["eos"] = int(out[0, -1]) == self.tokenizer.eos_token_id
            except BaseException as e:  # surfaced in the caller's thread
                error.append(e)
                streamer.end()

        with self.lock:
            t0 = time.monotonic()
            thread = threading.Thread(target=work, daemon=True)
            thread.start()
            try:
                for piece in streamer:
                    if text := scanner.feed(piece):
                        yield text
                if text := scanner.flush():
                    yield text
            finally:
                halt.set()  # also when the consumer stops reading early
                thread.join()
            if error:
                raise error[0]
            n = counter["n"]
            hit_length = n >= max_new and not counter.get("eos") and not scanner.stopped
            self.last = GenerationStats(len(ids), n, time.monotonic() - t0, "length" if hit_length else "stop")

    @torch.inference_mode()
    def greedy_batch(self, conversations: list[list[dict[str, str]]], max_new_tokens: int) -> list[str]:
        """Greedy answers for many prompts at once (left-padded batch), cut at stop strings; for evaluation."""
        prompts = [self.prompt_ids(m) for m in conversations]
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        out = self.model.generate(input_ids=ids, attention_mask=mask,
                                  **self._generate_kwargs(GREEDY, max_new_tokens))
        answers = []
        for row in out[:, width:]:
            scanner = StopScanner(list(self.template.stop))
            text = scanner.feed(self.tokenizer.decode(row, skip_special_tokens=True))
            answers.append(text + scanner.flush())
        return answers


def open_torch_engine(model_or_run: str, base: str | None = None, adapter: str | None = None,
                      template: str | None = None, trust_remote_code: bool = False) -> TorchEngine:
    """A `TorchEngine` for a model dir / hub id, a run dir, or base + adapter, with the template it was trained on."""
    from llamabrew.data.templates import get_template
    from llamabrew.models import load_for_inference
    from llamabrew.recipe import read_saved_recipe

    model, tokenizer = load_for_inference(model_or_run, base=base, adapter=adapter,
                                          trust_remote_code=trust_remote_code)
    if template is None:
        saved = read_saved_recipe(adapter or model_or_run)
        template = saved.data.template if saved else "auto"
    return TorchEngine(model, tokenizer, get_template(template, tokenizer))
