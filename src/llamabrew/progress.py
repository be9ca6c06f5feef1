"""What a person at a terminal sees while library code works: progress bars, and its `logging` records.

Library modules report through ``logging.getLogger(__name__)`` (loggers under "llamabrew") and show progress
with `progress_bar`; neither knows about the CLI. The CLI calls `log_to_terminal` once, which renders the
records on the same stderr console as the bars (so a warning prints above a running bar, not through it).
A program that imports llamabrew configures `logging` as it likes instead.
"""

from __future__ import annotations

import logging
import os

from rich.console import Console
from rich.markup import escape
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

terminal = Console(stderr=True, soft_wrap=True)  # long lines stay whole in logs and pipes


class RateColumn(ProgressColumn):
    """Items per second, with the unit given as the task field ``unit`` (e.g. 'tok', 'ex')."""

    def render(self, task: Task) -> Text:
        speed = task.fields.get("rate") or task.speed
        if not speed:
            return Text("--", style="progress.data.speed")
        unit = task.fields.get("unit", "it")
        return Text(f"{speed:,.1f} {unit}/s", style="progress.data.speed")


def progress_bar(transient: bool = False) -> Progress:
    """A rich Progress on stderr: description, bar, done/total, %, speed, elapsed, time left, extra info. Hidden
    in the processes torchrun starts besides rank 0 (one bar per run, not one per device)."""
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
        console=terminal,
        transient=transient,
        refresh_per_second=4,
        disable=os.environ.get("RANK", "0") != "0",
    )


class TerminalHandler(logging.Handler):
    """Renders llamabrew's log records on `terminal`: warnings as a yellow "warning:" line, errors in red, the
    rest plain (a record's ``style`` extra, e.g. "dim", styles the whole line)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = escape(record.getMessage())
            if record.levelno >= logging.ERROR:
                text = f"[bold red]error:[/] {text}"
            elif record.levelno >= logging.WARNING:
                text = f"[yellow]warning:[/] {text}"
            elif style := getattr(record, "style", None):
                text = f"[{style}]{text}[/]"
            terminal.print(text, highlight=False)
        except Exception:
            self.handleError(record)


def log_to_terminal(level: int = logging.INFO) -> None:
    """Show llamabrew's log records on the terminal (once; the CLI calls this for every command)."""
    logger = logging.getLogger("llamabrew")
    if not any(isinstance(h, TerminalHandler) for h in logger.handlers):
        logger.addHandler(TerminalHandler())
    logger.setLevel(level)  # records still propagate: a host program's (or pytest's) handlers see them too
