"""`llamabrew run --dry-run`: what each stage would do (run, skip, continue) and what it may take. Every figure is
an estimate and says where it comes from: a time limit the recipe sets, the planner's measurement on this machine
(a fine-tuning stage whose base and data already exist), or a teacher's budget; otherwise it says it cannot know."""

from __future__ import annotations

from dataclasses import dataclass

from llamabrew.pipeline.config import Pipeline, Stage
from llamabrew.pipeline.kinds import KINDS
from llamabrew.pipeline.runner import selection
from llamabrew.pipeline.state import PipelineState


@dataclass
class StagePlan:
    stage: Stage
    action: str  # "run", "skip (unchanged)", "continue from step N", "not selected"
    seconds: float | None  # an estimate, or None: cannot be known before it runs
    usd: float | None  # compute at the machine's price + teacher/judge budgets
    basis: str  # where the figures come from


def _compute(stage: Stage, measure: bool) -> tuple[float | None, str]:
    optim = stage.section.optim
    limits = []
    if optim.max_minutes:
        limits.append((optim.max_minutes * 60, f"its time limit ({optim.max_minutes:g} min)"))
    if optim.budget_usd and (price := _price(stage)):
        limits.append((optim.budget_usd / price * 3600, f"its budget (${optim.budget_usd:g})"))
    if measure and stage.kind == "train" and stage.section.objective == "sft":
        measured = _measured(stage)
        if measured is not None:
            limits.append((measured, "the planner, timed on this machine"))
    if not limits:
        return None, "no time limit: known once its data is tokenized (the plan it prints)"
    seconds, basis = min(limits)
    if stage.kind == "pretrain":
        basis += "; the model is sized to fill it"
    return seconds, basis


def _measured(stage: Stage) -> float | None:
    """The planner's own estimate (`train.plan.estimate_time`), when the base and the data are already there."""
    from pathlib import Path

    r = stage.section
    base = r.model.base or r.model.adapter
    if not base or not Path(base).exists() or not all(Path(f).is_file() for f in r.data.train_files):
        return None
    from llamabrew.train.sft import estimate_seconds

    return estimate_seconds(r)


def _price(stage: Stage) -> float | None:
    from llamabrew.train.cost import hourly_price

    return hourly_price(stage.section.optim)


def _teacher_budget(stage: Stage) -> float | None:
    teacher = getattr(stage.section, "teacher", None) or getattr(stage.section, "judge", None)
    return getattr(teacher, "budget_usd", None)


def plan(pipeline: Pipeline, start_from: str | None = None, only: str | None = None,
         measure: bool = True) -> list[StagePlan]:
    """The plan a run with the same arguments would follow, without running anything; ``measure``: time a
    fine-tuning stage whose base and data exist with the planner (it loads the model)."""
    chosen, forced = selection(pipeline, start_from, only)
    state, wanted = PipelineState(pipeline), {s.name for s in chosen}
    plans = []
    for stage in pipeline.stages:
        if stage.name not in wanted:
            plans.append(StagePlan(stage, "not selected", None, None, ""))
            continue
        rec, input_hash = state.record(stage.name), state.input_hash(stage)
        if not forced and state.unchanged(stage, input_hash):
            plans.append(StagePlan(stage, "skip (unchanged)", 0.0, 0.0, "finished before with the same inputs"))
            continue
        action = "run"
        if rec.get("status") in ("running", "failed") and rec.get("hash") == input_hash and not forced:
            action = "continue (interrupted)"
        seconds, usd, basis = None, None, "cannot be known before it runs"
        if KINDS[stage.kind].compute:
            seconds, basis = _compute(stage, measure)
            price = _price(stage)
            usd = None if seconds is None or price is None else seconds / 3600 * price
            if seconds is not None and price is None:
                basis += "; no price (price_per_hour or LLAMABREW_USD_PER_HOUR)"
        elif (budget := _teacher_budget(stage)) is not None:
            usd, basis = budget, f"at most its teacher budget (${budget:g})"
        elif stage.kind in ("world", "convert", "serve"):
            seconds, usd = 0.0, 0.0
            basis = "prints the command that serves it" if stage.kind == "serve" else "writes a few files"
        plans.append(StagePlan(stage, action, seconds, usd, basis))
    return plans
