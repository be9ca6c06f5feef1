"""LLM-as-judge: two models' answers compared (each question in both orders) or graded one by one.

Any OpenAI-compatible judge (`data.teacher.Teacher`: retries on 429/5xx/timeouts, tokens and dollars counted,
a budget checked before each request) or the offline `reference_judge`. Verdicts are appended to a JSONL file
one at a time (flushed); each carries a key hashed from what the judge was shown, so a killed run resumes
without judging anything twice, and changed answers are judged afresh. A reply with no verdict, or with two
different ones, is asked once more and then recorded as an error: never guessed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from llamabrew.data.teacher import BudgetExhausted, Completion, Usage
from llamabrew.errors import InputError, LlamabrewError
from llamabrew.evaluate import judge_prompts as prompts
from llamabrew.evaluate.questions import Answer, Question, read_appended
from llamabrew.io import append_jsonl

log = logging.getLogger(__name__)
MODES = ("pairwise", "single")
PROMPT_VERSION = 1  # part of every verdict's key: rewording the prompts re-judges
ORDERS = ("AB", "BA")  # pairwise: model_a shown first, then model_b shown first


class JudgeBackend(Protocol):
    """`Teacher` or `ReferenceJudge`: entered with ``async with`` inside the loop that uses it."""

    usage: Usage

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def chat(self, messages: list[dict[str, str]], *, max_tokens: int | None = None,
                   temperature: float | None = None) -> Completion: ...


@dataclass(frozen=True)
class Task:
    """One judgment to ask for: a question's turn, in one order (pairwise) or for one model (single)."""

    key: str
    question: Question
    turn: int  # 0-based
    subject: str  # pairwise: "AB" / "BA"; single: the graded model's id
    messages: list[dict[str, str]]


