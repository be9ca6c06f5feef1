"""Batching and the causal-LM loss: the pieces a fast GPU path replaces (packing, fused/chunked CE)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from llamabrew.data.encode import IGNORE, Encoded


def collate(examples: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
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


def target_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens that contribute to the loss (labels shifted left by one)."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token cross-entropy over the target tokens of a micro-batch.

    Summing (not averaging) lets gradient accumulation divide by the tokens of the whole step, so every token
    weighs the same whatever micro-batch it landed in.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shift_logits = logits[:, :-1].float()
    shift_labels = batch["labels"][:, 1:]
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), ignore_index=IGNORE,
        reduction="sum",
    )


@torch.no_grad()
def mean_loss(model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]], device: torch.device) -> float:
    """Token-weighted mean loss over batches (validation / held-out loss)."""
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    for b in batches:
        b = {k: v.to(device) for k, v in b.items()}
        total += float(loss_sum(model, b))
        n += target_tokens(b)
    model.train(was_training)
    return total / max(n, 1)
