"""`llamabrew run PIPELINE.yaml`: a thin layer over `llamabrew.pipeline` (load, plan or run, render)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llamabrew.cli_common import console, friendly_errors

Opt = typer.Option


def show(event: object) -> None:
    from llamabrew.pipeline.views import event_view

    for part in event_view(event):  # type: ignore[arg-type]
        console.print(part, highlight=False)


@friendly_errors
def run(
    pipeline_file: Annotated[Path, typer.Argument(help="pipeline YAML (stages: data, pretrain, train, eval, judge, "
                                                       "export, serve), or builtin:quickstart")],
    start_from: Annotated[str | None, Opt("--from", help="rerun this stage and every one after it")] = None,
    only: Annotated[str | None, Opt("--only", help="rerun this stage alone (what it needs must have run)")] = None,
    dry_run: Annotated[bool, Opt("--dry-run", help="print the plan, with time and cost per stage, and stop")] = False,
    out: Annotated[Path | None, Opt("--out", help="the pipeline's run directory (default: the file's out:)")] = None,
    log_to: Annotated[list[str] | None, Opt("--log-to", help="also log training to tensorboard or wandb "
                                                             "(repeatable)")] = None,
    set_values: Annotated[list[str] | None, Opt("--set", help="KEY=VALUE on the pipeline by dotted key, e.g. "
                                                              "vars.seed=1 or stages.sft.optim.epochs=2")] = None,
) -> None:
    """Run a whole job from one file: stages skipped when unchanged, resumed when interrupted; a report page at
    the end (OUT/report.html)."""
    from llamabrew import pipeline as pipelines

    sets = [*(set_values or []), *([f"out={out}"] if out else []), *([f"log_to={list(log_to)}"] if log_to else [])]
    path = pipelines.builtin(str(pipeline_file).removeprefix("builtin:")) if str(pipeline_file).startswith(
        "builtin:") else pipeline_file
    loaded = pipelines.load_pipeline(path, sets)
    from llamabrew.pipeline.views import plan_table

    if dry_run:
        console.print(plan_table(pipelines.plan(loaded, start_from, only),
                                 f"plan of {path} → {loaded.out} (nothing runs)"))
        return
    console.print(plan_table(pipelines.plan(loaded, start_from, only, measure=False), f"plan of {path} → "
                             f"{loaded.out} (--dry-run also times fine-tuning stages whose inputs exist)"))
    result = pipelines.run(loaded, start_from=start_from, only=only, on_event=show)
    console.print(f"[green]done[/]: {len(result.ran)} stage(s) ran, {len(result.skipped)} skipped · report: "
                  f"[bold]{result.report}[/]", highlight=False)
