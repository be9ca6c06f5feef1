"""What a person reads while a pipeline runs, as rich renderables (the CLI and the quickstart print them)."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.rule import Rule
from rich.table import Table

from llamabrew.evaluate.judge_report import fmt, summary_view
from llamabrew.pipeline.estimate import StagePlan
from llamabrew.pipeline.runner import StageEvent
from llamabrew.train.plan import format_duration


def _train_line(r: dict[str, Any]) -> str:
    val = f", validation loss {r['val_loss']:.4f}" if r.get("val_loss") is not None else ""
    cost = f", ${r['cost_usd']:.2f}" if r.get("cost_usd") is not None else ""
    train = f"{r['train_loss']:.4f}" if r.get("train_loss") is not None else "-"
    return (f"{r.get('kind', '')} ({r.get('method', '')}): {r.get('steps', 0)} steps, train loss {train}{val}, "
            f"{format_duration(r.get('elapsed_s') or 0)}{cost}")


def _eval_table(r: dict[str, Any]) -> Table:
    table = Table(title=f"evaluation on {r['data']} ({r['n']} examples)")
    for col in ("model", "exact match", "contains", "loss"):
        table.add_column(col)
    rows = [("base (adapter off)", r["base"])] if r.get("base") else []
    for name, rep in [*rows, ("tuned" if r.get("base") else "model", r)]:
        table.add_row(name, fmt(rep["exact_match"]), fmt(rep["contains"]),
                      "-" if rep.get("loss") is None else f"{rep['loss']:.4f}")
    return table


def result_view(kind: str, r: dict[str, Any]) -> list[Any]:
    """A finished stage's result, the way its own command shows it."""
    if kind in ("train", "pretrain"):
        return [_train_line(r)]
    if kind == "eval":
        return [_eval_table(r)]
    if kind == "judge":
        return summary_view(r)
    if kind == "export":
        return [escape(line) for line in r["lines"]]
    if kind == "serve":
        return [f"serve it: [bold]{escape(r['command'])}[/]"]
    shown = {k: v for k, v in r.items() if isinstance(v, int | float | str) and not isinstance(v, bool)}
    return [escape(", ".join(f"{k} {v}" for k, v in list(shown.items())[:10]))]


def event_view(e: StageEvent) -> list[Any]:
    head = f"{e.index}/{e.total} {e.stage.name} ({e.stage.kind})"
    if e.event == "start":
        return [Rule(f"[bold]{escape(head)}"), *([f"[dim]{escape(e.note)}[/]"] if e.note else [])]
    if e.event == "skip":
        return [f"[dim]{escape(head)}: skipped, {escape(e.note)}[/]"]
    if e.event == "failed":
        return [f"[red]{escape(head)} failed after {format_duration(e.elapsed_s)}[/]"]
    done = f"[dim]{escape(head)} done in {format_duration(e.elapsed_s)}[/]"
    return [*result_view(e.stage.kind, e.result or {}), done]


def plan_table(plans: list[StagePlan], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("#", "stage", "kind", "action", "time (est.)", "cost (est.)", "from"):
        table.add_column(col, justify="right" if col in ("#", "time (est.)", "cost (est.)") else "left")
    for i, p in enumerate(plans, 1):
        bound = "≤ " if "limit" in p.basis or "budget" in p.basis else ""
        seconds = "-" if p.seconds is None else bound + format_duration(p.seconds)
        usd = "-" if p.usd is None else bound + f"${p.usd:.2f}"
        table.add_row(str(i), p.stage.name, p.stage.kind, p.action, seconds, usd, p.basis)
    active = [p for p in plans if p.action != "not selected"]
    more_time = "+" if any(p.seconds is None for p in active) else ""
    more_cost = "+" if any(p.usd is None for p in active) else ""
    table.add_row("", "[bold]all[/]", "", "", format_duration(sum(p.seconds or 0 for p in active)) + more_time,
                  f"${sum(p.usd or 0 for p in active):.2f}{more_cost}",
                  "estimates; '-' cannot be known before the stage runs")
    return table
