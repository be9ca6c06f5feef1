"""`llamabrew.train.run(recipe)`: one entry for every fine-tuning objective, each with its own data and model
set-up over the shared loop: sft (`sft`), dpo and reward (`align`), grpo (`grpo`)."""

from __future__ import annotations

from llamabrew.recipe import Recipe
from llamabrew.train.distributed import processes
from llamabrew.train.sft import TrainResult


def run(recipe: Recipe) -> TrainResult:
    """Under torchrun / accelerate launch, each rank runs this; they join one process group for the run."""
    with processes():
        if recipe.objective in ("dpo", "reward"):
            from llamabrew.train.align import run_preference

            return run_preference(recipe)
        if recipe.objective == "grpo":
            from llamabrew.train.grpo import run_grpo

            return run_grpo(recipe)
        from llamabrew.train.sft import run as run_sft

        return run_sft(recipe)
