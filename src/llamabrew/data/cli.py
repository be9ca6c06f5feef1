"""``llamabrew data ...``: thin shells over generate / translate / curate / convert."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from llamabrew.cli_common import console, friendly_errors
from llamabrew.data.teacher import TeacherConfig, resolve_price
from llamabrew.errors import LlamabrewError

data_app = typer.Typer(
    help="Make instruction data: self-instruct generation and translation with any OpenAI-compatible "
    "teacher, curation, format conversion.",
    no_args_is_help=True,
)

TeacherUrl = Annotated[
    str,
    typer.Option(
        "--teacher-url",
        help="OpenAI-compatible base URL, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1",
    ),
]
TeacherModel = Annotated[str, typer.Option("--teacher-model", help="model name the endpoint knows")]
KeyEnv = Annotated[
    str,
    typer.Option(
        "--teacher-key-env",
        help="environment variable holding the API key; the key is never written to disk or logs",
    ),
]
Concurrency = Annotated[int, typer.Option("--concurrency", min=1, help="requests in flight at once")]
BudgetUsd = Annotated[
    float | None,
    typer.Option(
        "--budget-usd",
        min=0,
        help="stop cleanly before spending more than this, counting resumed runs (needs a price)",
    ),
]
PriceIn = Annotated[float | None, typer.Option("--price-in", min=0, help="USD per 1M prompt tokens")]
PriceOut = Annotated[float | None, typer.Option("--price-out", min=0, help="USD per 1M completion tokens")]
Prices = Annotated[
    Path | None,
    typer.Option("--prices", help='JSON price table: {"model": {"input": usd_per_1M, "output": usd_per_1M}}'),
]
Timeout = Annotated[float, typer.Option("--timeout", min=0.01, help="seconds per request before a retry")]
Retries = Annotated[int, typer.Option("--max-retries", min=0, help="retries on 429/5xx/timeouts")]


def teacher_config(
    url: str,
    model: str,
    key_env: str,
    concurrency: int,
    budget_usd: float | None,
    price_in: float | None,
    price_out: float | None,
    prices: Path | None,
    timeout: float,
    retries: int,
    **extra: Any,
) -> TeacherConfig:
    """Teacher settings from the shared flags; the price comes from the flags, the table, or the defaults."""
    price = resolve_price(model, price_in, price_out, prices)
    return TeacherConfig(
        url=url,
        model=model,
        key_env=key_env,
        concurrency=concurrency,
        timeout_s=timeout,
        max_retries=retries,
        budget_usd=budget_usd,
        price=price,
        **extra,
    )


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
def generate(
    out: Annotated[Path, typer.Option("--out", help="JSONL of kept tasks (appended; a rerun resumes)")],
    num: Annotated[int, typer.Option("--num", min=1, help="how many tasks to keep in all")],
    teacher_model: TeacherModel,
    seeds: Annotated[
        Path | None,
        typer.Option(
            "--seeds", help="seed tasks (default: llamabrew's own); Alpaca, chat or Self-Instruct format"
        ),
    ] = None,
    teacher_url: TeacherUrl = "https://api.openai.com/v1",
    teacher_key_env: KeyEnv = "OPENAI_API_KEY",
    concurrency: Concurrency = 4,
    budget_usd: BudgetUsd = None,
    price_in: PriceIn = None,
    price_out: PriceOut = None,
    prices: Prices = None,
    timeout: Timeout = 120.0,
    max_retries: Retries = 6,
    per_request: Annotated[int, typer.Option(min=1, help="new tasks asked for per request")] = 10,
    prompt_seeds: Annotated[int, typer.Option(min=0, help="seed tasks shown per request")] = 3,
    prompt_generated: Annotated[int, typer.Option(min=0, help="generated tasks shown per request")] = 2,
    rouge_threshold: Annotated[
        float,
        typer.Option(
            min=0.01, max=1.0, help="reject a task whose ROUGE-L F1 to any kept instruction is above this"
        ),
    ] = 0.7,
    temperature: Annotated[float, typer.Option(min=0.0)] = 1.0,
    max_tokens: Annotated[int, typer.Option(min=16, help="max tokens per reply")] = 3072,
    seed: Annotated[int, typer.Option(help="seed for choosing the examples shown")] = 0,
) -> None:
    """Self-instruct: grow seed tasks into NUM new ones with a teacher model (Alpaca's method)."""
    from llamabrew.data.generate import GenerateOptions, SelfInstruct

    cfg = teacher_config(
        teacher_url,
        teacher_model,
        teacher_key_env,
        concurrency,
        budget_usd,
        price_in,
        price_out,
        prices,
        timeout,
        max_retries,
        temperature=temperature,
        max_tokens=max_tokens,
    )
    opts = GenerateOptions(
        out=out,
        num=num,
        seeds=seeds,
        prompt_seeds=prompt_seeds,
        prompt_generated=prompt_generated,
        per_request=per_request,
        rouge_threshold=rouge_threshold,
        seed=seed,
    )
    import asyncio

    job = SelfInstruct(opts, cfg)
    with progress_bar("kept") as start:
        advance = start(num, min(num, len(job.generated)))
        summary = asyncio.run(job.run(advance))
    print_summary(f"self-instruct: {summary['stopped']}", summary)


@data_app.command()
@friendly_errors
def translate(
    to: Annotated[str, typer.Option("--to", help="target language code, e.g. zh, ja, fr")],
    inp: Annotated[Path, typer.Option("--in", help="instruction file (Alpaca, ShareGPT or messages)")],
    out: Annotated[Path, typer.Option("--out", help="translated JSONL (rebuilt from OUT.cache.jsonl)")],
    teacher_model: TeacherModel,
    budget_chars: Annotated[
        int | None,
        typer.Option("--budget-chars", min=0, help="translate at most this many source characters"),
    ] = None,
    budget_usd: BudgetUsd = None,
    shortest_first: Annotated[
        bool,
        typer.Option(
            "--shortest-first", help="when the budget cannot cover everything, take the shortest records"
        ),
    ] = False,
    teacher_url: TeacherUrl = "https://api.openai.com/v1",
    teacher_key_env: KeyEnv = "OPENAI_API_KEY",
    concurrency: Concurrency = 4,
    price_in: PriceIn = None,
    price_out: PriceOut = None,
    prices: Prices = None,
    timeout: Timeout = 120.0,
    max_retries: Retries = 6,
) -> None:
    """Translate instruction, input and output, keeping code, numbers, placeholders and JSON intact."""
    from llamabrew.data.translate import TranslateOptions
    from llamabrew.data.translate import translate as run

    cfg = teacher_config(
        teacher_url,
        teacher_model,
        teacher_key_env,
        concurrency,
        budget_usd,
        price_in,
        price_out,
        prices,
        timeout,
        max_retries,
        temperature=0.3,
    )
    opts = TranslateOptions(
        inp=inp,
        out=out,
        to=to,
        budget_chars=budget_chars,
        budget_usd=budget_usd,
        shortest_first=shortest_first,
    )
    with progress_bar("translated") as start:
        report = run(opts, cfg, on_plan=lambda n: start(n, 0))
    print_summary(f"translate → {to}: {report['stopped']}", report)


@data_app.command()
@friendly_errors
def curate(
    inputs: Annotated[list[Path], typer.Option("--in", help="instruction file(s); repeat --in for several")],
    out_dir: Annotated[
        Path, typer.Option("--out-dir", help="gets train.jsonl, val.jsonl, report.json, lengths.png")
    ],
    near_dup_threshold: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="drop a request whose ROUGE-L F1 to a kept one is above this; 0 turns it off",
        ),
    ] = 0.7,
    tokenizer: Annotated[
        str | None, typer.Option(help="tokenizer name or folder for lengths in tokens (default: words)")
    ] = None,
    min_length: Annotated[int, typer.Option(min=0)] = 1,
    max_length: Annotated[int | None, typer.Option(min=1)] = None,
    lang: Annotated[str | None, typer.Option(help="keep examples mostly in this language's script")] = None,
    script: Annotated[
        list[str] | None, typer.Option(help="keep examples mostly in this script (latin, han, cyrillic, ...)")
    ] = None,
    min_script_share: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.5,
    sort_by_length: Annotated[bool, typer.Option(help="sort each split by length, shortest first")] = False,
    val_fraction: Annotated[float, typer.Option(min=0.0, max=0.9)] = 0.05,
    seed: Annotated[int, typer.Option(help="seed of the train/val split")] = 0,
) -> None:
    """Remove duplicates and near-duplicates, filter by length and script, split train/val, report stats."""
    from llamabrew.data.curate import SCRIPTS, CurateOptions
    from llamabrew.data.curate import curate as run

    bad = [s for s in script or [] if s not in SCRIPTS]
    if bad:
        raise LlamabrewError(f"unknown script {bad[0]!r}; choose from {', '.join(SCRIPTS)}")
    opts = CurateOptions(
        inputs=inputs,
        out_dir=out_dir,
        near_dup_threshold=near_dup_threshold or None,
        tokenizer=tokenizer,
        min_length=min_length,
        max_length=max_length,
        lang=lang,
        scripts=set(script or []),
        min_script_share=min_script_share,
        sort_by_length=sort_by_length,
        val_fraction=val_fraction,
        seed=seed,
    )
    with progress_bar("curating") as start:
        report = run(opts, progress=lambda what, n: start(n, 0))
    report["top_verbs"] = ", ".join(f"{v} {n}" for v, n in report["top_verbs"][:10])
    report.pop("top_verb_objects", None)
    print_summary("curate", report)


@data_app.command()
@friendly_errors
def convert(
    inp: Annotated[Path, typer.Option("--in", help="Alpaca, ShareGPT, messages or OpenAssistant JSONL")],
    out: Annotated[Path, typer.Option("--out")],
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="alpaca, sharegpt, messages, or pairs (OpenAssistant ranked replies for preference tuning)",
        ),
    ],
    lang: Annotated[
        str | None, typer.Option(help="OpenAssistant: keep only messages in this language")
    ] = None,
) -> None:
    """Convert between Alpaca, ShareGPT and OpenAI messages; OpenAssistant trees to best paths or pairs."""
    from llamabrew.data.convert import convert as run

    print_summary(f"convert → {to}", run(inp, out, to, lang))


if __name__ == "__main__":
    data_app()
