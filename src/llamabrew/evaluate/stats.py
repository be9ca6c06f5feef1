"""The arithmetic of "is B better than A": win rates with bootstrap intervals, a length-controlled win rate,
Bradley–Terry ratings, and how often a judge agrees with people.

Conventions: a pairwise comparison's *candidate* is model B and its *reference* model A (``--a base --b
tuned``): wins are B's wins. ``win_rate`` = W/(W+L+T), ``win_rate_adjusted`` = (W + T/2)/(W+L+T); games whose
verdict is an error are left out. Bootstrap intervals resample questions (a question's turns go together) with
a fixed seed, so a report is reproducible.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llamabrew.evaluate.games import Game

BOOTSTRAP_ROUNDS = 1000
ELO_BASE, ELO_SCALE = 1000.0, 400.0


@dataclass
class Tally:
    wins: int = 0
    ties: int = 0
    losses: int = 0

    @property
    def games(self) -> int:
        return self.wins + self.ties + self.losses

    def add(self, score_b: float) -> None:
        if score_b == 1.0:
            self.wins += 1
        elif score_b == 0.0:
            self.losses += 1
        else:
            self.ties += 1

    def rates(self) -> dict[str, float | None]:
        n = self.games
        return {"win_rate": self.wins / n if n else None,
                "win_rate_adjusted": (self.wins + self.ties / 2) / n if n else None}


def adjusted(scores: Sequence[float]) -> float:
    return float(np.mean(scores)) if len(scores) else float("nan")


def bootstrap_ci(groups: Sequence[Sequence[float]], rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0,
                 ) -> tuple[float, float] | None:
    """95% percentile interval of the mean score, resampling whole groups (questions) with replacement."""
    groups = [g for g in groups if len(g)]
    if not groups:
        return None
    rng = np.random.default_rng(seed)
    sums = np.array([sum(g) for g in groups], dtype=float)
    counts = np.array([len(g) for g in groups], dtype=float)
    picks = rng.integers(0, len(groups), size=(rounds, len(groups)))
    means = sums[picks].sum(1) / counts[picks].sum(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def length_controlled(scores: Sequence[float], length_diff: Sequence[float], l2: float = 1e-3) -> float | None:
    """AlpacaEval 2's idea: fit P(B wins) = σ(θ₀ + θ₁·z), z the standardised (B − A) answer-length difference
    (ties as ½-targets), and read it at z = 0 — the win rate had both answered at the same length."""
    y = np.asarray(scores, dtype=float)
    d = np.asarray(length_diff, dtype=float)
    if len(y) == 0:
        return None
    sd = d.std()
    z = d / sd if sd > 0 else np.zeros_like(d)  # scaled, not centred: z = 0 is *equal* length
    x = np.stack([np.ones_like(z), z], 1)
    theta = np.zeros(2)
    for _ in range(100):  # Newton's method on the (slightly ridged) logistic log-likelihood
        p = 1 / (1 + np.exp(-x @ theta))
        grad = x.T @ (y - p) - l2 * theta
        hess = -(x.T * (p * (1 - p))) @ x - l2 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(1 / (1 + math.exp(-theta[0])))


def bradley_terry(games: Iterable[Game], eps: float = 1e-3, iters: int = 10_000) -> dict[str, float]:
    """Ratings on the Elo scale (mean 1000; 400 points = 10:1 odds) by the MM algorithm (Hunter 2004). A tie is
    half a win to each side; ``eps`` pseudo-wins per game played keep an unbeaten model's rating finite."""
    wins: dict[str, float] = defaultdict(float)
    pair: dict[tuple[str, str], float] = defaultdict(float)
    for g in games:
        a, b = g.model_a, g.model_b
        wins[a] += g.score_a() + eps
        wins[b] += 1 - g.score_a() + eps
        pair[(a, b)] += 1 + 2 * eps
        pair[(b, a)] += 1 + 2 * eps
    models = sorted(wins)
    if not models:
        return {}
    strength = dict.fromkeys(models, 1.0)
    for _ in range(iters):
        new = {}
        for i in models:
            denom = sum(n / (strength[i] + strength[j]) for (x, j), n in pair.items() if x == i)
            new[i] = wins[i] / denom
        mean_log = sum(math.log(v) for v in new.values()) / len(new)
        new = {k: v / math.exp(mean_log) for k, v in new.items()}
        delta = max(abs(math.log(new[k] / strength[k])) for k in models)
        strength = new
        if delta < 1e-10:
            break
    return {m: ELO_BASE + ELO_SCALE * math.log10(strength[m]) for m in models}


def rating_table(games: Sequence[Game], rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> list[dict[str, Any]]:
    """Bradley–Terry ratings with 95% bootstrap intervals (games resampled) and ranks: a model's rank is 1 + the
    number of models whose interval lies wholly above its own (Chatbot Arena's reading of overlapping CIs)."""
    ratings = bradley_terry(games)
    if not ratings:
        return []
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        picked = [games[i] for i in rng.integers(0, len(games), size=len(games))]
        for m, r in bradley_terry(picked, iters=500).items():
            samples[m].append(r)
    ci = {m: tuple(float(x) for x in np.percentile(samples[m], [2.5, 97.5])) if samples[m] else (None, None)
          for m in ratings}
    played: dict[str, Tally] = defaultdict(Tally)
    for g in games:
        played[g.model_a].add(g.score_a())
        played[g.model_b].add(1 - g.score_a())
    rows = []
    for m in sorted(ratings, key=ratings.get, reverse=True):  # type: ignore[arg-type]
        above = sum(1 for o in ratings if o != m and ci[o][0] is not None and ci[m][1] is not None
                    and ci[o][0] > ci[m][1])
        rows.append({"model": m, "rating": ratings[m], "ci95": list(ci[m]), "rank": 1 + above,
                     "games": played[m].games, **played[m].rates()})
    return rows


def agreement(judge: Sequence[Game], human: Sequence[Game]) -> dict[str, Any]:
    """MT-bench's measure: each human vote against the judge's verdict on the same item (question, turn, pair
    of models, whatever order each was shown in). With ties: the same of {model, model, tie}; without ties:
    only items where both chose a model."""
    verdicts: dict[tuple[str, int, frozenset[str]], str | None] = {}
    for g in judge:
        verdicts[g.item()] = g.winner_model()
    pairs = [(verdicts[h.item()], h.winner_model()) for h in human if h.item() in verdicts]
    decided = [(j, h) for j, h in pairs if j is not None and h is not None]
    return {"items": len(pairs),
            "with_ties": sum(j == h for j, h in pairs) / len(pairs) if pairs else None,
            "without_ties_items": len(decided),
            "without_ties": sum(j == h for j, h in decided) / len(decided) if decided else None}
