"""The llama.cpp engine: a GGUF file on the CPU, with the chat template and stop strings stored in it.

Requests run in ``parallel`` slots decoded together (`llamacpp_batch`): several people, or an evaluation's
questions, share each read of the weights, and a conversation's next turn reuses its cached prefix. Before
loading it says how much memory the model will take (weights + KV cache of every slot + compute buffers) and
warns when that is more than the machine has free: on a Raspberry Pi-class board that means swapping.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llamabrew.data.templates import Template
from llamabrew.engines.base import ContextLengthError, GenerationStats, Sampling
from llamabrew.engines.llamacpp_batch import BatchRunner
from llamabrew.engines.llamacpp_slots import Job, TextRules
from llamabrew.errors import LlamabrewError
from llamabrew.extras import require
from llamabrew.gguf.reader import DEFAULT_CTX, GGUFInfo, MemoryEstimate, estimate_memory, read_gguf_info
from llamabrew.gguf.runtime import GGUF_USE, default_threads, load_model, stock_tokenize, uses_extra_buffers

log = logging.getLogger(__name__)


class _JinjaRenderer:
    """Stands in for a HF tokenizer in `Template.render`: renders the GGUF's Jinja as transformers does."""

    def __init__(self, bos: str, eos: str) -> None:
        self.bos_token, self.eos_token = bos, eos

    def apply_chat_template(self, messages: list[dict[str, str]], chat_template: str, tokenize: bool = False,
                            add_generation_prompt: bool = False) -> str:
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise ValueError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.globals["raise_exception"] = raise_exception
        return env.from_string(chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, bos_token=self.bos_token,
            eos_token=self.eos_token)


MAX_DEFAULT_PARALLEL = 8  # past this a 2-8 core CPU gains little aggregate speed, and each slot adds latency


