"""Verdicts → the numbers a person reads: wins/ties/losses of B against A (an order-flipped verdict is a tie,
counted as inconsistent too), adjusted win rate with a bootstrap interval, per category, verbosity next to the
verdict and a length-controlled win rate; for single grades, mean scores and Vicuna's relative score."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from llamabrew.evaluate.games import Game
from llamabrew.evaluate.questions import Answer, Question
from llamabrew.evaluate.stats import Tally, bootstrap_ci, length_controlled

AnswerSets = dict[str, dict[int | str, Answer]]
_AS_A = {"AB": {"A": "a", "B": "b", "C": "tie"}, "BA": {"A": "b", "B": "a", "C": "tie"}}


def pairwise_games(verdicts: list[dict[str, Any]]) -> tuple[list[tuple[Game, bool]], int]:
    """One game per (question, turn) judged in both orders, with whether the two orders disagreed; and how
    many games had an error verdict (left out). A game still missing an order is not counted yet."""
    by_item: dict[tuple[str, int], dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in verdicts:
        if r["mode"] == "pairwise":
            by_item[(str(r["question_id"]), r["turn"])][r["order"]] = r
    games, errors = [], 0
    for orders in by_item.values():
        if set(orders) != set(_AS_A):
            continue
        first, second = orders["AB"], orders["BA"]
        if first["verdict"] is None or second["verdict"] is None:
            errors += 1
            continue
        w1, w2 = _AS_A["AB"][first["verdict"]], _AS_A["BA"][second["verdict"]]
        games.append((Game(first["question_id"], first["turn"], first["model_a"], first["model_b"],
                           w1 if w1 == w2 else "tie", "judge", first["judge"], first.get("category", "")),
                      w1 != w2))
    return games, errors


def _words(answers: AnswerSets, model: str, qid: int | str, turn: int) -> int:
    return len(answers[model][qid].turns[turn - 1].split())


def mean_words(questions: list[Question], answers: AnswerSets, model: str) -> float:
    counts = [len(t.split()) for q in questions for t in answers[model][q.question_id].turns[: len(q.turns)]]
    return sum(counts) / len(counts) if counts else 0.0


def pairwise_summary(verdicts: list[dict[str, Any]], questions: list[Question], answers: AnswerSets,
                     model_a: str, model_b: str, seed: int = 0) -> dict[str, Any]:
    games, errors = pairwise_games(verdicts)
    total, by_cat = Tally(), defaultdict(Tally)
    per_question: dict[str, list[float]] = defaultdict(list)
    scores, length_diff = [], []
    for game, _ in games:
        score_b = 1 - game.score_a()
        total.add(score_b)
        by_cat[game.category].add(score_b)
        per_question[str(game.question_id)].append(score_b)
        scores.append(score_b)
        length_diff.append(_words(answers, model_b, game.question_id, game.turn)
                           - _words(answers, model_a, game.question_id, game.turn))
    ci = bootstrap_ci(list(per_question.values()), seed=seed)
    return {
        "mode": "pairwise", "model_a": model_a, "model_b": model_b, "games": total.games, "wins": total.wins,
        "ties": total.ties, "losses": total.losses, "inconsistent": sum(flipped for _, flipped in games),
        "errors": errors, **total.rates(), "ci95": list(ci) if ci else None,
        "length_controlled_win_rate": length_controlled(scores, length_diff),
        "mean_words": {model_a: mean_words(questions, answers, model_a),
                       model_b: mean_words(questions, answers, model_b)},
        "by_category": {c: {"games": t.games, "wins": t.wins, "ties": t.ties, "losses": t.losses, **t.rates()}
                        for c, t in sorted(by_cat.items())},
    }


def single_summary(verdicts: list[dict[str, Any]], questions: list[Question], answers: AnswerSets,
                   model_a: str, model_b: str) -> dict[str, Any]:
    """Mean 1–10 grade per model over the turns both were graded on; relative score = B's total as a
    percentage of A's (Vicuna's measure)."""
    grades: dict[tuple[str, int], dict[str, float | None]] = defaultdict(dict)
    category: dict[tuple[str, int], str] = {}
    for r in verdicts:
        if r["mode"] == "single":
            grades[(str(r["question_id"]), r["turn"])][r["model"]] = r["score"]
            category[(str(r["question_id"]), r["turn"])] = r.get("category", "")
    both = {k: g for k, g in grades.items() if g.get(model_a) is not None and g.get(model_b) is not None}
    errors = sum(1 for g in grades.values() for v in g.values() if v is None)
    sums = {m: sum(g[m] for g in both.values()) for m in (model_a, model_b)}  # type: ignore[misc]
    by_cat: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for k, g in both.items():
        for m in (model_a, model_b):
            by_cat[category[k]][m].append(g[m])  # type: ignore[arg-type]
    n = len(both)
    return {
        "mode": "single", "model_a": model_a, "model_b": model_b, "graded": n, "errors": errors,
        "mean_score": {m: sums[m] / n if n else None for m in (model_a, model_b)},
        "relative_score": 100 * sums[model_b] / sums[model_a] if n and sums[model_a] else None,
        "mean_words": {model_a: mean_words(questions, answers, model_a),
                       model_b: mean_words(questions, answers, model_b)},
        "by_category": {c: {m: sum(v) / len(v) for m, v in d.items()} for c, d in sorted(by_cat.items())},
    }


def fmt(x: float | None, pct: bool = True) -> str:
    return "-" if x is None else f"{x:.1%}" if pct else f"{x:.2f}"


def summary_view(s: dict[str, Any]) -> list[Any]:
    """What a person reads: a headline, the table (pairwise) and the verbosity / length-controlled line."""
    from rich.table import Table

    parts: list[Any] = []
    a, b = s["model_a"], s["model_b"]
    usage = s["usage"]
    cost = f", ${usage['cost_usd']:.4f}" if usage.get("cost_usd") else ""
    parts.append(f"[bold]{b}[/] (B) against [bold]{a}[/] (A), judged by {s['judge']} on {s['questions']} questions"
                 f" · {usage['requests']} requests, {usage['prompt_tokens'] + usage['completion_tokens']:,} tokens"
                 f"{cost} · verdicts in {s['verdicts']}")
    if s["mode"] == "pairwise":
        table = Table(title=f"pairwise, both orders: B's wins / ties / losses (ties include {s['inconsistent']} "
                            f"order-flipped verdicts; {s['errors']} errors left out)")
        for col in ("category", "games", "wins", "ties", "losses", "win rate", "adjusted (W+T/2)"):
            table.add_column(col, justify="left" if col == "category" else "right")
        for cat, c in s["by_category"].items():
            table.add_row(cat, str(c["games"]), str(c["wins"]), str(c["ties"]), str(c["losses"]),
                          fmt(c["win_rate"]), fmt(c["win_rate_adjusted"]))
        ci = s["ci95"]
        table.add_row("[bold]all[/]", str(s["games"]), str(s["wins"]), str(s["ties"]), str(s["losses"]),
                      fmt(s["win_rate"]), f"{fmt(s['win_rate_adjusted'])}"
                      + (f" [{ci[0]:.1%}, {ci[1]:.1%}]" if ci else ""))
        parts.append(table)
        parts.append(f"length-controlled win rate {fmt(s['length_controlled_win_rate'])} · mean words per "
                     f"answer: A {s['mean_words'][a]:.0f}, B {s['mean_words'][b]:.0f}")
    else:
        ms = s["mean_score"]
        parts.append(f"mean grade (1-10) over {s['graded']} turns: A {fmt(ms[a], False)}, B {fmt(ms[b], False)}"
                     f" · relative score (B as % of A) {fmt(s['relative_score'], False)}% · {s['errors']} errors"
                     f" · mean words A {s['mean_words'][a]:.0f}, B {s['mean_words'][b]:.0f}")
    return parts
