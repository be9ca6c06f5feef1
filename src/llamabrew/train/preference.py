"""Preference objectives for the shared loop: DPO (sigmoid, IPO, hinge), SimPO (no reference) and a reward
model's Bradley–Terry loss. Each is an `Objective`: a micro-batch of pairs in (`data.batching.PairBatcher`: chosen
rows, then rejected rows, then ``margin``), a loss summed over the pairs out, so `train.loop.fit` trains them with
the same steps, checkpoints, exact resume and loss log as supervised tuning.

DPO's reference is the starting point held without a second copy of the base: a frozen copy of the SFT adapter
(PEFT adapter ``"ref"``), or the base itself (the adapter disabled) when tuning starts from the base. Its log-probs
are computed in eval mode, so dropout never makes the reference move.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llamabrew.data.encode import IGNORE
from llamabrew.train.objective import ObjectiveOutput, model_inputs

REFERENCE_ADAPTER = "ref"
DPO_LOSSES = ("sigmoid", "ipo", "hinge", "simpo")


def completion_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of the target (completion) tokens, and how many there are."""
    logits = model(**model_inputs(model, batch), use_cache=False).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
    return -nll.sum(-1), (labels != IGNORE).sum(-1)


@contextlib.contextmanager
def as_reference(model: torch.nn.Module) -> Iterator[None]:
    """The model as it was before preference tuning: the frozen ``ref`` adapter if loaded, else the base (all
    adapters off); eval mode; no gradients. The trained adapter is active again afterwards."""
    was_training = model.training
    model.eval()
    peft_config = getattr(model, "peft_config", {})
    try:
        with torch.no_grad():
            if REFERENCE_ADAPTER in peft_config:
                active = model.active_adapter
                model.set_adapter(REFERENCE_ADAPTER)
                try:
                    yield
                finally:
                    model.set_adapter(active)
            elif peft_config:
                with model.disable_adapter():
                    yield
            else:
                raise ValueError("DPO's reference needs a PEFT model (LoRA): full-weight DPO is not supported")
    finally:
        model.train(was_training)


@dataclass
class DPO:
    """Direct preference optimisation (Rafailov et al. 2023) and its IPO / hinge variants; ``simpo`` is SimPO
    (Meng et al. 2024): length-normalised log-probs, a target margin ``gamma``, no reference model.
    ``nll_weight`` adds the chosen answer's mean token NLL (RPO, Pang et al. 2024; Llama 3's DPO): on small models
    DPO alone tends to push both answers down until the policy degenerates, and the NLL term holds the chosen one.

    Losses match TRL's DPOTrainer (tests/train/test_align.py compares them on the same pairs)."""

    beta: float = 0.1
    loss: str = "sigmoid"
    simpo_gamma: float = 0.5  # SimPO's target reward margin (in units of beta-scaled mean log-prob)
    nll_weight: float = 0.0  # + weight × the chosen answer's mean token NLL (RPO; Llama 3 used 0.2)

    def __post_init__(self) -> None:
        if self.loss not in DPO_LOSSES:
            raise ValueError(f"unknown DPO loss {self.loss!r} (known: {', '.join(DPO_LOSSES)})")

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        logps, counts = completion_logps(model, batch)
        chosen, rejected = logps.chunk(2)
        n_chosen, n_rejected = counts.chunk(2)
        if self.loss == "simpo":
            chosen_score, rejected_score = chosen / n_chosen.clamp(min=1), rejected / n_rejected.clamp(min=1)
            per_pair = -F.logsigmoid(self.beta * (chosen_score - rejected_score) - self.simpo_gamma)
            rewards_c, rewards_r = self.beta * chosen_score.detach(), self.beta * rejected_score.detach()
        else:
            with as_reference(model):
                ref_chosen, ref_rejected = completion_logps(model, batch)[0].chunk(2)
            chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
            delta = chosen_ratio - rejected_ratio
            if self.loss == "sigmoid":
                per_pair = -F.logsigmoid(self.beta * delta)
            elif self.loss == "hinge":
                per_pair = torch.relu(1 - self.beta * delta)
            else:  # ipo, on per-token averages (as TRL and the IPO authors normalise it)
                avg = chosen_ratio / n_chosen.clamp(min=1) - rejected_ratio / n_rejected.clamp(min=1)
                per_pair = (avg - 1 / (2 * self.beta)) ** 2
            rewards_c, rewards_r = self.beta * chosen_ratio.detach(), self.beta * rejected_ratio.detach()
        nll = -chosen / n_chosen.clamp(min=1)
        if self.nll_weight:
            per_pair = per_pair + self.nll_weight * nll
        return ObjectiveOutput(per_pair.sum(), int(per_pair.numel()), pair_metrics(rewards_c, rewards_r, {
            "logps_chosen": float(chosen.detach().mean()), "logps_rejected": float(rejected.detach().mean()),
            "nll_chosen": float(nll.detach().mean())}))


def pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor, extra: dict[str, float] | None = None,
                 ) -> dict[str, float]:
    """What the loss log shows for pairs: mean rewards of each side, their margin, and how often chosen wins."""
    return {"rewards_chosen": float(chosen.mean()), "rewards_rejected": float(rejected.mean()),
            "margin": float((chosen - rejected).mean()), "accuracy": float((chosen > rejected).float().mean()),
            **(extra or {})}


class RewardBT:
    """A reward model's loss: a scalar score per sequence (a sequence-classification head with one label) and
    the Bradley–Terry loss ``-log σ(r_chosen − r_rejected − margin)`` (the margin is 0 unless the data gives one,
    as in Llama 2's reward models)."""

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        scores = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0].float()
        chosen, rejected = scores.chunk(2)
        per_pair = -F.logsigmoid(chosen - rejected - batch["margin"].to(scores.device))
        return ObjectiveOutput(per_pair.sum(), int(per_pair.numel()),
                               pair_metrics(chosen.detach(), rejected.detach()))
