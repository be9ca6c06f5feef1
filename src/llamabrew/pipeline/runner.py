"""Run a pipeline: each stage in order, skipped when unchanged, resumed inside when it was interrupted, and the
report page written at the end."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from llamabrew.errors import LlamabrewError
from llamabrew.io import atomic_write_text
from llamabrew.pipeline.config import Pipeline, Stage
from llamabrew.pipeline.kinds import KINDS
from llamabrew.pipeline.stages import RESUMABLE, RUNNERS
from llamabrew.pipeline.state import RESOLVED, PipelineState

log = logging.getLogger(__name__)


@dataclass
class StageEvent:
    """What the runner tells its caller (the CLI renders it): a stage starts, is skipped, finishes or fails."""

    event: Literal["start", "skip", "done", "failed"]
    stage: Stage
    index: int  # 1-based position in the run order
    total: int
    note: str = ""
    result: dict[str, Any] | None = None
    elapsed_s: float = 0.0


@dataclass
class PipelineResult:
    pipeline: Pipeline
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: Path | None = None
    elapsed_s: float = 0.0


def selection(pipeline: Pipeline, start_from: str | None, only: str | None) -> tuple[list[Stage], bool]:
    """The stages to consider and whether they run whatever their hashes say (``--from`` / ``--only``)."""
    names = pipeline.names()
    for flag, name in (("--from", start_from), ("--only", only)):
        if name is not None and name not in names:
            raise LlamabrewError(f"{flag} {name}: {pipeline.file} has no stage {name!r} (stages: {', '.join(names)})")
    if start_from and only:
        raise LlamabrewError("give --from or --only, not both")
    if only:
        return [pipeline.stage(only)], True
    if start_from:
        return pipeline.stages[names.index(start_from):], True
    return list(pipeline.stages), False


def _checkpoint_step(stage: Stage) -> int | None:
    from llamabrew.run import Run
    from llamabrew.train.checkpoint import list_checkpoints

    found = list_checkpoints(Run(stage.section.out).checkpoints)
    return int(found[-1].name.split("-")[1]) if found else None


def save_resolved(pipeline: Pipeline) -> Path:
    """The pipeline as it ran: every reference replaced by the path it named, every default filled in."""
    data = {"name": pipeline.name, "out": str(pipeline.out),
            "stages": {s.name: {"kind": s.kind, **s.section.model_dump(mode="json")} for s in pipeline.stages}}
    path = pipeline.out / RESOLVED
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def run(pipeline: Pipeline, *, start_from: str | None = None, only: str | None = None,
        on_event: Callable[[StageEvent], None] | None = None, report: bool = True) -> PipelineResult:
    """Run ``pipeline`` (from `load_pipeline`): unchanged stages are skipped, an interrupted training stage
    continues from its last checkpoint; ``start_from`` / ``only`` rerun a part. Writes ``OUT/report.html``."""
    from llamabrew.train.tracking import check_trackers

    chosen, forced = selection(pipeline, start_from, only)
    state = PipelineState(pipeline)
    wanted = {s.name for s in chosen}
    for stage in chosen:  # what runs must find what it needs already made
        for dep in stage.deps:
            if dep not in wanted and not state.finished(pipeline.stage(dep)):
                raise LlamabrewError(f"stage {stage.name} needs stage {dep}, which has not finished: run without "
                                     "--from / --only first")
    for stage in chosen:  # a missing extra is said now, not after hours of earlier stages
        if KINDS[stage.kind].compute:
            check_trackers(stage.section.optim.log_to)
        if stage.kind == "export":
            from llamabrew.export import require_llama_cpp

            require_llama_cpp(stage.section.quants, stage.section.verify)
    emit = on_event or (lambda e: None)
    result, started = PipelineResult(pipeline), time.monotonic()
    pipeline.out.mkdir(parents=True, exist_ok=True)
    save_resolved(pipeline)
    order = pipeline.names()
    for stage in chosen:
        index = order.index(stage.name) + 1
        input_hash = state.input_hash(stage)
        if not forced and state.unchanged(stage, input_hash):
            result.skipped.append(stage.name)
            emit(StageEvent("skip", stage, index, len(order), "unchanged since it last finished",
                            state.record(stage.name).get("result")))
            continue
        resume_step, note = _prepare(stage, state, input_hash, forced)
        state.start(stage, input_hash, resume_step)
        for path in stage.outputs.values():  # commands expect the folder of their --out to exist
            path.parent.mkdir(parents=True, exist_ok=True)
        emit(StageEvent("start", stage, index, len(order), note))
        t0 = time.monotonic()
        try:
            outcome = RUNNERS[stage.kind](stage, resume_step is not None)
        except BaseException as e:
            state.fail(stage, str(e) or type(e).__name__, time.monotonic() - t0)
            emit(StageEvent("failed", stage, index, len(order), str(e), elapsed_s=time.monotonic() - t0))
            raise
        state.finish(stage, outcome, time.monotonic() - t0)
        result.ran.append(stage.name)
        result.results[stage.name] = outcome
        emit(StageEvent("done", stage, index, len(order), "", outcome, time.monotonic() - t0))
    result.elapsed_s = time.monotonic() - started
    if report:
        from llamabrew.report import write_report

        try:
            result.report = write_report(pipeline.out, pipeline.out / "report.html")
        except Exception as e:  # every stage is done and recorded: a report that fails must not undo that
            log.warning(f"the report page could not be written ({type(e).__name__}: {e}); "
                        f"try: llamabrew report {pipeline.out}")
    return result


def _prepare(stage: Stage, state: PipelineState, input_hash: str, forced: bool) -> tuple[int | None, str]:
    """Whether a training stage continues inside (same settings, interrupted, checkpoints there) or starts
    over; starting over clears the folder this pipeline made for it before, so no stale checkpoint is reused."""
    rec = state.record(stage.name)
    if stage.kind not in RESUMABLE:
        return None, "forced" if forced else ""
    out = Path(stage.section.out)
    interrupted = rec.get("status") in ("running", "failed") and rec.get("hash") == input_hash
    step = _checkpoint_step(stage) if out.is_dir() else None
    if interrupted and step is not None and not forced:
        return step, f"interrupted earlier: continues from its checkpoint at step {step}"
    made_here = str(out) in (rec.get("outputs") or {}).values()
    if made_here and out.is_dir():
        shutil.rmtree(out)
        why = "rerun asked for" if forced else "settings or inputs changed"
        return None, f"{why}: starting over (its earlier folder removed)"
    return None, ""
