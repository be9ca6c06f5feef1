"""What a training step minimises, as a small swappable object (torchtune style).

The loop only needs, per micro-batch, a loss *summed* over its targets and how many targets there were: summing
lets gradient accumulation divide by the targets of the whole step, so every token weighs the same whatever
micro-batch it landed in. Chunked or fused cross-entropy, or preference losses (DPO), are other objectives with
the same call; none of them needs the loop edited.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F

from llamabrew.data.encode import IGNORE


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor  # summed over the micro-batch's targets (a scalar with a graph)
    targets: int  # what the sum runs over (target tokens for a language-model loss)
    metrics: dict[str, float] = field(default_factory=dict)  # extra figures for the loss log (e.g. DPO margins)


class Objective(Protocol):
    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> ObjectiveOutput: ...


def target_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens that contribute to the loss (labels shifted left by one)."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def model_inputs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
    """The batch's inputs in the form the model's attention implementation honours.

    A packed batch carries a 4D boolean mask (True = attend) and per-example ``position_ids``. transformers
    passes a 4D mask through unchanged: sdpa takes a boolean one as is, eager *adds* the mask to the scores, so
    it gets the additive float form; other implementations (flash, flex) get no mask and find the example
    boundaries in ``position_ids`` themselves (a position that does not follow the previous one starts a new one);
    transformers looks for them only without a KV cache, so the loss runs with ``use_cache=False``. A batch may
    also carry no mask at all and let ``position_ids`` alone say where examples start.
    """
    mask = batch.get("attention_mask")
    if mask is not None and mask.dim() == 4:
        impl = getattr(getattr(model, "config", None), "_attn_implementation", "sdpa")
        if impl == "eager":
            mask = torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
        elif impl != "sdpa":
            mask = None
    inputs = {"input_ids": batch["input_ids"], "attention_mask": mask}
    if "position_ids" in batch:
        inputs["position_ids"] = batch["position_ids"]
    return inputs


def decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """The transformer body (hidden states out) and the output projection of a Hugging Face causal LM, PEFT
    wrapped or not; None where the logits are more than ``head(hidden)`` (soft-capped logits, as Gemma 2's)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if getattr(config, "final_logit_softcapping", None):
        return None
    decoder = getattr(base, getattr(base, "base_model_prefix", "model"), None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    return (decoder, head) if isinstance(decoder, torch.nn.Module) and isinstance(head, torch.nn.Module) else None


def _summed_ce(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), labels, reduction="sum")


class CausalLM:
    """Summed next-token cross-entropy over the tokens whose label is not IGNORE (supervised fine-tuning and
    pretraining alike: the labels decide what is trained on).

    With ``chunk_tokens``, the logits are made ``chunk_tokens`` target positions at a time from the hidden states,
    and each chunk is recomputed in the backward pass instead of kept: the fp32 ``[tokens, vocab]`` logits never
    exist whole (a 128K vocabulary makes them the largest tensor of a step), and prompt positions get no logits
    at all. Same loss and gradients as the plain path (tests/train/test_objective.py)."""

    def __init__(self, chunk_tokens: int = 0, fused: bool = False) -> None:
        self.chunk_tokens = chunk_tokens
        self.fused = fused  # liger-kernel's fused linear cross-entropy (CUDA) instead of the chunks

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        parts = decoder_and_head(model) if self.chunk_tokens or self.fused else None
        if parts is not None:
            return self._chunked(model, batch, *parts)
        logits = model(**model_inputs(model, batch), use_cache=False).logits
        shift_logits = logits[:, :-1].float()
        shift_labels = batch["labels"][:, 1:]
        loss = F.cross_entropy(
            shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), ignore_index=IGNORE,
            reduction="sum",
        )
        return ObjectiveOutput(loss, target_tokens(batch))

    def _chunked(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], decoder: torch.nn.Module,
                 head: torch.nn.Module) -> ObjectiveOutput:
        from torch.utils.checkpoint import checkpoint

        hidden = decoder(**model_inputs(model, batch), use_cache=False).last_hidden_state[:, :-1]
        labels = batch["labels"][:, 1:].reshape(-1)
        keep = labels != IGNORE
        hidden, labels = hidden.reshape(-1, hidden.size(-1))[keep], labels[keep]
        if self.fused:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            fused = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE, reduction="sum")
            return ObjectiveOutput(fused(head.weight, hidden, labels, getattr(head, "bias", None)), int(labels.numel()))
        loss = hidden.new_zeros((), dtype=torch.float32)
        for i in range(0, labels.numel(), self.chunk_tokens):
            chunk = slice(i, i + self.chunk_tokens)
            loss = loss + checkpoint(_summed_ce, head, hidden[chunk], labels[chunk], use_reentrant=False)
        return ObjectiveOutput(loss, int(labels.numel()))


@torch.no_grad()
def objective_sums(compute: Callable[[dict[str, torch.Tensor]], ObjectiveOutput],
                   batches: Sequence[dict[str, torch.Tensor]], device: torch.device,
                   weights: Sequence[int] | None = None) -> tuple[float, int, dict[str, float]]:
    """Summed loss, targets and target-weighted metrics of ``compute`` over batches (a batch of weight 0 is
    computed and not counted: ranks with fewer batches still run as many)."""
    total, n = 0.0, 0
    sums: dict[str, float] = {}
    for b, w in zip(batches, weights or [1] * len(batches), strict=True):
        out = compute({k: v.to(device) for k, v in b.items()})
        total += w * float(out.loss)
        n += w * out.targets
        for k, v in out.metrics.items():
            sums[k] = sums.get(k, 0.0) + w * v * out.targets
    return total, n, sums


def evaluate_objective(model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]], device: torch.device,
                       objective: Objective | None = None) -> tuple[float, dict[str, float]]:
    """Target-weighted mean loss over batches, and the objective's metrics weighted the same way (held-out
    reward accuracy and margins for preference objectives)."""
    objective = objective or CausalLM()
    was_training = model.training
    model.eval()
    total, n, sums = objective_sums(lambda b: objective(model, b), batches, device)
    model.train(was_training)
    return total / max(n, 1), {k: v / max(n, 1) for k, v in sums.items()}


def mean_loss(model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]], device: torch.device,
              objective: Objective | None = None) -> float:
    """Target-weighted mean loss over batches (validation / held-out loss)."""
    return evaluate_objective(model, batches, device, objective)[0]
