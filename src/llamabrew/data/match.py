"""Matching an answer against the expected one: exact and contains-match on normalised text.

Shared by evaluation's scorers (`evaluate.scores`) and by online RL's built-in rewards (`train.rewards`), so a
reward and the score it is meant to raise cannot disagree.
"""

from __future__ import annotations

import re
import string

_TRAILING = re.compile(rf"[\s{re.escape(string.punctuation)}]+$")


def normalize(text: str) -> str:
    """Trim, lower-case, collapse spaces and drop trailing punctuation, so 'Teal.' matches 'teal'."""
    return _TRAILING.sub("", " ".join(text.strip().lower().split()))


def exact_match(prediction: str, expected: str) -> bool:
    return normalize(prediction) == normalize(expected)


def contains_match(prediction: str, expected: str) -> bool:
    target = normalize(expected)
    return bool(target) and target in normalize(prediction)
