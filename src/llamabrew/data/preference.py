"""Preference data: ``prompt`` / ``chosen`` / ``rejected`` pairs (plain text or message lists, optional
``margin``), and prompt-only rows for online RL (``prompt``, optional ``reference``).

The layouts are TRL's, so its datasets work unchanged: a prompt is a string or a list of chat messages ending with
a user turn; a completion is a string or a list holding one assistant message. Pairs come from files, from
arena votes (`evaluate.votes`), from judge verdicts (`pairs_from_verdicts`) or OpenAssistant trees (`convert`).
Every problem names the file, the line and the field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamabrew.data.formats import Example, Message, read_records
from llamabrew.errors import InputError

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class PreferencePair:
    prompt: tuple[Message, ...]  # ends with a user turn
    chosen: str
    rejected: str
    margin: float | None = None  # how much better chosen is (a reward model's Bradley–Terry loss uses it)
    source: str = ""

    def example(self, completion: str) -> Example:
        """The prompt answered with ``completion``, as an instruction example the templates render."""
        return Example([*self.prompt, Message("assistant", completion)], self.source)

    def as_dict(self) -> dict[str, Any]:
        prompt: str | list[dict[str, str]] = (self.prompt[0].content if len(self.prompt) == 1 else
                                              [m.as_dict() for m in self.prompt])
        out: dict[str, Any] = {"prompt": prompt, "chosen": self.chosen, "rejected": self.rejected}
        return out if self.margin is None else {**out, "margin": self.margin}


@dataclass(frozen=True)
class Prompt:
    """A prompt for online RL: completions are sampled from the policy and scored (by ``reference`` or a
    reward function that also sees the whole row)."""

    messages: tuple[Message, ...]
    reference: str | None = None
    row: dict[str, Any] | None = None
    source: str = ""


def _prompt(value: Any, where: dict[str, Any]) -> tuple[Message, ...]:
    if isinstance(value, str):
        if not value.strip():
            raise InputError("empty prompt", field="prompt", **where)
        return (Message("user", value),)
    if not isinstance(value, list) or not value:
        raise InputError("expected a string or a list of {\"role\", \"content\"} messages", field="prompt", **where)
    out = []
    for i, m in enumerate(value):
        if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
            raise InputError(f"message {i}: expected {{\"role\": system|user|assistant, \"content\": text}}",
                             field="prompt", **where)
        out.append(Message(m["role"], m["content"]))
    if out[-1].role != "user":
        raise InputError("the prompt must end with a user message", field="prompt", **where)
    return tuple(out)


def _completion(value: Any, name: str, where: dict[str, Any]) -> str:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        if value[0].get("role") != "assistant":
            raise InputError("expected one assistant message", field=name, **where)
        value = value[0].get("content")
    if not isinstance(value, str) or not value.strip():
        raise InputError("expected a non-empty string (or one assistant message)", field=name, **where)
    return value


def parse_pair(rec: dict[str, Any], where: dict[str, Any]) -> PreferencePair:
    for name in ("prompt", "chosen", "rejected"):
        if name not in rec:
            raise InputError("missing", field=name, **where)
    chosen, rejected = _completion(rec["chosen"], "chosen", where), _completion(rec["rejected"], "rejected", where)
    if chosen.strip() == rejected.strip():
        raise InputError("chosen and rejected are the same text: the pair prefers nothing", field="rejected", **where)
    margin = rec.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, int | float)
                               or not math.isfinite(margin)):
        raise InputError("expected a number", field="margin", **where)
    source = f"{where['file']}:{where['line'] or where['record']}"
    return PreferencePair(_prompt(rec["prompt"], where), chosen, rejected,
                          None if margin is None else float(margin), source)


def load_pairs(path: str | Path) -> list[PreferencePair]:
    """Preference pairs from a JSON list or JSONL file; the first bad record stops with file, line and field."""
    pairs = [parse_pair(rec, {"file": path, "line": line, "record": index})
             for rec, line, index in read_records(path)]
    if not pairs:
        raise InputError("no preference pairs", file=path)
    return pairs


def load_prompts(path: str | Path) -> list[Prompt]:
    """Prompt-only rows for online RL: ``prompt`` (text or messages), optional ``reference`` (text)."""
    out = []
    for rec, line, index in read_records(path):
        where = {"file": path, "line": line, "record": index}
        if "prompt" not in rec:
            raise InputError("missing", field="prompt", **where)
        ref = rec.get("reference")
        if ref is not None and not isinstance(ref, str):
            raise InputError("expected a string", field="reference", **where)
        out.append(Prompt(_prompt(rec["prompt"], where), ref, rec, f"{path}:{line or index}"))
    if not out:
        raise InputError("no prompts", file=path)
    return out


def write_pairs(path: str | Path, pairs: list[PreferencePair]) -> None:
    from llamabrew.io import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(p.as_dict(), ensure_ascii=False) + "\n" for p in pairs))
