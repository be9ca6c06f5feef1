"""Micro-batches for the training loop: which examples go together, and as what tensors.

The loop asks a `Batcher` for the ``index``-th micro-batch of the run. Each answer is a pure function of
(examples, seed, epoch, index), so a run resumed from a checkpoint's step counter sees exactly the batches the
killed run would have seen. Two batchers:

- `PaddedBatcher`: one example per row, right-padded to the longest in the micro-batch (the original behaviour).
- `PackedBatcher`: several examples per row up to a row length, each with its own positions (restarting at 0)
  and a block-diagonal causal mask, so no example sees another and no label crosses a boundary: on short
  instruction data it removes most of the padding a padded batch computes on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from llamabrew.data.encode import IGNORE, Encoded, EncodedPair
from llamabrew.recipe import OptimConfig

Batch = dict[str, torch.Tensor]
NUM_TOKENS = "num_tokens"  # a 0-d tensor a batch may carry when its attention mask cannot count real tokens


class Batcher(Protocol):
    """Turns encoded examples into the micro-batches of a run (see the module docstring)."""

    def micro_batches_per_epoch(self, examples: Sequence[Encoded], cfg: OptimConfig) -> int:
        """How many micro-batches one pass over ``examples`` takes (the same for every epoch)."""
        ...

    def batch(self, examples: Sequence[Encoded], cfg: OptimConfig, index: int) -> Batch:
        """The ``index``-th micro-batch of the run, counting across epochs (each epoch reshuffled by seed)."""
        ...

    def eval_batches(self, examples: Sequence[Encoded], cfg: OptimConfig) -> list[Batch]:
        """All of ``examples`` once, in their own order (validation: the token-weighted mean ignores order)."""
        ...


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The RNG that orders one epoch: seeded by (seed, epoch) alone, so any epoch can be rebuilt on resume."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def count_tokens(batch: Batch) -> int:
    """Real (non-padding) tokens of a micro-batch, for the throughput figures and the loss log."""
    if NUM_TOKENS in batch:
        return int(batch[NUM_TOKENS])
    return int(batch["attention_mask"].sum())


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device) for k, v in batch.items()}


# ---- one example per row ----

def collate(examples: Sequence[Encoded], pad_id: int) -> Batch:
    """Right-pad a micro-batch to its longest example; padding is masked out of attention and loss."""
    width = max(len(e) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def micro_batch_indices(n: int, cfg: OptimConfig, global_micro: int) -> list[int]:
    """Example indices of the ``global_micro``-th micro-batch of the run (epochs reshuffled by seed)."""
    per_epoch = math.ceil(n / cfg.micro_batch_size)
    epoch, k = divmod(global_micro, per_epoch)
    order = torch.randperm(n, generator=epoch_generator(cfg.seed, epoch))
    return order[k * cfg.micro_batch_size : (k + 1) * cfg.micro_batch_size].tolist()


@dataclass(frozen=True)
class PaddedBatcher:
    """``micro_batch_size`` examples per micro-batch, right-padded: the loop's behaviour before batchers existed."""

    pad_id: int

    def micro_batches_per_epoch(self, examples: Sequence[Encoded], cfg: OptimConfig) -> int:
        return math.ceil(len(examples) / cfg.micro_batch_size)

    def batch(self, examples: Sequence[Encoded], cfg: OptimConfig, index: int) -> Batch:
        return collate([examples[i] for i in micro_batch_indices(len(examples), cfg, index)], self.pad_id)

    def eval_batches(self, examples: Sequence[Encoded], cfg: OptimConfig) -> list[Batch]:
        size = cfg.micro_batch_size
        return [collate(examples[i : i + size], self.pad_id) for i in range(0, len(examples), size)]


# ---- several examples per row ----

