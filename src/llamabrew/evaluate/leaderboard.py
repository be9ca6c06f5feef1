"""`llamabrew leaderboard`: Bradley–Terry ratings of any number of models from judge verdicts and/or human
votes, and — where the same items have both — how often the judge agrees with the people."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llamabrew.errors import InputError
from llamabrew.evaluate.games import Game
from llamabrew.evaluate.judge import read_verdicts
from llamabrew.evaluate.judge_report import pairwise_games
from llamabrew.evaluate.stats import agreement, rating_table

DB_SUFFIXES = (".sqlite", ".sqlite3", ".db")


def load_games(paths: list[str | Path]) -> tuple[list[Game], list[Game]]:
    """(judge games, human games) from pairwise verdict files and arena vote databases."""
    judged: list[Game] = []
    human: list[Game] = []
    for p in map(Path, paths):
        if not p.is_file():
            raise InputError("no such file", file=p)
        if p.suffix in DB_SUFFIXES:
            from llamabrew.evaluate.votes import VoteStore

            human += VoteStore(p, create=False).games()
            continue
        records = read_verdicts(p)
        if records and all(r["mode"] == "single" for r in records):
            raise InputError("single-grade verdicts rank no pairs: judge with --mode pairwise", file=p)
        games, _errors = pairwise_games(records)
        judged += [g for g, _flipped in games]
    return judged, human


def leaderboard(paths: list[str | Path], seed: int = 0) -> dict[str, Any]:
    judged, human = load_games(paths)
    games = judged + human
    if not games:
        raise InputError("no games to rank (no decided pairwise verdicts or votes)", file=", ".join(map(str, paths)))
    return {"ratings": rating_table(games, seed=seed), "judge_games": len(judged), "human_games": len(human),
            "agreement": agreement(judged, human) if judged and human else None}
