"""`llamabrew run pipeline.yaml`: the whole job from one file. ``run(load_pipeline("pipeline.yaml"))`` runs
every stage (data, pretrain, train, eval, judge, export, a serve hint) through its own entry point, skips what
has not changed, resumes what was interrupted and writes the report page; `plan` says what a run would do."""

from importlib.resources import files
from pathlib import Path

from llamabrew.pipeline.config import Pipeline, Stage, load_pipeline
from llamabrew.pipeline.estimate import StagePlan, plan
from llamabrew.pipeline.runner import PipelineResult, StageEvent, run

__all__ = ["Pipeline", "PipelineResult", "Stage", "StageEvent", "StagePlan", "builtin", "load_pipeline", "plan",
           "run"]


def builtin(name: str) -> Path:
    """A pipeline file shipped with llamabrew (``quickstart``, ``quickstart-align``)."""
    return Path(str(files("llamabrew.pipeline") / "pipelines" / f"{name}.yaml"))
