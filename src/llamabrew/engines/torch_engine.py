"""transformers `generate` as an engine: any Hugging Face causal LM, with or without a PEFT adapter."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import torch

from llamabrew.data.encode import encode_text
from llamabrew.data.templates import Template
from llamabrew.engines.base import GREEDY, ContextLengthError, GenerationStats, Sampling, StopScanner


class TorchEngine:
    """transformers `generate` on CPU or GPU, for a base model with or without a PEFT adapter."""

    name = "torch"

    def __init__(self, model: Any, tokenizer: Any, template: Template, source: str = "") -> None:
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.source = source  # what was loaded (model dir, run, hub id): names the engine in reports and caches
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

    def generate_batch(self, conversations: list[list[dict[str, str]]], sampling: Sampling) -> list[str]:
        """Greedy answers without a repetition penalty go as one left-padded batch; others one at a time
        (transformers takes one set of sampling settings per batch). The server streams one at a time."""
        if sampling.temperature <= 0 and sampling.repetition_penalty == 1.0:
            return self.greedy_batch(conversations, sampling.max_new_tokens, sampling.stop)
        return ["".join(self.stream(c, sampling)) for c in conversations]

    @torch.inference_mode()
    def greedy_batch(self, conversations: list[list[dict[str, str]]], max_new_tokens: int,
                     stop: list[str] | tuple[str, ...] = ()) -> list[str]:
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
            scanner = StopScanner([*self.template.stop, *stop])
            text = scanner.feed(self.tokenizer.decode(row, skip_special_tokens=True))
            answers.append(text + scanner.flush())
        return answers


def open_torch_engine(model_or_run: str, base: str | None = None, adapter: str | None = None,
                      template: str | None = None, trust_remote_code: bool = False) -> TorchEngine:
    """A `TorchEngine` for a model dir / hub id, a run dir, or base + adapter, with the template it was trained on."""
    from llamabrew.models import load_for_inference
    from llamabrew.run import trained_template

    model, tokenizer = load_for_inference(model_or_run, base=base, adapter=adapter,
                                          trust_remote_code=trust_remote_code)
    source = f"{model_or_run}+{adapter}" if adapter else str(model_or_run)
    return TorchEngine(model, tokenizer, trained_template(adapter or model_or_run, tokenizer, template), source)
