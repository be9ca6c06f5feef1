"""What every engine is: the `Engine` protocol, sampling settings, stop-string handling, generation stats.

Every engine renders chat messages with the template the model was trained with (or leaves that to the server
it talks to), streams text pieces, stops at EOS or at the template's stop strings, and records how the last
generation went (`last`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

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
    cached_tokens: int = 0  # prompt tokens whose KV cache an earlier request left (prompt caching)

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
    """Feeds streamed text through, holding back any tail that could still become a stop string. Spaces before
    the first word are dropped: templates that put the answer after "Response:" or "ASSISTANT:" train a space
    in front of it (the first word then tokenizes as in running text), which is not part of the answer."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.buffer = ""
        self.stopped = False
        self.started = False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        if not self.started:
            piece = piece.lstrip(" ")
            self.started = bool(piece)
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


def generate_text(engine: Engine, messages: list[dict[str, str]], sampling: Sampling) -> str:
    return "".join(engine.stream(messages, sampling))


def answer_all(engine: Engine, conversations: list[list[dict[str, str]]], sampling: Sampling) -> list[str]:
    """One answer per conversation: all at once where the engine batches (an optional ``generate_batch``:
    llama.cpp's slots, torch's padded greedy batch, concurrent requests to a server), else one by one."""
    batched = getattr(engine, "generate_batch", None)
    if batched is not None:
        return list(batched(conversations, sampling))
    return [generate_text(engine, c, sampling) for c in conversations]
