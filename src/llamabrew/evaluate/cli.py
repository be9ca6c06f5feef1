"""`llamabrew answer`, `judge` and `leaderboard`: the commands over `evaluate.compare` and `leaderboard`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from llamabrew.cli_common import Flags, console, friendly_errors, recipe_flags
from llamabrew.evaluate.judge_report import fmt, summary_view
from llamabrew.recipe import load_recipe
from llamabrew.stage_recipes import JudgeRecipe

Opt = typer.Option
Questions = Annotated[str, Opt("--questions", "-q", help="questions JSONL (FastChat layout) or builtin:brew80")]
MaxNew = Annotated[int, Opt("--max-new-tokens", min=1, help="longest answer per turn, in tokens")]
Temperature = Annotated[float, Opt("--temperature", min=0, help="answer sampling temperature (0 = greedy)")]
Threads = Annotated[int | None, Opt("--threads", help="CPU threads for a local model")]
Template = Annotated[str | None, Opt("--template", help="chat template of a local model (default: the one it "
                                                        "was trained with)")]
AsJson = Annotated[bool, Opt("--json", help="print one JSON object on stdout")]


@friendly_errors
def answer(
    questions: Questions,
    model: Annotated[str, Opt("--model", "-m", help="run or model directory, hub id, .gguf, or openai:URL#MODEL")],
    out: Annotated[Path, Opt("--out", "-o", help="answers JSONL to write (resumed if it exists)")],
    model_id: Annotated[str | None, Opt(help="name the answers carry (default: from --model)")] = None,
    max_new_tokens: MaxNew = 256,
    temperature: Temperature = 0.0,
    template: Template = None,
    threads: Threads = None,
) -> None:
    """Answer every question (each turn after the model's own earlier answers) into a FastChat answers file."""
    from llamabrew.evaluate.compare import AnswerSettings, answer_model
    from llamabrew.evaluate.questions import load_answers, load_questions

    qs = load_questions(questions)
    settings = AnswerSettings(max_new_tokens=max_new_tokens, temperature=temperature, threads=threads,
                              template=template)
    answer_model(model, qs, out, settings, model_id=model_id)
    n = len(load_answers(out, qs))
    console.print(f"[green]done[/]: {n} answers in {out}", highlight=False)


JUDGE_FLAGS: Flags = {
    "questions": ("questions", "--questions", "-q"), "a": ("a", "--a"), "b": ("b", "--b"),
    "judge_url": ("judge.url", "--judge-url"), "judge_model": ("judge.model", "--judge-model"),
    "judge_key_env": ("judge.key_env", "--judge-key-env"), "mode": "mode", "out": ("out", "--out", "-o"),
    "reference": ("use_reference", "--reference/--no-reference"), "pairs": "pairs",
    "concurrency": ("judge.concurrency", "--concurrency"), "budget_usd": ("judge.budget_usd", "--budget-usd"),
    "price_in": ("judge.price_in", "--price-in"), "price_out": ("judge.price_out", "--price-out"),
    "prices": ("judge.prices", "--prices"), "timeout": ("judge.timeout", "--timeout"),
    "retries": ("judge.max_retries", "--max-retries"), "max_new_tokens": "max_new_tokens",
    "temperature": "temperature", "batch_size": "batch_size", "template": "template", "threads": "threads",
    "seed": "seed",
}


@friendly_errors
@recipe_flags(JudgeRecipe, JUDGE_FLAGS)
def judge(
    recipe: Annotated[Path | None, Opt(help="judge recipe YAML (a pipeline judge stage's fields); flags "
                                            "override it")] = None,
    as_json: AsJson = False,
    *, overrides: dict[str, Any],
) -> None:
    """LLM-as-judge: is B better than A? Pairwise in both orders (a flip is a tie), or single grades. --judge-url
    builtin:reference is an offline judge for questions with reference answers."""
    from llamabrew.evaluate.compare import run_judge

    result = run_judge(load_recipe(JudgeRecipe, recipe, overrides))
    s = result.summary
    if as_json:
        print(json.dumps(s))
    else:
        for part in summary_view(s):
            console.print(part, highlight=False)
    if "pairs" in s:
        p = s["pairs"]
        console.print(f"wrote {p['written']} preference pairs to {p['path']} (skipped: "
                      f"{', '.join(f'{n} {why}' for why, n in p['skipped'].items()) or 'none'})", highlight=False)
    if s["stopped"] == "budget":
        console.print(f"[yellow]stopped at the budget[/]: {s['pending']} verdicts still to ask; run again with a "
                      "larger --budget-usd to resume", highlight=False)


@friendly_errors
def leaderboard(
    sources: Annotated[list[Path], typer.Argument(help="pairwise verdict JSONL files and/or arena vote databases")],
    seed: Annotated[int, Opt(help="bootstrap seed")] = 0,
    as_json: AsJson = False,
) -> None:
    """Bradley-Terry ratings with 95% intervals, and judge-human agreement where both judged the same items."""
    from rich.table import Table

    from llamabrew.evaluate.leaderboard import leaderboard as build

    board = build(list(sources), seed=seed)
    if as_json:
        print(json.dumps(board))
        return
    table = Table(title=f"leaderboard: {board['judge_games']} judge games, {board['human_games']} human games")
    for col in ("rank", "model", "rating", "95% CI", "games", "win rate (W+T/2)"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for row in board["ratings"]:
        lo, hi = row["ci95"]
        table.add_row(str(row["rank"]), row["model"], f"{row['rating']:.0f}", f"{lo:.0f} – {hi:.0f}",
                      str(row["games"]), fmt(row["win_rate_adjusted"]))
    console.print(table)
    agree = board["agreement"]
    if agree:
        console.print(f"judge–human agreement: {fmt(agree['with_ties'])} with ties ({agree['items']} votes), "
                      f"{fmt(agree['without_ties'])} without ({agree['without_ties_items']})", highlight=False)
