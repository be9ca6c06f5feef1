"""`llamabrew report`: a thin layer over `llamabrew.report.write_report`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llamabrew.cli_common import console, friendly_errors


@friendly_errors
def report(
    source: Annotated[Path, typer.Argument(help="a pipeline's run directory or a run directory")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="HTML file to write (default: "
                                                                  "SOURCE/report.html)")] = None,
) -> None:
    """One self-contained HTML page: recipe, data, loss curves, eval before/after, judge, GGUF checks, cost."""
    from llamabrew.report import write_report

    path = write_report(source, out or Path(source) / "report.html")
    console.print(f"[green]wrote[/] {path}", highlight=False)
