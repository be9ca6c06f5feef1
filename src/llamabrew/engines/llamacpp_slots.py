"""A request inside the batch runner, the slot (KV-cache sequence) that serves it, and its sampler chain."""

from __future__ import annotations

import codecs
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llamabrew.engines.base import GenerationStats, Sampling, StopScanner

PENALTY_LAST_N = 64  # the repetition penalty looks at the last 64 tokens, as llama-cpp-python's `Llama` does


@dataclass(frozen=True)
class TextRules:
    """How a model's tokens become text: their bytes, the end-of-generation test, the template's stop strings."""

    piece: Callable[[int], bytes]
    is_eog: Callable[[int], bool]
    stops: tuple[str, ...]
    strip_first_space: bool  # SentencePiece's word-start space on the first token, dropped as HF does


class Job:
    """One request inside the runner; its text pieces and then its `GenerationStats` (or an error) go to ``out``."""

    def __init__(self, ids: list[int], sampling: Sampling, max_new: int, rules: TextRules,
                 cancel: threading.Event | None = None) -> None:
        self.ids, self.sampling, self.max_new, self.rules, self.cancel = ids, sampling, max_new, rules, cancel
        self.stop = threading.Event()  # the reader went away
        self.out: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.scanner = StopScanner([*rules.stops, *sampling.stop])
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.n, self.reused, self.started, self.done = 0, 0, time.monotonic(), False

    def cancelled(self) -> bool:
        return self.stop.is_set() or (self.cancel is not None and self.cancel.is_set())

    def take(self, token: int) -> str | None:
        """Account for a sampled token: the finish reason when the request is over, else None."""
        if self.rules.is_eog(token):
            return "stop"
        self.n += 1
        text = self.decoder.decode(self.rules.piece(token))
        if self.n == 1 and self.rules.strip_first_space:
            text = text.removeprefix(" ")
        if out := self.scanner.feed(text):
            self.out.put(out)
        if self.scanner.stopped:
            return "stop"
        return "length" if self.n >= self.max_new else None

    def finish(self, reason: str, error: BaseException | None = None) -> None:
        if self.done:
            return
        self.done = True
        if error is not None:
            self.out.put(error)
            return
        if not self.scanner.stopped and (out := self.scanner.feed(self.decoder.decode(b"", True))
                                         + self.scanner.flush()):
            self.out.put(out)
        self.out.put(GenerationStats(len(self.ids), self.n, time.monotonic() - self.started, reason, self.reused))


@dataclass
class Slot:
    seq: int
    cached: list[int]  # the tokens whose K/V this sequence holds, at positions 0, 1, ...
    job: Job | None = None
    sampler: Any = None
    next_token: int | None = None  # sampled, not fed yet; None while the prompt is being read
    used: int = 0  # when it last took a request


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def choose_slot(free: list[Slot], ids: list[int]) -> Slot:
    """The free slot holding this prompt's conversation (it shares at least half of what that slot has cached:
    a chat template's opening alone does not count), else the one used least recently."""
    shared = [(common_prefix(s.cached, ids), s) for s in free]
    own = [(n, s) for n, s in shared if s.cached and 2 * n >= len(s.cached)]
    return max(own, key=lambda x: x[0])[1] if own else min(free, key=lambda s: s.used)


def make_sampler(sampling: Sampling, n_vocab: int) -> Any:
    """A llama.cpp sampler chain of one request (the order llama-cpp-python's `Llama` uses)."""
    from llama_cpp._internals import LlamaSampler

    chain = LlamaSampler()
    if sampling.repetition_penalty != 1.0:
        chain.add_penalties(n_vocab, PENALTY_LAST_N, sampling.repetition_penalty, 0.0, 0.0)
    if sampling.temperature <= 0:
        chain.add_greedy()
        return chain
    if sampling.top_k > 0:
        chain.add_top_k(sampling.top_k)
    if sampling.top_p < 1.0:
        chain.add_top_p(sampling.top_p, 1)
    chain.add_temp(sampling.temperature)
    chain.add_dist(sampling.seed if sampling.seed is not None else random.getrandbits(31))
    return chain