def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Positions in ``lengths`` grouped into rows of total length ≤ ``capacity``: longest first, each into the
    first row with room (equal lengths keep their given order). The rows' loads depend only on the multiset of
    lengths, so every epoch packs into the same number of rows whatever its order. A max-tree over the rows'
    free space finds the first row with room in O(log n), so large datasets pack in well under a second."""
    too_long = [n for n in lengths if n > capacity]
    if too_long:
        raise ValueError(f"an example of {max(too_long)} tokens does not fit a packed row of {capacity}")
    size = 1 << max(0, len(lengths) - 1).bit_length()  # at least one (empty) row per example
    free = [capacity] * (2 * size)
    rows: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        node = 1
        while node < size:  # descend to the leftmost row with room (the next empty one if no open row has)
            node = 2 * node if free[2 * node] >= lengths[i] else 2 * node + 1
        row = node - size
        if row == len(rows):
            rows.append([])
        rows[row].append(i)
        free[node] -= lengths[i]
        while node > 1:
            node //= 2
            free[node] = max(free[2 * node], free[2 * node + 1])
    return rows


def collate_packed(rows: Sequence[Sequence[Encoded]], pad_id: int, block_mask: bool = True,
                   width: int | None = None) -> Batch:
    """Rows of examples laid end to end, right-padded to the longest row (or to ``width``).

    Each example gets positions 0..n-1 and attends causally within itself only (a 4D boolean mask, True =
    attend, shaped (rows, 1, width, width) as transformers takes a prepared mask); the padding tail is a block
    of its own, so no query row is fully masked (that gives NaN in sdpa). Each example's first label is
    IGNORE so the last token of one example is never trained to predict the first token of the next; this drops
    nothing, since the shifted loss never uses a first label anyway.

    Without ``block_mask`` the batch carries no mask at all: varlen attention (flash, flex) finds each example
    where its position ids restart, and the ``rows × width²`` mask is never built.
    """
    width = max(width or 0, max(sum(len(e) for e in row) for row in rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)  # -1: padding
    for r, row in enumerate(rows):
        start = 0
        for s, e in enumerate(row):
            end = start + len(e)
            ids[r, start:end] = torch.tensor(e.input_ids)
            labels[r, start + 1 : end] = torch.tensor(e.labels[1:])
            positions[r, start:end] = torch.arange(len(e))
            segment[r, start:end] = s
            start = end
        positions[r, start:] = torch.arange(width - start)
    n_tokens = sum(len(e) for row in rows for e in row)
    batch = {"input_ids": ids, "labels": labels, "position_ids": positions, NUM_TOKENS: torch.tensor(n_tokens)}
    if block_mask:
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        batch["attention_mask"] = ((segment[:, :, None] == segment[:, None, :]) & causal)[:, None]
    return batch


@dataclass
class PackedBatcher:
    """``micro_batch_size`` packed rows of up to ``row_len`` tokens per micro-batch.

    Each epoch takes the examples in its seeded order, packs them first-fit-decreasing (so the row count is the
    same every epoch) and shuffles the rows with the same seeded generator. ``block_mask=False`` leaves the mask
    out (varlen attention reads position ids); ``fixed_width`` pads every row to ``row_len`` (one shape for
    compiled layers).
    """

    pad_id: int
    row_len: int
    block_mask: bool = True
    fixed_width: bool = False
    _cache: dict[tuple[int, int, int], tuple[Sequence[Encoded], list[list[int]]]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def rows(self, examples: Sequence[Encoded], seed: int, epoch: int) -> list[list[int]]:
        """Example indices of each row of one epoch, in the order the epoch visits them (cached)."""
        key = (id(examples), seed, epoch)
        hit = self._cache.get(key)
        if hit is not None and hit[0] is examples:
            return hit[1]
        gen = epoch_generator(seed, epoch)
        order = torch.randperm(len(examples), generator=gen).tolist()
        packed = [[order[p] for p in row]
                  for row in first_fit_decreasing([len(examples[i]) for i in order], self.row_len)]
        rows = [packed[j] for j in torch.randperm(len(packed), generator=gen).tolist()]
        if len(self._cache) >= 4:  # this epoch, the next, and validation are all the loop asks for
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = (examples, rows)
        return rows

    def micro_batches_per_epoch(self, examples: Sequence[Encoded], cfg: OptimConfig) -> int:
        return math.ceil(len(self.rows(examples, cfg.seed, 0)) / cfg.micro_batch_size)

    def batch(self, examples: Sequence[Encoded], cfg: OptimConfig, index: int) -> Batch:
        epoch, k = divmod(index, self.micro_batches_per_epoch(examples, cfg))
        size = cfg.micro_batch_size
        rows = self.rows(examples, cfg.seed, epoch)[k * size : (k + 1) * size]
        return self._collate([[examples[i] for i in row] for row in rows])

    def _collate(self, rows: Sequence[Sequence[Encoded]]) -> Batch:
        return collate_packed(rows, self.pad_id, self.block_mask, self.row_len if self.fixed_width else None)

    def eval_batches(self, examples: Sequence[Encoded], cfg: OptimConfig) -> list[Batch]:
        rows = first_fit_decreasing([len(e) for e in examples], self.row_len)
        size = cfg.micro_batch_size
        return [self._collate([[examples[i] for i in row] for row in rows[k : k + size]])
                for k in range(0, len(rows), size)]


# ---- preference pairs ----

@dataclass(frozen=True)
class PairBatcher:
    """``micro_batch_size`` pairs per micro-batch, as one padded batch: the chosen sequences in the first half
    of the rows, the rejected ones (same order) in the second, and each pair's ``margin``."""

    pad_id: int

    def _collate(self, pairs: Sequence[EncodedPair]) -> Batch:
        batch = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], self.pad_id)
        batch["margin"] = torch.tensor([p.margin for p in pairs], dtype=torch.float32)
        return batch

    def micro_batches_per_epoch(self, examples: Sequence[EncodedPair], cfg: OptimConfig) -> int:
        return math.ceil(len(examples) / cfg.micro_batch_size)

    def batch(self, examples: Sequence[EncodedPair], cfg: OptimConfig, index: int) -> Batch:
        return self._collate([examples[i] for i in micro_batch_indices(len(examples), cfg, index)])

    def eval_batches(self, examples: Sequence[EncodedPair], cfg: OptimConfig) -> list[Batch]:
        size = cfg.micro_batch_size
        return [self._collate(examples[i : i + size]) for i in range(0, len(examples), size)]
