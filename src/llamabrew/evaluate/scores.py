"""Held-out loss and generated-answer scores (exact match, contains-match) on instruction → output data."""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from llamabrew.data.encode import encode_examples
from llamabrew.data.formats import Example
from llamabrew.serve.engines import TorchEngine
from llamabrew.train.loss import collate, mean_loss

_TRAILING = re.compile(rf"[\s{re.escape(string.punctuation)}]+$")


def normalize(text: str) -> str:
    """Trim, lower-case, collapse spaces and drop trailing punctuation, so 'Teal.' matches 'teal'."""
    return _TRAILING.sub("", " ".join(text.strip().lower().split()))


def exact_match(prediction: str, expected: str) -> bool:
    return normalize(prediction) == normalize(expected)


def contains_match(prediction: str, expected: str) -> bool:
    target = normalize(expected)
    return bool(target) and target in normalize(prediction)


@dataclass
class EvalReport:
    n: int
    exact_match: float
    contains: float
    loss: float
    perplexity: float
    samples: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self, with_samples: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not with_samples:
            d.pop("samples")
        return d


def held_out_loss(engine: TorchEngine, examples: list[Example], cutoff_len: int = 1024, batch_size: int = 8) -> float:
    """Mean response-token loss (the training objective) on held-out examples."""
    encoded, _ = encode_examples(examples, engine.tokenizer, engine.template, cutoff_len)
    pad = engine.tokenizer.pad_token_id
    batches = [collate(encoded[i : i + batch_size], pad) for i in range(0, len(encoded), batch_size)]
    return mean_loss(engine.model, batches, engine.device)


def score(
    engine: TorchEngine,
    examples: list[Example],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    advance: Callable[[int], None] | None = None,
) -> EvalReport:
    """Generate greedy answers for the last user turn of each example and score them against its output."""
    samples = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        prompts = [[m.as_dict() for m in ex.messages[:-1]] for ex in chunk]
        for ex, answer in zip(chunk, engine.greedy_batch(prompts, max_new_tokens), strict=True):
            samples.append({"instruction": ex.instruction, "expected": ex.output, "answer": answer,
                            "exact": exact_match(answer, ex.output), "contains": contains_match(answer, ex.output)})
        if advance:
            advance(len(chunk))
    n = len(samples)
    loss = held_out_loss(engine, examples)
    return EvalReport(
        n=n,
        exact_match=sum(s["exact"] for s in samples) / max(n, 1),
        contains=sum(s["contains"] for s in samples) / max(n, 1),
        loss=loss,
        perplexity=math.exp(min(loss, 50.0)),
        samples=samples,
    )
