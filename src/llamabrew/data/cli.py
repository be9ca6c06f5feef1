"""``llamabrew data ...``: thin shells over generate / translate / curate / convert. Each command fills the
recipe section a pipeline stage of its kind takes (`llamabrew.stage_recipes`): ``--recipe FILE``, then flags."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from llamabrew.cli_common import Flags, console, friendly_errors, recipe_flags
from llamabrew.recipe import load_recipe
from llamabrew.stage_recipes import ConvertRecipe, CurateRecipe, GenerateRecipe, TranslateRecipe

data_app = typer.Typer(
    help="Make instruction data: self-instruct generation and translation with any OpenAI-compatible "
    "teacher, curation, format conversion.",
    no_args_is_help=True,
)
RecipeFile = Annotated[Path | None, typer.Option(help="recipe YAML (a pipeline stage's fields); flags override it")]
TEACHER_FLAGS: Flags = {
    "teacher_url": ("teacher.url", "--teacher-url"), "teacher_model": ("teacher.model", "--teacher-model"),
    "teacher_key_env": ("teacher.key_env", "--teacher-key-env"),
    "concurrency": ("teacher.concurrency", "--concurrency"), "budget_usd": ("teacher.budget_usd", "--budget-usd"),
    "price_in": ("teacher.price_in", "--price-in"), "price_out": ("teacher.price_out", "--price-out"),
    "prices": ("teacher.prices", "--prices"), "timeout": ("teacher.timeout", "--timeout"),
    "max_retries": ("teacher.max_retries", "--max-retries"),
}


@contextmanager
def progress_bar(what: str) -> Iterator[Callable[[int, int], Callable[[int], None]]]:
    """Yields ``start(total, done) -> advance(n)``; the bar shows on stderr."""
    cols = (TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*cols, console=console, transient=False) as bar:

        def start(total: int, done: int = 0) -> Callable[[int], None]:
            task = bar.add_task(what, total=total, completed=done)
            return lambda n=1: bar.advance(task, n)

        yield start


def print_summary(title: str, summary: dict[str, Any]) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    for key, value in summary.items():
        if isinstance(value, dict):
            value = (
                ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items())
                or "-"
            )
        table.add_row(key, str(value))
    console.print(table)


@data_app.command()
@friendly_errors
@recipe_flags(GenerateRecipe, {
    "out": "out", "num": "num", "seeds": "seeds", "per_request": "per_request", "prompt_seeds": "prompt_seeds",
    "prompt_generated": "prompt_generated", "rouge_threshold": "rouge_threshold", "temperature": "temperature",
    "max_tokens": "max_tokens", "seed": "seed", **TEACHER_FLAGS})
def generate(recipe: RecipeFile = None, *, overrides: dict[str, Any]) -> None:
    """Self-instruct: grow seed tasks into NUM new ones with a teacher model (Alpaca's method)."""
    import asyncio

    from llamabrew.data.generate import SelfInstruct, generate_job

    opts, cfg = generate_job(load_recipe(GenerateRecipe, recipe, overrides))
    job = SelfInstruct(opts, cfg)
    with progress_bar("kept") as start:
        advance = start(opts.num, min(opts.num, len(job.generated)))
        summary = asyncio.run(job.run(advance))
    print_summary(f"self-instruct: {summary['stopped']}", summary)


@data_app.command()
@friendly_errors
@recipe_flags(TranslateRecipe, {
    "to": "to", "inp": ("input", "--in"), "out": "out", "budget_chars": "budget_chars",
    "shortest_first": ("shortest_first", "--shortest-first"), **TEACHER_FLAGS})
def translate(recipe: RecipeFile = None, *, overrides: dict[str, Any]) -> None:
    """Translate instruction, input and output, keeping code, numbers, placeholders and JSON intact."""
    from llamabrew.data.translate import translate as run
    from llamabrew.data.translate import translate_job

    opts, cfg = translate_job(load_recipe(TranslateRecipe, recipe, overrides))
    with progress_bar("translated") as start:
        report = run(opts, cfg, on_plan=lambda n: start(n, 0))
    print_summary(f"translate → {opts.to}: {report['stopped']}", report)


@data_app.command()
@friendly_errors
@recipe_flags(CurateRecipe, {
    "inputs": ("inputs", "--in"), "out_dir": "out_dir", "near_dup_threshold": "near_dup_threshold",
    "tokenizer": "tokenizer", "min_length": "min_length", "max_length": "max_length", "lang": "lang",
    "script": "script", "min_script_share": "min_script_share", "sort_by_length": "sort_by_length",
    "val_fraction": "val_fraction", "seed": "seed"})
def curate(recipe: RecipeFile = None, *, overrides: dict[str, Any]) -> None:
    """Remove duplicates and near-duplicates, filter by length and script, split train/val, report stats."""
    from llamabrew.data.curate import curate as run
    from llamabrew.data.curate import curate_options

    opts = curate_options(load_recipe(CurateRecipe, recipe, overrides))
    with progress_bar("curating") as start:
        report = run(opts, progress=lambda what, n: start(n, 0))
    report["top_verbs"] = ", ".join(f"{v} {n}" for v, n in report["top_verbs"][:10])
    report.pop("top_verb_objects", None)
    print_summary("curate", report)


@data_app.command()
@friendly_errors
@recipe_flags(ConvertRecipe, {"inp": ("input", "--in"), "out": "out", "to": "to", "lang": "lang"})
def convert(recipe: RecipeFile = None, *, overrides: dict[str, Any]) -> None:
    """Convert between Alpaca, ShareGPT and OpenAI messages; OpenAssistant trees to best paths or pairs."""
    from llamabrew.data.convert import convert as run
    from llamabrew.errors import LlamabrewError

    r = load_recipe(ConvertRecipe, recipe, overrides)
    if r.out is None:
        raise LlamabrewError("pass --out")
    print_summary(f"convert → {r.to}", run(r.input, r.out, r.to, r.lang))


if __name__ == "__main__":
    data_app()
