"""The names the evaluator, planner and pretraining size probe use: the pieces now live in
`llamabrew.data.batching` (batching is the data side's job) and `llamabrew.train.objective` (the loss)."""

from __future__ import annotations

import torch

from llamabrew.data.batching import collate as collate
from llamabrew.train.objective import CausalLM
from llamabrew.train.objective import mean_loss as mean_loss
from llamabrew.train.objective import target_tokens as target_tokens


def loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token cross-entropy over the target tokens of a micro-batch (`CausalLM`'s loss)."""
    return CausalLM()(model, batch).loss
