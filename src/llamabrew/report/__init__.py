"""`llamabrew report RUN_OR_PIPELINE`: one self-contained HTML page a person reads (and prints): the recipe, data
statistics, loss curves, evaluation before and after, the judge's table with intervals, GGUF verification per
quant, and time, device-hours and cost. `llamabrew run` writes one at the end of every pipeline."""

from __future__ import annotations

from pathlib import Path

from llamabrew.io import atomic_write_text
from llamabrew.report.collect import ReportData, collect
from llamabrew.report.html import SECTIONS, render

__all__ = ["SECTIONS", "ReportData", "collect", "render", "write_report"]


def write_report(source: str | Path, out: str | Path) -> Path:
    """Collect what ``source`` (a pipeline's run directory or a run directory) holds and write ``out``."""
    atomic_write_text(out, render(collect(source)))
    return Path(out)
