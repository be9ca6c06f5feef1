"""The arena's votes in SQLite: what each rater was shown (with the hidden left/right mapping) and what they voted.

The database is in WAL mode and every vote is its own transaction, so a server killed mid-vote loses no vote that
was committed. What a page needs to vote (its token, and which model sat on which side) lives in the database, not
in the server's memory: a page left open across a restart still votes, and a token votes once.
"""

from __future__ import annotations

import json
import random
import secrets
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamabrew.data.preference import write_pairs
from llamabrew.errors import LlamabrewError
from llamabrew.evaluate.games import Game
from llamabrew.evaluate.pairs import pairs_from_games
from llamabrew.evaluate.questions import Answer, Question
from llamabrew.evaluate.stats import bootstrap_ci

VOTES = ("a", "b", "tie", "both_bad")  # a: the left answer is better, b: the right one
PENDING_S = 600.0  # an item shown this recently and not yet voted counts as busy when spreading votes
BOOTSTRAP = 2000
CI_METHOD = f"95% bootstrap percentile interval over votes ({BOOTSTRAP} resamples, fixed seed 0)"
SCHEMA = """
CREATE TABLE IF NOT EXISTS shown (
    token TEXT PRIMARY KEY, question_id TEXT NOT NULL, turn INTEGER NOT NULL, category TEXT NOT NULL,
    left_model TEXT NOT NULL, right_model TEXT NOT NULL, rater TEXT NOT NULL, shown_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS shown_by_rater ON shown (rater);
CREATE TABLE IF NOT EXISTS votes (
    token TEXT PRIMARY KEY REFERENCES shown (token),
    vote TEXT NOT NULL CHECK (vote IN ('a', 'b', 'tie', 'both_bad')),
    rater TEXT NOT NULL, voted_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS votes_by_rater ON votes (rater);
"""


