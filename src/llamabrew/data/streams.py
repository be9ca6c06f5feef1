"""Pretraining batches: documents laid end to end as one token stream, cut into windows, re-laid every epoch.

Packing a corpus once into fixed windows (the same neighbours in every epoch) lets a small model learn each
window by heart, each document from the one before it, instead of the facts in it: measured on a corpus of
short biographies, training loss fell to 0.03 while recall of the facts stayed at 63-69%. So each epoch lays the
stream out anew, GPT-style, in one of two orders:

- ``shuffle``: documents in a fresh seeded order each epoch (separate documents: paragraphs, JSONL records);
- ``rotate``: the corpus's own order, started at a seeded document each epoch (the lines of one text, where
  neighbouring lines belong together: the window boundaries move, the neighbours stay).

Windows are ``seq_len`` tokens; a document may run across two windows, as in GPT pretraining. Every epoch has
the same number of windows, and batch ``index`` is a pure function of (seed, epoch, index) for exact resume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from llamabrew.data.batching import Batch, collate, epoch_generator
from llamabrew.data.encode import Encoded
from llamabrew.recipe import OptimConfig

Order = Literal["shuffle", "rotate"]


def windows_of(stream: list[int], seq_len: int) -> list[Encoded]:
    """Consecutive ``seq_len``-token windows of a stream; a short tail is dropped unless it is all there is."""
    n = max(1, len(stream) // seq_len)
    cut = [stream[i * seq_len : (i + 1) * seq_len] for i in range(n)]
    return [Encoded(w, list(w)) for w in cut if len(w) > 1]


@dataclass
class StreamBatcher:
    """A `llamabrew.data.batching.Batcher` over documents (each already ``BOS text EOS``)."""

    pad_id: int
    seq_len: int
    order: Order = "shuffle"
    _cache: dict[int, list[Encoded]] = field(default_factory=dict, repr=False, compare=False)

    def windows(self, docs: Sequence[Encoded], cfg: OptimConfig, epoch: int) -> list[Encoded]:
        """The windows of one epoch (kept for the epoch in progress only)."""
        if epoch not in self._cache:
            gen = epoch_generator(cfg.seed, epoch)
            if self.order == "shuffle":
                idx = torch.randperm(len(docs), generator=gen).tolist()
            else:
                start = int(torch.randint(len(docs), (1,), generator=gen))
                idx = [*range(start, len(docs)), *range(start)]
            stream = [t for i in idx for t in docs[i].input_ids]
            self._cache = {epoch: windows_of(stream, self.seq_len)}
        return self._cache[epoch]

    def micro_batches_per_epoch(self, docs: Sequence[Encoded], cfg: OptimConfig) -> int:
        n_windows = max(1, sum(len(d) for d in docs) // self.seq_len)
        return math.ceil(n_windows / cfg.micro_batch_size)

    def batch(self, docs: Sequence[Encoded], cfg: OptimConfig, index: int) -> Batch:
        epoch, k = divmod(index, self.micro_batches_per_epoch(docs, cfg))
        size = cfg.micro_batch_size
        return collate(self.windows(docs, cfg, epoch)[k * size : (k + 1) * size], self.pad_id)

    def eval_batches(self, docs: Sequence[Encoded], cfg: OptimConfig) -> list[Batch]:
        """Validation documents in their own order, as windows (the same every time)."""
        if not docs:
            return []
        wins = windows_of([t for d in docs for t in d.input_ids], self.seq_len)
        size = cfg.micro_batch_size
        return [collate(wins[i : i + size], self.pad_id) for i in range(0, len(wins), size)]