@dataclass
class JudgeRun:
    verdicts: list[dict[str, Any]]  # every verdict of this comparison, earlier runs' included
    path: Path
    usage: Usage
    judged_now: int = 0
    stopped: str | None = None  # "budget" when the budget ran out before every task was judged
    pending: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _key(mode: str, judge: str, messages: list[dict[str, str]], subject: str) -> str:
    blob = json.dumps({"mode": mode, "judge": judge, "v": PROMPT_VERSION, "subject": subject, "messages": messages},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def check_answered(questions: list[Question], answers: dict[int | str, Answer], name: str) -> None:
    missing = [q.question_id for q in questions if q.question_id not in answers]
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (" …" if len(missing) > 5 else "")
        raise LlamabrewError(f"{name} has no answer to {len(missing)} of {len(questions)} questions (ids {shown}): "
                             "answer them first (`llamabrew answer` resumes)")
    short = [q.question_id for q in questions if len(answers[q.question_id].turns) < len(q.turns)]
    if short:
        raise LlamabrewError(f"{name} answers question {short[0]} with fewer turns than it has")


def plan(mode: str, judge: str, questions: list[Question], answers: dict[str, dict[int | str, Answer]],
         model_a: str, model_b: str, use_reference: bool = True) -> list[Task]:
    """Every judgment the comparison needs, in question order."""
    if mode not in MODES:
        raise LlamabrewError(f"unknown judge mode '{mode}': choose pairwise or single")
    tasks = []
    for q in questions:
        a, b = answers[model_a][q.question_id].turns, answers[model_b][q.question_id].turns
        for turn in range(len(q.turns)):
            if mode == "pairwise":
                for order, (first, second) in zip(ORDERS, ((a, b), (b, a)), strict=True):
                    msgs = prompts.pairwise_messages(q, turn, first, second, use_reference)
                    tasks.append(Task(_key(mode, judge, msgs, order), q, turn, order, msgs))
            else:
                for model, turns in ((model_a, a), (model_b, b)):
                    msgs = prompts.single_messages(q, turn, turns, use_reference)
                    tasks.append(Task(_key(mode, judge, msgs, model), q, turn, model, msgs))
    return tasks


def _record(mode: str, task: Task, judge: str, model_a: str, model_b: str, reply: str, value: Any,
            retried: bool) -> dict[str, Any]:
    rec: dict[str, Any] = {"key": task.key, "mode": mode, "question_id": task.question.question_id,
                           "category": task.question.category, "turn": task.turn + 1}
    if mode == "pairwise":
        rec |= {"model_a": model_a, "model_b": model_b, "order": task.subject, "verdict": value}
    else:
        rec |= {"model_a": model_a, "model_b": model_b, "model": task.subject, "score": value}
    return rec | {"judge": judge, "judgment": reply, "retried": retried, "tstamp": time.time()}


async def _ask(backend: JudgeBackend, mode: str, task: Task, max_tokens: int | None) -> tuple[str, Any, bool]:
    """The judge's reply and what it decided; one more try when it decided nothing readable."""
    parse: Callable[[str], Any] = prompts.parse_verdict if mode == "pairwise" else prompts.parse_rating
    reply = ""
    for attempt in range(2):
        reply = (await backend.chat(task.messages, max_tokens=max_tokens, temperature=0.0)).text
        value = parse(reply)
        if value is not None:
            return reply, value, attempt > 0
    log.warning("question %s turn %d: the judge gave no readable verdict twice; counted as an error",
                task.question.question_id, task.turn + 1)
    return reply, None, True


async def _judge_tasks(backend: JudgeBackend, tasks: list[Task], *, mode: str, judge: str, model_a: str,
                       model_b: str, out: Path, concurrency: int, max_tokens: int | None,
                       advance: Callable[[int], None] | None) -> tuple[int, str | None]:
    """Workers pull tasks (so the budget reserves only for requests in flight); each verdict is appended as it
    arrives. Returns (judged, "budget" if the budget stopped it). Other failures stop new requests, let those in
    flight land, then raise."""
    queue = list(reversed(tasks))
    judged, stopped, failure = 0, None, None

    async def worker() -> None:
        nonlocal judged, stopped, failure
        while queue and stopped is None and failure is None:
            task = queue.pop()
            try:
                reply, value, retried = await _ask(backend, mode, task, max_tokens)
            except BudgetExhausted:
                stopped = "budget"
                return
            except Exception as e:  # noqa: BLE001 - re-raised below, after the others land
                failure = failure or e
                return
            append_jsonl(out, _record(mode, task, judge, model_a, model_b, reply, value, retried))
            judged += 1
            if advance:
                advance(1)

    async with backend:
        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    if failure is not None:
        raise failure
    return judged, stopped


def read_verdicts(path: Path) -> list[dict[str, Any]]:
    out = []
    for rec, line in read_appended(path):
        if rec.get("mode") not in MODES or not isinstance(rec.get("key"), str):
            raise InputError("not a llamabrew verdict (expected 'mode' pairwise/single and a 'key')", file=path,
                             line=line, field="mode")
        out.append(rec)
    return out


def judge_answers(backend: JudgeBackend, questions: list[Question], answers: dict[str, dict[int | str, Answer]],
                  model_a: str, model_b: str, out: str | Path, *, mode: str = "pairwise", judge: str = "judge",
                  use_reference: bool = True, concurrency: int = 4, max_tokens: int | None = None,
                  advance: Callable[[int], None] | None = None) -> JudgeRun:
    """Judge ``model_b`` against ``model_a`` on ``questions`` into the verdicts file ``out`` (resumed)."""
    if model_a == model_b:
        raise LlamabrewError(f"both answer files are of model '{model_a}': compare two different models")
    for name in (model_a, model_b):
        check_answered(questions, answers[name], name)
    out = Path(out)
    tasks = plan(mode, judge, questions, answers, model_a, model_b, use_reference)
    wanted = {t.key for t in tasks}
    earlier = [r for r in read_verdicts(out) if r["key"] in wanted]
    done = {r["key"] for r in earlier}
    todo = [t for t in tasks if t.key not in done]
    if advance and done:
        advance(len(done))
    judged, stopped = asyncio.run(_judge_tasks(
        backend, todo, mode=mode, judge=judge, model_a=model_a, model_b=model_b, out=out,
        concurrency=concurrency, max_tokens=max_tokens, advance=advance))
    verdicts = [r for r in read_verdicts(out) if r["key"] in wanted]
    return JudgeRun(verdicts, out, backend.usage, judged, stopped, len(tasks) - len({r["key"] for r in verdicts}))
