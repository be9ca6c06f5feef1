"""`llamabrew arena`: people vote blind between two models' answers (`evaluate.arena`); `arena export` turns the
votes into preference pairs for DPO."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llamabrew.cli_common import console, friendly_errors, is_local
from llamabrew.errors import LlamabrewError
from llamabrew.evaluate.questions import Answer, Question, load_answers, load_questions
from llamabrew.extras import require

Opt = typer.Option
arena_app = typer.Typer(invoke_without_command=True, add_completion=False)

QuestionsOpt = Annotated[str | None, Opt("--questions", help="questions JSONL (FastChat layout) or builtin:NAME",
                                         show_default=False)]
AOpt = Annotated[Path | None, Opt("--a", help="answers JSONL of one model", show_default=False)]
BOpt = Annotated[Path | None, Opt("--b", help="answers JSONL of the other model", show_default=False)]
DbOpt = Annotated[Path, Opt("--db", help="the SQLite vote database (the arena creates it)")]


def load_pair(questions: str | None, a: Path | None, b: Path | None
              ) -> tuple[list[Question], dict[str, dict[int | str, Answer]]]:
    """The questions and both models' answers, by model id; one line for a missing flag or a bad file."""
    missing = [flag for flag, value in (("--questions", questions), ("--a", a), ("--b", b)) if value is None]
    if missing:
        raise LlamabrewError(f"give {', '.join(missing)}: e.g. llamabrew arena --questions q.jsonl "
                             "--a answers_a.jsonl --b answers_b.jsonl")
    qs = load_questions(questions)  # type: ignore[arg-type]
    first, second = load_answers(a, qs), load_answers(b, qs)  # type: ignore[arg-type]
    model_a, model_b = next(iter(first.values())).model_id, next(iter(second.values())).model_id
    if model_a == model_b:
        raise LlamabrewError(f"--a and --b are both answers of model '{model_a}': compare two different models")
    return qs, {model_a: first, model_b: second}


@arena_app.callback()
@friendly_errors
def arena(
    ctx: typer.Context,
    questions: QuestionsOpt = None,
    a: AOpt = None,
    b: BOpt = None,
    db: DbOpt = Path("votes.sqlite"),
    host: Annotated[str, Opt(help="address to listen on; beyond this machine needs --api-key")] = "127.0.0.1",
    port: Annotated[int, Opt(help="port to listen on")] = 8770,
    api_key: Annotated[str | None, Opt(envvar="LLAMABREW_API_KEY", show_default=False,
                                       help="require 'Authorization: Bearer KEY' on /api")] = None,
) -> None:
    """A blind A/B arena: people vote which of two hidden models' answers is better.

    Serves a page with a question and both answers on random sides; the models' names show after the vote.
    Win rates with 95% intervals are at /results; `llamabrew arena export` makes preference pairs of the votes."""
    if ctx.invoked_subcommand is not None:
        return
    if not is_local(host) and not api_key:
        raise LlamabrewError(f"--host {host} listens beyond this machine: give --api-key KEY (or set "
                             "LLAMABREW_API_KEY) so only people with the key can vote")
    require("serve", "llamabrew arena")  # before reading files: said first
    qs, answers = load_pair(questions, a, b)
    import uvicorn

    from llamabrew.evaluate.arena import create_arena_app

    app = create_arena_app(qs, answers, db, api_key)
    url = f"http://{'localhost' if is_local(host) else host}:{port}"
    console.print(f"[bold]llamabrew arena[/]: {app.state.store.count()} votes so far in {db}\n"
                  f"  vote     {url}/\n  results  {url}/results{'  (API key required)' if api_key else ''}",
                  highlight=False)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3, server_header=False)


@arena_app.command()
@friendly_errors
def export(
    questions: QuestionsOpt = None,
    a: AOpt = None,
    b: BOpt = None,
    db: DbOpt = Path("votes.sqlite"),
    out: Annotated[Path, Opt("--out", help="preference pairs JSONL to write")] = Path("pairs.jsonl"),
) -> None:
    """Write the votes as preference pairs {"prompt", "chosen", "rejected"} for DPO: first-turn votes with a
    winner only (a second-turn answer follows its own model's first answer, so two of them answer no one prompt)."""
    from llamabrew.evaluate.votes import VoteStore

    qs, answers = load_pair(questions, a, b)
    if not db.is_file():
        raise LlamabrewError(f"{db}: no such vote database")
    result = VoteStore(db).export_pairs(qs, answers, out)
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(result.skipped.items())) or "none"
    console.print(f"wrote {result.written} preference pairs to {out}; skipped {sum(result.skipped.values())}: "
                  f"{skipped}", highlight=False)
