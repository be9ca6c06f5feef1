"""Scorers of generated answers (exact match, contains-match) and the held-out loss of a torch model.

A scorer is a plain function ``(answer, expected) -> bool``; `SCORERS` names those `EvalReport` reports. The
judge (pairwise and single grades) plugs in beside them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from llamabrew.data.encode import encode_examples
from llamabrew.data.formats import Example
from llamabrew.data.match import contains_match as contains_match  # re-exported: the scorers' home
from llamabrew.data.match import exact_match as exact_match
from llamabrew.data.match import normalize as normalize
from llamabrew.engines.torch_engine import TorchEngine
from llamabrew.train.loss import collate, mean_loss

SCORERS: dict[str, Callable[[str, str], bool]] = {"exact": exact_match, "contains": contains_match}


@dataclass
class EvalReport:
    """Scores of one model on one eval set; ``loss`` only where the engine gives logits (torch)."""

    n: int
    exact_match: float
    contains: float
    loss: float | None = None
    perplexity: float | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    engine: str = ""

    def as_dict(self, with_samples: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not with_samples:
            d.pop("samples")
        return d

    def with_loss(self, loss: float) -> EvalReport:
        self.loss, self.perplexity = loss, math.exp(min(loss, 50.0))
        return self


def prompts_of(examples: Sequence[Example]) -> list[list[dict[str, str]]]:
    """The conversation each example asks: every message but the expected last answer."""
    return [[m.as_dict() for m in ex.messages[:-1]] for ex in examples]


def score_answers(examples: Sequence[Example], answers: Sequence[str], engine: str = "") -> EvalReport:
    samples = []
    for ex, answer in zip(examples, answers, strict=True):
        sample: dict[str, Any] = {"instruction": ex.instruction, "expected": ex.output, "answer": answer}
        sample |= {name: fn(answer, ex.output) for name, fn in SCORERS.items()}
        samples.append(sample)
    n = len(samples)
    return EvalReport(n=n, exact_match=sum(s["exact"] for s in samples) / max(n, 1),
                      contains=sum(s["contains"] for s in samples) / max(n, 1), samples=samples, engine=engine)


def held_out_loss(engine: TorchEngine, examples: Sequence[Example], cutoff_len: int = 1024,
                  batch_size: int = 8) -> float:
    """Mean response-token loss (the training objective) on held-out examples."""
    encoded, _ = encode_examples(list(examples), engine.tokenizer, engine.template, cutoff_len)
    pad = engine.tokenizer.pad_token_id
    batches = [collate(encoded[i : i + batch_size], pad) for i in range(0, len(encoded), batch_size)]
    return mean_loss(engine.model, batches, engine.device)
