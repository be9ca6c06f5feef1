"""An offline judge that needs no network: it grades by the question's reference answer.

It reads the judge prompts `judge_prompts` writes (their section markers are declared there once), and answers
as a model judge would — a short reason and a verdict token — so it runs through exactly the same path as an
HTTP judge: ``llamabrew judge --judge-url builtin:reference``. An answer is right when it contains the
reference (llamabrew's contains-match); pairwise, the right answer wins and two right or two wrong tie.
Useful where answers have one right value (the quickstart world's facts); an open question needs a real judge.
"""

from __future__ import annotations

from typing import Any

from llamabrew.data.teacher import Completion, Usage, estimate_tokens
from llamabrew.evaluate import judge_prompts as prompts
from llamabrew.evaluate.scores import contains_match

URL = "builtin:reference"


def _last_reply(dialogue: str) -> str:
    return dialogue.rsplit("Assistant: ", 1)[-1]


class ReferenceJudge:
    """A `JudgeBackend` that grades by reference; counts "tokens" like a server would, costs nothing."""

    name = "reference"

    def __init__(self, usage: Usage | None = None) -> None:
        self.usage = usage or Usage()

    async def __aenter__(self) -> ReferenceJudge:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def _answer(self, parts: dict[str, str], name: str) -> str | None:
        if (text := parts.get(prompts.ANSWER.format(name=name))) is not None:
            return text
        dialogue = parts.get(prompts.CONVERSATION.format(name=name))
        return _last_reply(dialogue) if dialogue is not None else None

    def reply(self, messages: list[dict[str, str]]) -> str:
        parts = prompts.sections(messages[-1]["content"])
        reference = parts.get(prompts.REFERENCE)
        if not reference:
            return "There is no reference answer to grade against."  # no verdict: recorded as an error
        a, b = self._answer(parts, "A"), self._answer(parts, "B")
        if b is None:  # single grading
            right = a is not None and contains_match(a, reference)
            return f"The answer {'contains' if right else 'lacks'} the reference.\nRating: [[{10 if right else 1}]]"
        ok_a, ok_b = contains_match(a or "", reference), contains_match(b, reference)
        verdict = "A" if ok_a and not ok_b else "B" if ok_b and not ok_a else "C"
        return f"Contains the reference: A {'yes' if ok_a else 'no'}, B {'yes' if ok_b else 'no'}.\n[[{verdict}]]"

    async def chat(self, messages: list[dict[str, str]], *, max_tokens: int | None = None,
                   temperature: float | None = None, **_: Any) -> Completion:
        text = self.reply(messages)
        prompt = sum(estimate_tokens(m["content"]) for m in messages)
        self.usage.requests += 1
        self.usage.prompt_tokens += prompt
        self.usage.completion_tokens += estimate_tokens(text)
        return Completion(text, "stop", prompt, estimate_tokens(text))
