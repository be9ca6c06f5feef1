"""The aggregation math against numbers worked out by hand: games from both orders, win rates, bootstrap bounds,
the length-controlled win rate, Bradley–Terry ratings and judge–human agreement."""

from __future__ import annotations

import math

import pytest

from llamabrew.evaluate.games import Game
from llamabrew.evaluate.judge_report import pairwise_games
from llamabrew.evaluate.stats import agreement, bootstrap_ci, bradley_terry, length_controlled, rating_table


def verdict(qid: int, order: str, v: str | None, turn: int = 1) -> dict:
    return {"key": f"{qid}{order}{turn}", "mode": "pairwise", "question_id": qid, "turn": turn, "order": order,
            "verdict": v, "model_a": "base", "model_b": "tuned", "judge": "j", "category": "c"}


def test_games_from_both_orders():
    records = [verdict(1, "AB", "B"), verdict(1, "BA", "A"),  # tuned wins in both orders
               verdict(2, "AB", "A"), verdict(2, "BA", "B"),  # base wins in both orders
               verdict(3, "AB", "A"), verdict(3, "BA", "A"),  # the first shown wins twice: flipped → tie
               verdict(4, "AB", "C"), verdict(4, "BA", "C"),  # a tie twice
               verdict(5, "AB", "C"), verdict(5, "BA", "A"),  # tie one way, tuned the other: flipped → tie
               verdict(6, "AB", None), verdict(6, "BA", "A"),  # an error: left out
               verdict(7, "AB", "B")]  # one order still missing: not counted yet
    games, errors = pairwise_games(records)
    by_q = {g.question_id: (g.winner, flipped) for g, flipped in games}
    assert by_q == {1: ("b", False), 2: ("a", False), 3: ("tie", True), 4: ("tie", False), 5: ("tie", True)}
    assert errors == 1


def test_bootstrap_interval_by_hand():
    # two questions, one won (1) and one lost (0): a resample of two is (0,0), (0,1), (1,0) or (1,1) → the
    # mean is 0, ½ or 1 with chances ¼, ½, ¼: the 2.5% and 97.5% points are 0 and 1
    assert bootstrap_ci([[1.0], [0.0]], rounds=4000) == (0.0, 1.0)
    assert bootstrap_ci([[0.5, 0.5], [0.5]]) == (0.5, 0.5)  # nothing varies
    lo, hi = bootstrap_ci([[1.0]] * 30 + [[0.0]] * 10, seed=1)
    assert lo < 0.75 < hi and hi - lo < 0.35 and bootstrap_ci([[1.0]] * 30 + [[0.0]] * 10, seed=1) == (lo, hi)


def test_length_controlled_win_rate():
    assert length_controlled([1, 0, 0.5, 1], [0, 0, 0, 0]) == pytest.approx(0.625, abs=1e-3)  # = (2 + ½) / 4
    # B wins exactly when its answer is longer, and loses when shorter: at equal length that is a coin toss
    longer_wins = [1.0] * 20 + [0.0] * 20
    diff = [30.0 + i for i in range(20)] + [-30.0 - i for i in range(20)]
    assert length_controlled(longer_wins, diff) == pytest.approx(0.5, abs=0.02)
    # mostly wins while being longer: the controlled rate is below the raw 75%
    scores = [1.0] * 30 + [0.0] * 10
    diff = [40.0] * 25 + [0.0] * 5 + [40.0] * 5 + [0.0] * 5
    assert length_controlled(scores, diff) < 0.75


def test_bradley_terry_by_hand():
    games = [Game(q, 1, "a", "b", w) for q, w in enumerate("aaab")]  # a wins 3 of 4 → odds 3:1
    r = bradley_terry(games)
    assert r["a"] - r["b"] == pytest.approx(400 * math.log10(3), abs=0.5)  # 190.8
    assert (r["a"] + r["b"]) / 2 == pytest.approx(1000)
    ties = [Game(1, 1, "a", "b", "tie"), Game(2, 1, "a", "b", "a")]  # 1.5 : 0.5 → odds 3:1 again
    assert bradley_terry(ties)["a"] - bradley_terry(ties)["b"] == pytest.approx(190.8, abs=0.5)
    cycle = [Game(1, 1, "x", "y", "a"), Game(2, 1, "y", "z", "a"), Game(3, 1, "z", "x", "a")]
    assert all(v == pytest.approx(1000) for v in bradley_terry(cycle).values())
    # three models on a line: x beats y 2:1 and y beats z 2:1 (and x–z unplayed) → x−y = y−z = 400·log10 2
    line = [Game(i, 1, "x", "y", w) for i, w in enumerate("aab")] + [Game(i, 1, "y", "z", w)
                                                                      for i, w in enumerate("aab")]
    r = bradley_terry(line)
    assert r["x"] - r["y"] == pytest.approx(400 * math.log10(2), abs=0.5)
    assert r["y"] - r["z"] == pytest.approx(400 * math.log10(2), abs=0.5)


def test_rating_table_ranks_and_intervals():
    games = ([Game(i, 1, "strong", "weak", "a") for i in range(40)]
             + [Game(i, 1, "strong", "mid", "a" if i % 4 else "b") for i in range(40)]
             + [Game(i, 1, "mid", "weak", "a" if i % 3 else "tie") for i in range(40)])
    rows = rating_table(games, rounds=200)
    assert [r["model"] for r in rows] == ["strong", "mid", "weak"]
    for r in rows:
        assert r["ci95"][0] <= r["rating"] <= r["ci95"][1]
    assert rows[0]["rank"] == 1 and rows[2]["rank"] == 3 and rows[0]["games"] == 80


def test_agreement_with_and_without_ties_by_hand():
    judge = [Game(1, 1, "p", "q", "a"), Game(2, 1, "p", "q", "tie"), Game(3, 1, "p", "q", "b")]
    human = [Game(1, 1, "q", "p", "b", "human"),  # shown the other way round: p again → agrees
             Game(1, 1, "p", "q", "b", "human"),  # q: disagrees
             Game(2, 1, "p", "q", "tie", "human"),  # tie and tie: agrees (with ties only)
             Game(3, 1, "p", "q", "a", "human"),  # disagrees
             Game(9, 1, "p", "q", "a", "human")]  # no judge verdict on this item: not counted
    a = agreement(judge, human)
    assert a["items"] == 4 and a["with_ties"] == pytest.approx(2 / 4)
    assert a["without_ties_items"] == 3 and a["without_ties"] == pytest.approx(1 / 3)
