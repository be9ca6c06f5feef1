"""The plan's time estimate: sampled micro-batches, the optimizer update and validation passes, measured without
touching the model (checked against a real run on SmolLM2-135M in the real quickstart: 5m57s planned, 5m31s)."""

from __future__ import annotations

from pathlib import Path

import torch

from llamabrew.data.batching import PaddedBatcher
from llamabrew.data.encode import Encoded
from llamabrew.recipe import OptimConfig
from llamabrew.train.plan import estimate_time, optimizer_seconds


def test_estimate_counts_steps_and_validation_and_leaves_the_model_alone(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train = [Encoded(list(range(1, 5 + i % 20)), list(range(1, 5 + i % 20))) for i in range(40)]
    val = train[:8]
    cfg = OptimConfig(learning_rate=1e-3, grad_accum=2, micro_batch_size=4, epochs=2, eval_every=3)
    rng = torch.get_rng_state()
    est = estimate_time(model, train, val, cfg, PaddedBatcher(0), torch.device("cpu"))
    assert torch.equal(rng, torch.get_rng_state())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert est.steps == 10 and est.evals == 4  # steps 3, 6, 9 and the last
    assert est.step_s > 0 and est.eval_s > 0
    assert est.total_s == est.step_s * est.steps + est.eval_s * est.evals
    no_val = estimate_time(model, train, [], cfg, PaddedBatcher(0), torch.device("cpu"))
    assert no_val.evals == 0 and no_val.eval_s == 0


def test_optimizer_time_grows_with_the_trainable_values() -> None:
    small, large = optimizer_seconds(10_000, torch.device("cpu")), optimizer_seconds(40_000_000, torch.device("cpu"))
    assert large > 20 * small
