"""Progress bars with speed and time left, for every step that takes more than a few seconds."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from llamabrew.cli_common import console


class RateColumn(ProgressColumn):
    """Items per second, with the unit given as the task field ``unit`` (e.g. 'tok', 'ex')."""

    def render(self, task: Task) -> Text:
        speed = task.fields.get("rate") or task.speed
        if not speed:
            return Text("--", style="progress.data.speed")
        unit = task.fields.get("unit", "it")
        return Text(f"{speed:,.1f} {unit}/s", style="progress.data.speed")


def progress_bar(transient: bool = False) -> Progress:
    """A rich Progress on stderr: description, bar, done/total, %, speed, elapsed, time left, extra info."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=transient,
        refresh_per_second=4,
    )
