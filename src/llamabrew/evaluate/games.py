"""A game: one comparison of two models' answers to one turn of one question, by a judge or a person.

Judge verdicts (`judge`), human votes (`arena`) and the leaderboard all speak in games, so ratings and
judge–human agreement are computed the same way whoever gave the verdict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

WINNERS = ("a", "b", "tie")


@dataclass(frozen=True)
class Game:
    question_id: int | str
    turn: int  # 1-based
    model_a: str
    model_b: str
    winner: str  # "a" (model_a's answer is better), "b", or "tie" (also: both bad, or a judge that flipped)
    source: str = "judge"  # "judge" or "human"
    rater: str = ""  # the judge model, or the person's name (may be empty)
    category: str = ""

    def __post_init__(self) -> None:
        if self.winner not in WINNERS:
            raise ValueError(f"winner must be one of {WINNERS}, not {self.winner!r}")

    def score_a(self) -> float:
        """model_a's share of the game: 1 for a win, ½ for a tie, 0 for a loss."""
        return {"a": 1.0, "b": 0.0, "tie": 0.5}[self.winner]

    def item(self) -> tuple[str, int, frozenset[str]]:
        """What was compared, whatever the order shown: the same item from a judge and a person can be matched."""
        return (str(self.question_id), self.turn, frozenset((self.model_a, self.model_b)))

    def winner_model(self) -> str | None:
        return {"a": self.model_a, "b": self.model_b}.get(self.winner)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
