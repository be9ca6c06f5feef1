"""`llamabrew leaderboard`: ratings from judge verdict files and an arena vote database together, and the
judge–human agreement on the items both judged, computed by hand here."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llamabrew.cli import app
from llamabrew.evaluate.votes import Item, VoteStore


def verdict_lines(pairs: list[tuple[int, str, str, str, str]]) -> str:
    """(question, model_a, model_b, verdict with A first, verdict with B first) → both orders' records."""
    rows = []
    for qid, a, b, v1, v2 in pairs:
        for order, v in (("AB", v1), ("BA", v2)):
            rows.append({"key": f"{qid}{a}{b}{order}", "mode": "pairwise", "question_id": qid, "turn": 1,
                         "model_a": a, "model_b": b, "order": order, "verdict": v, "judge": "j", "category": "c"})
    return "".join(json.dumps(r) + "\n" for r in rows)


def cast(store: VoteStore, qid: int, models: tuple[str, str], winner: str | None) -> None:
    """One human vote for ``winner`` (a model, or None for a tie), whichever side it was shown on."""
    shown = store.show([Item(qid, 1, "c")], models, rater=f"r{random.random()}")
    vote = "tie" if winner is None else "a" if shown.left == winner else "b"
    store.vote(shown.token, vote, "rater")


def test_judge_and_human_games_rank_together_with_agreement(tmp_path: Path):
    verdicts = tmp_path / "v.jsonl"
    # the judge: big beats small on q1..q6 (consistently), small beats big on q7 (consistently), q8 flips → tie
    verdicts.write_text(verdict_lines([(q, "small", "big", "B", "A") for q in range(1, 7)]
                                      + [(7, "small", "big", "A", "B"), (8, "small", "big", "A", "A")]))
    more = tmp_path / "v2.jsonl"  # and mid sits between: beats small, loses to big, on other questions
    more.write_text(verdict_lines([(q, "small", "mid", "B", "A") for q in range(10, 14)]
                                  + [(q, "mid", "big", "B", "A") for q in range(20, 24)]))
    store = VoteStore(tmp_path / "votes.sqlite", rng=random.Random(0))
    cast(store, 1, ("small", "big"), "big")  # agrees with the judge
    cast(store, 2, ("small", "big"), "small")  # disagrees
    cast(store, 7, ("small", "big"), "small")  # agrees
    cast(store, 8, ("small", "big"), None)  # tie with the judge's tie: agrees with ties only
    cast(store, 30, ("small", "big"), "big")  # no judge verdict here
    res = CliRunner().invoke(app, ["leaderboard", str(verdicts), str(more), str(tmp_path / "votes.sqlite"),
                                   "--json"])
    assert res.exit_code == 0, res.output
    board = json.loads(res.stdout.strip().splitlines()[-1])
    assert [r["model"] for r in board["ratings"]] == ["big", "mid", "small"]
    assert board["judge_games"] == 16 and board["human_games"] == 5
    agree = board["agreement"]
    assert agree["items"] == 4 and agree["with_ties"] == pytest.approx(3 / 4)
    assert agree["without_ties_items"] == 3 and agree["without_ties"] == pytest.approx(2 / 3)
    for row in board["ratings"]:
        assert row["ci95"][0] <= row["rating"] <= row["ci95"][1]

    text = CliRunner().invoke(app, ["leaderboard", str(verdicts), str(tmp_path / "votes.sqlite")])
    assert text.exit_code == 0 and "judge–human agreement: 75.0% with ties" in text.output


def test_bad_sources_are_one_line(tmp_path: Path):
    runner = CliRunner()
    res = runner.invoke(app, ["leaderboard", str(tmp_path / "missing.jsonl")])
    assert res.exit_code == 2 and "missing.jsonl: no such file" in res.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1}\n')
    res = runner.invoke(app, ["leaderboard", str(bad)])
    assert res.exit_code == 2 and "bad.jsonl:1: field 'mode'" in res.output
    single = tmp_path / "single.jsonl"
    single.write_text(json.dumps({"key": "k", "mode": "single", "question_id": 1, "turn": 1, "model": "m",
                                  "score": 5}) + "\n")
    res = runner.invoke(app, ["leaderboard", str(single)])
    assert res.exit_code == 2 and "judge with --mode pairwise" in res.output
    notdb = tmp_path / "x.sqlite"
    notdb.write_bytes(b"this is not sqlite" * 100)
    res = runner.invoke(app, ["leaderboard", str(notdb)])
    assert res.exit_code == 2 and "not a vote database" in res.output
    import sqlite3  # someone else's database: refused, and left as it was (no arena tables added)

    other = tmp_path / "shop.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE orders (id INTEGER)")
    before = other.read_bytes()
    res = runner.invoke(app, ["leaderboard", str(other)])
    assert res.exit_code == 2 and "no arena votes in it" in res.output and other.read_bytes() == before