def default_parallel(info: GGUFInfo, ctx: int) -> int:
    """Slots for a server: as many KV caches of ``ctx`` tokens as half the memory left free by the weights and
    compute buffers holds, 1 to 8."""
    est = estimate_memory(info, ctx)
    if est.available is None:
        return 4
    spare = est.available - est.weights - est.compute
    return max(1, min(MAX_DEFAULT_PARALLEL, int(spare // 2 // max(1, est.kv_cache))))


class LlamaCppEngine:
    """Streams answers from a GGUF model through llama-cpp-python; an `llamabrew.engines.Engine`.

    ``parallel`` requests generate at once (default: `default_parallel`), each in its own KV-cache slot of
    ``ctx`` tokens; more wait in line. ``invariant`` (default) keeps every request's logits independent of what
    else runs beside it, so greedy answers under load are the answers alone (see `llamacpp_batch`).
    ``prompt_cache`` (default) lets a request reuse the KV cache of the prompt prefix its slot already holds.
    ``logits_all`` opens one slot that can return every position's logits (`logits`, export verification).
    """

    name = "llama.cpp"

    def __init__(self, path: str | Path, threads: int | None = None, ctx: int | None = None,
                 template: Template | None = None, lora: str | Path | None = None, logits_all: bool = False,
                 announce: bool = True, parallel: int | None = None, invariant: bool = True,
                 prompt_cache: bool = True) -> None:
        self._lib = require("llamacpp", GGUF_USE)
        self.path = Path(path)
        self.info = read_gguf_info(self.path)
        self.context_length = min(ctx or DEFAULT_CTX, self.info.context_length or DEFAULT_CTX)
        self.threads = threads or default_threads()
        self.parallel = 1 if logits_all else parallel or default_parallel(self.info, self.context_length)
        per_slot = estimate_memory(self.info, self.context_length)
        self.kv_per_slot = per_slot.kv_cache
        self.memory = MemoryEstimate(per_slot.weights, per_slot.kv_cache * self.parallel, per_slot.compute,
                                     per_slot.available)
        if announce:
            log.info("%s: %s", self.path.name, self.memory.describe())
            if warning := self.memory.warning():
                log.warning(warning)
        self.template = template or self.info.template()
        self.lora_path = Path(lora) if lora else None
        self.prompt_cache = prompt_cache
        self._renderer = _JinjaRenderer(self.info.bos_text, self.info.eos_text)
        self._local = threading.local()
        self._pieces: dict[int, bytes] = {}
        extra = uses_extra_buffers(self.path, self.info.n_embd)
        self._load(extra, logits_all)
        if invariant and self.parallel > 1:
            self._make_invariant(extra, logits_all)
        if announce:
            log.info("%s: %s", self.path.name, self.describe_slots())

    def _load(self, extra_buffers: bool, logits_all: bool) -> None:
        self.model = load_model(self.path, self.info.n_embd, extra_buffers)
        self.vocab, self.bos = self.model.vocab, self.model.token_bos()
        self._lora: Any = None
        if self.lora_path is not None:
            self._lora = self._lib.llama_adapter_lora_init(self.model.model, str(self.lora_path).encode())
            if not self._lora:
                self.model.close()
                raise LlamabrewError(f"{self.lora_path}: llama.cpp could not load this LoRA adapter")
        self.runner = BatchRunner(self.model, self.parallel, self.context_length, self.threads, lora=self._lora,
                                  all_logits=logits_all, prompt_cache=self.prompt_cache)

    def _make_invariant(self, extra: bool, logits_all: bool) -> None:
        """The fastest way of running that gives every request the numbers it gets alone, measured: as llama.cpp
        runs, else without 1-row products, else with the weights in plain buffers (`llamacpp_batch`)."""
        for buffers in (True, False) if extra else (False,):
            if not buffers:
                log.info("%s: llama.cpp's repacked weight kernels give a request other numbers when others share "
                         "its step; keeping the weights in plain buffers", self.path.name)
                self._unload()
                self._load(False, logits_all)
            for pad in (False, True):
                self.runner.pad = pad
                if self.runner.call(self.runner.batch_invariant):
                    return
        log.warning("%s: llama.cpp's results here depend on what else is in a batch: greedy answers under load "
                    "may differ from answers alone", self.path.name)

    def _unload(self) -> None:
        self.runner.close()
        if self._lora:
            self._lib.llama_adapter_lora_free(self._lora)
        self.model.close()

    def describe_slots(self) -> str:
        return (f"{self.parallel} slot{'s' if self.parallel > 1 else ''} of {self.context_length} tokens, KV cache "
                f"{self.kv_per_slot / 2**20:.1f} MiB per slot")

    @property
    def last(self) -> GenerationStats:
        """How this thread's last generation went (requests run side by side, each on its own thread)."""
        return getattr(self._local, "last", None) or GenerationStats()

    @last.setter
    def last(self, stats: GenerationStats) -> None:
        self._local.last = stats

    def encode(self, text: str) -> list[int]:
        """Rendered template text as stock llama.cpp reads it (`stock_tokenize`), so a prompt here is the prompt
        Ollama or llama-server would run."""
        return stock_tokenize(self.model, text)

    def piece(self, token: int) -> bytes:
        """The bytes of one token (cached; llama-cpp-python's own helper truncates long tokens)."""
        if (cached := self._pieces.get(token)) is not None:
            return cached
        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self._lib.llama_token_to_piece(self.vocab, token, buf, size, 0, False)
            if n >= 0:
                self._pieces[token] = buf.raw[:n]
                return self._pieces[token]
            size = -n

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return self.encode(self.template.render(self._renderer, messages, add_generation_prompt=True))

    def count_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(self.prompt_ids(messages))

    def logits(self, ids: list[int]) -> np.ndarray:
        """Next-token logits at every position of ``ids`` (needs ``logits_all=True``), for verification."""
        return self.runner.call(lambda: self.runner.all_logits(ids))

    def _job(self, ids: list[int], sampling: Sampling, cancel: threading.Event | None) -> Job:
        if len(ids) >= self.context_length:
            raise ContextLengthError(
                f"prompt is {len(ids)} tokens; the context is {self.context_length} (--ctx)")
        rules = TextRules(self.piece, self._is_eog, tuple(self.template.stop), self.info.tokenizer_model == "llama")
        max_new = max(1, min(sampling.max_new_tokens, self.context_length - len(ids)))
        return Job(ids, sampling, max_new, rules, cancel)

    def _is_eog(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self.vocab, token))

    def stream(self, messages: list[dict[str, str]], sampling: Sampling,
               cancel: threading.Event | None = None) -> Iterator[str]:
        yield from self.stream_ids(self.prompt_ids(messages), sampling, cancel)

    def stream_ids(self, ids: list[int], sampling: Sampling,
                   cancel: threading.Event | None = None) -> Iterator[str]:
        """Sample from ``ids`` on; ends at an end-of-generation token, a stop string, the token limit or
        ``cancel``. Stopping the iteration early frees the slot at the next step."""
        job = self._job(ids, sampling, cancel)
        self.runner.submit(job)
        try:
            while not isinstance(item := job.out.get(), GenerationStats):
                if isinstance(item, BaseException):
                    raise item
                yield item
            self.last = item
        finally:
            job.stop.set()

    def generate_batch(self, conversations: list[list[dict[str, str]]], sampling: Sampling) -> list[str]:
        """One answer per conversation, all queued at once so they share the slots' steps."""
        jobs = [self._job(self.prompt_ids(m), sampling, None) for m in conversations]
        for job in jobs:
            self.runner.submit(job)
        texts = []
        try:
            for job in jobs:
                parts = []
                while not isinstance(item := job.out.get(), GenerationStats):
                    if isinstance(item, BaseException):
                        raise item
                    parts.append(item)
                texts.append("".join(parts))
        finally:
            for job in jobs:
                job.stop.set()
        return texts

    def close(self) -> None:
        self._unload()
