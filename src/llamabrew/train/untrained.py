"""Tokens a base never read in pretraining, recorded beside it so that fine-tuning can give them a meaning.

A base pretrained here learns a tokenizer and its embeddings from the user's corpus alone. Its tuning data then
brings words that corpus lacks (the Alpaca template's "Below is an instruction...", question words such as
"Where does ... trade?"): they break into merge pieces and letters the model never read, whose embedding rows are
still as initialised. LoRA adapts the linear layers only, so those rows stay noise, and questions that differ only
in such words look alike to the model. Measured on the market world (benchmarks/RESULTS.md): "Where does NAME
trade?" was answered in the form of another question for 98% of held-out people and 100% of the tuning data's own;
with those rows trained (PEFT's ``trainable_token_indices``) 54%, like the other questions, and held-out answers
went from 57% to 63% right.

`llamabrew pretrain` writes ``untrained_tokens.json``; `train` trains the rows of the recorded tokens that its data
uses (``lora.train_untrained_tokens``). A hub model has no such file: every row of it was trained.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from llamabrew.data.encode import Encoded
from llamabrew.io import atomic_write_text

FILE = "untrained_tokens.json"
log = logging.getLogger(__name__)


def record(out: Path, vocab_size: int, windows: Iterable[Sequence[int]]) -> list[int]:
    """Write the ids in ``range(vocab_size)`` that no pretraining window contains; returns them."""
    seen: set[int] = set()
    for ids in windows:
        seen.update(ids)
    unseen = [i for i in range(vocab_size) if i not in seen]
    atomic_write_text(Path(out) / FILE, json.dumps({
        "ids": unseen,
        "why": "token ids that no pretraining window contained: their embeddings are as initialised; "
               "llamabrew train (LoRA) trains those its data uses",
    }) + "\n")
    return unseen


def recorded(base: str | Path | None) -> list[int]:
    """The ids a base directory records as never read ([] when it records none: a hub model, another tool's)."""
    path = Path(base) / FILE if base else None
    if path is None or not path.is_file():
        return []
    try:
        ids = json.loads(path.read_text())["ids"]
    except (OSError, ValueError, KeyError, TypeError) as e:  # costs only the rows it would have trained
        log.warning(f"{path}: unreadable ({e!r}); no untrained token rows are trained")
        return []
    return [i for i in ids if isinstance(i, int)]


def used(base: str | Path | None, examples: Iterable[Encoded]) -> list[int]:
    """The recorded untrained ids that ``examples`` contain (prompt or answer): the rows worth training."""
    unseen = set(recorded(base))
    if not unseen:
        return []
    found: set[int] = set()
    for e in examples:
        found.update(i for i in e.input_ids if i in unseen)
    return sorted(found)
