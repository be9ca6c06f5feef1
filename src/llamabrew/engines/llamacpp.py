"""The llama.cpp engine: a GGUF file on the CPU, with the chat template and stop strings stored in it.

Before loading it says how much memory the model will take (weights + KV cache + compute buffers) and warns
when that is more than the machine has free: on a Raspberry Pi-class board that means swapping, not answering.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from llamabrew.data.templates import Template
from llamabrew.engines.base import ContextLengthError, GenerationStats, Sampling, StopScanner
from llamabrew.extras import require
from llamabrew.gguf.reader import DEFAULT_CTX, estimate_memory, read_gguf_info
from llamabrew.gguf.runtime import GGUF_USE, default_threads, load_llama, stock_tokenize

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


class LlamaCppEngine:
    """Streams answers from a GGUF model through llama-cpp-python; an `llamabrew.engines.Engine`."""

    name = "llama.cpp"

    def __init__(self, path: str | Path, threads: int | None = None, ctx: int | None = None,
                 template: Template | None = None, lora: str | Path | None = None, logits_all: bool = False,
                 announce: bool = True) -> None:
        llama_cpp = require("llamacpp", GGUF_USE)
        self.path = Path(path)
        self.info = read_gguf_info(self.path)
        self.context_length = min(ctx or DEFAULT_CTX, self.info.context_length or DEFAULT_CTX)
        self.threads = threads or default_threads()
        self.memory = estimate_memory(self.info, self.context_length)
        if announce:
            log.info("%s: %s", self.path.name, self.memory.describe())
            if warning := self.memory.warning():
                log.warning(warning)
        self.template = template or self.info.template()
        self.llm = load_llama(self.path, self.context_length, self.threads, logits_all, lora, self.info.n_embd)
        self._lib, self.vocab, self.bos = llama_cpp, self.llm._model.vocab, self.llm.token_bos()
        self._renderer = _JinjaRenderer(self.info.bos_text, self.info.eos_text)
        self._pieces: dict[int, bytes] = {}
        self.last = GenerationStats()
        self.lock = threading.Lock()

    def encode(self, text: str) -> list[int]:
        """Rendered template text as stock llama.cpp reads it (`stock_tokenize`), so a prompt here is the prompt
        Ollama or llama-server would run."""
        return stock_tokenize(self.llm, text)

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
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def stream(self, messages: list[dict[str, str]], sampling: Sampling,
               cancel: threading.Event | None = None) -> Iterator[str]:
        yield from self.stream_ids(self.prompt_ids(messages), sampling, cancel)

    def stream_ids(self, ids: list[int], sampling: Sampling,
                   cancel: threading.Event | None = None) -> Iterator[str]:
        """Sample from ``ids`` on; ends at an end-of-generation token, a stop string or the token limit."""
        if len(ids) >= self.context_length:
            raise ContextLengthError(
                f"prompt is {len(ids)} tokens; the context is {self.context_length} (--ctx)")
        max_new = max(1, min(sampling.max_new_tokens, self.context_length - len(ids)))
        scanner = StopScanner([*self.template.stop, *sampling.stop])
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        greedy = sampling.temperature <= 0
        with self.lock:
            self.llm.set_seed(sampling.seed if sampling.seed is not None else random.getrandbits(31))
            t0, n, finish = time.monotonic(), 0, "length"
            tokens = self.llm.generate(ids, top_k=0 if greedy else sampling.top_k, min_p=0.0,
                                       top_p=1.0 if greedy else sampling.top_p,
                                       temp=0.0 if greedy else sampling.temperature,
                                       repeat_penalty=sampling.repetition_penalty)
            try:
                for tok in tokens:
                    eog = self._lib.llama_vocab_is_eog(self.vocab, tok)
                    if eog or (cancel is not None and cancel.is_set()):
                        finish = "stop"
                        break
                    n += 1
                    text = decoder.decode(self.piece(tok))
                    if n == 1 and self.info.tokenizer_model == "llama":
                        text = text.removeprefix(" ")  # SentencePiece's word-start space, dropped as HF does
                    if out := scanner.feed(text):
                        yield out
                    if scanner.stopped or n >= max_new:
                        finish = "stop" if scanner.stopped else "length"
                        break
                if not scanner.stopped and (out := scanner.feed(decoder.decode(b"", True)) + scanner.flush()):
                    yield out
            finally:
                tokens.close()
                self.last = GenerationStats(len(ids), n, time.monotonic() - t0, finish)

    def close(self) -> None:
        self.llm.close()
