"""Games as preference pairs for preference tuning: the winner's answer is chosen, the loser's rejected.

Judge verdicts (`llamabrew judge --pairs`) and arena votes (`llamabrew arena export`) both go through here.
Ties (and both-bad votes) say nothing about which answer is better and are left out; so are second-turn games,
whose two answers follow two different first answers and so answer no one prompt.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from llamabrew.data.formats import Message
from llamabrew.data.preference import PreferencePair
from llamabrew.evaluate.games import Game
from llamabrew.evaluate.questions import Answer, Question

SECOND_TURN = "second turn (answers follow different histories)"


def pairs_from_games(games: Iterable[Game], questions: list[Question],
                     answers: dict[str, dict[int | str, Answer]]) -> tuple[list[PreferencePair], Counter[str]]:
    """(pairs, skipped: reason → count) from decided first-turn games whose answers are in ``answers``."""
    by_id = {str(q.question_id): q for q in questions}
    pairs: list[PreferencePair] = []
    skipped: Counter[str] = Counter()
    for g in games:
        q = by_id.get(str(g.question_id))
        winner = g.winner_model()
        if winner is None:
            skipped["tie or both bad"] += 1
        elif g.turn != 1:
            skipped[SECOND_TURN] += 1
        elif q is None or any(q.question_id not in answers.get(m, {}) for m in (g.model_a, g.model_b)):
            skipped["question or model not in the given files"] += 1
        else:
            loser = g.model_b if winner == g.model_a else g.model_a
            pairs.append(PreferencePair((Message("user", q.turns[0]),), answers[winner][q.question_id].turns[0],
                                        answers[loser][q.question_id].turns[0],
                                        source=f"{g.source}:{g.rater}:{q.question_id}"))
    return pairs, skipped