class VoteError(LlamabrewError):
    """A vote that cannot be counted; ``status`` is the HTTP status the arena answers it with."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True)
class Item:
    """One thing to vote on: a turn (1-based) of a question that both models answered."""

    question_id: int | str
    turn: int
    category: str = ""


@dataclass(frozen=True)
class Shown:
    token: str
    item: Item
    left: str  # the model whose answer is on the left ("a")
    right: str


@dataclass(frozen=True)
class Export:
    written: int
    skipped: dict[str, int]  # reason → count


def _key(qid: int | str) -> str:
    return json.dumps(qid)  # keeps 1 and "1" apart


class VoteStore:
    """An arena's votes. ``create=False`` opens an existing vote database to read it (the leaderboard): a file
    that is not one is refused untouched, never given the arena's tables."""

    def __init__(self, path: str | Path, rng: random.Random | None = None, create: bool = True) -> None:
        self.path, self.rng = Path(path), rng or random.Random()
        if not create:
            self._check_existing()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._db() as db:
                mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise LlamabrewError(f"{self.path}: not a vote database ({e})") from None
        if mode != "wal":
            raise LlamabrewError(f"{self.path}: SQLite would not use WAL mode here (got {mode})")

    def _check_existing(self) -> None:
        try:
            with closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)) as db:
                tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as e:
            raise LlamabrewError(f"{self.path}: not a vote database ({e})") from None
        if not {"shown", "votes"} <= tables:
            raise LlamabrewError(f"{self.path}: not a vote database (no arena votes in it)")

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A connection per call: requests run on several threads, and each commits on its own."""
        with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as db:
            db.execute("PRAGMA synchronous=FULL")
            yield db

    def show(self, items: list[Item], models: tuple[str, str], rater: str) -> Shown:
        """Pick the item with the fewest votes for this pair (then the fewest pending), at random among equals,
        never the one this rater saw (or voted on) last; put the two models on random sides; remember it all
        under a new token."""
        a, b = models
        with self._db() as db:
            rows = db.execute(
                "SELECT s.question_id, s.turn, COUNT(v.token), SUM(v.token IS NULL AND s.shown_at > ?) "
                "FROM shown s LEFT JOIN votes v USING (token) WHERE (left_model = ? AND right_model = ?) OR "
                "(left_model = ? AND right_model = ?) GROUP BY s.question_id, s.turn",
                (time.time() - PENDING_S, a, b, b, a)).fetchall()
            last = db.execute("SELECT question_id, turn FROM shown WHERE rater = ? OR token IN (SELECT token "
                              "FROM votes WHERE rater = ?) ORDER BY rowid DESC LIMIT 1", (rater, rater)).fetchone()
            load = {(q, t): (n, p) for q, t, n, p in rows}
            pool = [i for i in items if (_key(i.question_id), i.turn) != tuple(last or ())] or items
            least = min(load.get((_key(i.question_id), i.turn), (0, 0)) for i in pool)
            item = self.rng.choice([i for i in pool if load.get((_key(i.question_id), i.turn), (0, 0)) == least])
            left, right = (b, a) if self.rng.random() < 0.5 else (a, b)
            shown = Shown(secrets.token_urlsafe(18), item, left, right)
            db.execute("INSERT INTO shown VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (shown.token, _key(item.question_id), item.turn, item.category, left, right, rater,
                        time.time()))
        return shown

    def vote(self, token: str, vote: str, rater: str) -> Shown:
        """Record one vote in its own transaction; the shown item (now safe to reveal) comes back."""
        if vote not in VOTES:
            raise VoteError(f"vote must be one of {', '.join(VOTES)}", 422, "invalid_vote")
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT question_id, turn, category, left_model, right_model FROM shown "
                                 "WHERE token = ?", (token,)).fetchone()
                if row is None:
                    raise VoteError("unknown item token: load the next item", 404, "unknown_token")
                if db.execute("SELECT 1 FROM votes WHERE token = ?", (token,)).fetchone():
                    raise VoteError("this item has been voted on already (a vote counts once): load the next "
                                    "item", 409, "already_voted")
                db.execute("INSERT INTO votes VALUES (?, ?, ?, ?)", (token, vote, rater, time.time()))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        qid, turn, category, left, right = row
        return Shown(token, Item(json.loads(qid), turn, category), left, right)

    def _votes(self) -> list[tuple[Any, ...]]:
        with self._db() as db:
            return db.execute("SELECT s.question_id, s.turn, s.category, s.left_model, s.right_model, v.vote, "
                              "v.rater FROM votes v JOIN shown s USING (token) ORDER BY v.rowid").fetchall()

    def count(self) -> int:
        with self._db() as db:
            return db.execute("SELECT COUNT(*) FROM votes").fetchone()[0]

    def games(self) -> list[Game]:
        """Every vote as a `Game` (model_a/model_b as shown left/right; both bad counts as a tie)."""
        return [Game(json.loads(q), turn, left, right, "tie" if vote in ("tie", "both_bad") else vote, "human",
                     rater, category) for q, turn, category, left, right, vote, rater in self._votes()]

    def summary(self) -> list[dict[str, Any]]:
        """Per pair of models (alphabetical): wins, losses, ties, both bad, and the first model's win rate with
        ties (and both bad) as half a win, with a 95% interval (`CI_METHOD`)."""
        tally: dict[tuple[str, str], Counter[str]] = {}
        for _q, _t, _c, left, right, vote, _r in self._votes():
            pair = tuple(sorted((left, right)))
            won = {"a": left, "b": right}.get(vote)
            outcome = vote if won is None else ("win" if won == pair[0] else "loss")
            tally.setdefault(pair, Counter())[outcome] += 1  # type: ignore[index]
        out = []
        for (first, second), c in sorted(tally.items()):
            n, ties = c.total(), c["tie"] + c["both_bad"]
            each_vote = [[1.0]] * c["win"] + [[0.5]] * ties + [[0.0]] * c["loss"]
            low, high = bootstrap_ci(each_vote, BOOTSTRAP) or (0.0, 1.0)
            out.append({"model": first, "opponent": second, "votes": n, "wins": c["win"], "losses": c["loss"],
                        "ties": c["tie"], "both_bad": c["both_bad"], "win_rate": c["win"] / n,
                        "win_rate_adjusted": (c["win"] + ties / 2) / n, "ci_low": low, "ci_high": high})
        return out

    def export_pairs(self, questions: list[Question], answers: dict[str, dict[int | str, Answer]],
                     out: str | Path) -> Export:
        """Votes as DPO preference pairs ``{"prompt", "chosen", "rejected"}`` (the winner's answer is chosen),
        written atomically. Only first-turn votes: a second-turn answer follows its own model's first answer, so
        two second answers do not answer one prompt. Ties and both-bad say nothing of which is better."""
        pairs, skipped = pairs_from_games(self.games(), questions, answers)
        undecided = skipped.pop("tie or both bad", 0)
        both_bad = sum(1 for row in self._votes() if row[5] == "both_bad")
        skipped.update({"tie": undecided - both_bad, "both bad": both_bad})
        write_pairs(out, pairs)
        return Export(len(pairs), {why: n for why, n in skipped.items() if n})
