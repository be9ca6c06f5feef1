"""Open-ended questions and the answers models give them, in FastChat llm_judge's JSONL layouts.

Questions: ``{"question_id", "category", "turns": [...], "reference"?: [...]}``; answers: ``{"question_id",
"answer_id", "model_id", "choices": [{"index": 0, "turns": [...]}], "tstamp"}`` — so MT-bench's own files work
unchanged, and ours work in FastChat. llamabrew adds one key to an answer line, ``"llamabrew"``: the engine and
sampling settings that made it, so a file is only ever resumed with the settings it was started with.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llamabrew.data.formats import read_records
from llamabrew.engines import Engine, Sampling, answer_all, describe
from llamabrew.errors import InputError, LlamabrewError
from llamabrew.io import append_jsonl

BUILTIN_DIR = Path(__file__).with_name("question_sets")
BUILTIN_PREFIX = "builtin:"  # `--questions builtin:brew80`: a set shipped with llamabrew


@dataclass(frozen=True)
class Question:
    question_id: int | str
    category: str
    turns: tuple[str, ...]
    reference: tuple[str, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"question_id": self.question_id, "category": self.category, "turns": list(self.turns)}
        if self.reference is not None:
            d["reference"] = list(self.reference)
        return d


@dataclass(frozen=True)
class Answer:
    question_id: int | str
    model_id: str
    turns: tuple[str, ...]

    def words(self) -> int:
        return sum(len(t.split()) for t in self.turns)


def builtin_sets() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.jsonl"))


def resolve_questions(spec: str | Path) -> Path:
    """A question file path, or ``builtin:NAME`` for a set that ships with llamabrew."""
    text = str(spec)
    if not text.startswith(BUILTIN_PREFIX):
        return Path(spec)
    name = text[len(BUILTIN_PREFIX):]
    path = BUILTIN_DIR / f"{name}.jsonl"
    if name not in builtin_sets():
        raise LlamabrewError(f"no built-in question set '{name}': choose one of {', '.join(builtin_sets())}")
    return path


def _strings(rec: dict[str, Any], name: str, where: dict[str, Any], required: bool = True) -> tuple[str, ...] | None:
    value = rec.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
        raise InputError("expected a non-empty list of strings", field=name, **where)
    return tuple(value)


def _question_id(rec: dict[str, Any], where: dict[str, Any]) -> int | str:
    qid = rec.get("question_id")
    if isinstance(qid, bool) or not isinstance(qid, int | str) or qid == "":
        raise InputError("expected an integer or string id", field="question_id", **where)
    return qid


def load_questions(spec: str | Path) -> list[Question]:
    """Questions from a FastChat-layout file (or a built-in set), checked: one line naming file, line and field."""
    path = resolve_questions(spec)
    out: list[Question] = []
    seen: dict[int | str, int | None] = {}
    for rec, line, index in read_records(path):
        where = {"file": path, "line": line, "record": index}
        qid = _question_id(rec, where)
        if qid in seen:
            raise InputError(f"question_id {qid!r} repeats (first on line {seen[qid]})", field="question_id", **where)
        seen[qid] = line
        category = rec.get("category", "general")
        if not isinstance(category, str) or not category:
            raise InputError("expected a string", field="category", **where)
        turns = _strings(rec, "turns", where)
        assert turns is not None
        reference = _strings(rec, "reference", where, required=False)
        if reference is not None and len(reference) < len(turns):
            reference = reference + ("",) * (len(turns) - len(reference))  # MT-bench gives some a single one
        out.append(Question(qid, category, turns, reference))
    return out


def read_appended(path: Path) -> Iterator[tuple[dict[str, Any], int]]:
    """Records of a JSONL file llamabrew appends to: every line must parse, except a torn last one (a killed
    writer's), which is skipped; the next append cuts it off."""
    if not path.is_file():
        return
    lines = path.read_bytes().decode("utf-8", errors="replace").split("\n")
    last = max((n for n, text in enumerate(lines) if text.strip()), default=-1)
    for n, text in enumerate(lines):
        if not text.strip():
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as e:
            if n == last and not text.endswith("}"):
                return
            raise InputError(f"invalid JSON: {e.msg}", file=path, line=n + 1) from None
        if not isinstance(rec, dict):
            raise InputError(f"expected an object, got {type(rec).__name__}", file=path, line=n + 1)
        yield rec, n + 1


def parse_answer(rec: dict[str, Any], where: dict[str, Any]) -> Answer:
    qid = _question_id(rec, where)
    model_id = rec.get("model_id")
    if not isinstance(model_id, str) or not model_id:
        raise InputError("expected a string", field="model_id", **where)
    choices = rec.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise InputError("expected a list of {\"index\", \"turns\"} objects", field="choices", **where)
    turns = _strings(choices[0], "turns", where)
    assert turns is not None
    return Answer(qid, model_id, turns)


def load_answers(path: str | Path, questions: list[Question] | None = None) -> dict[int | str, Answer]:
    """One model's answers by question id. With ``questions``, an answer to an unknown question, or with fewer
    turns than its question, is an error on its line."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", file=path)
    known = {q.question_id: q for q in questions} if questions is not None else None
    out: dict[int | str, Answer] = {}
    models: set[str] = set()
    for rec, line in read_appended(path):
        where = {"file": path, "line": line}
        answer = parse_answer(rec, where)
        if known is not None:
            q = known.get(answer.question_id)
            if q is None:
                raise InputError(f"unknown question id {answer.question_id!r}", field="question_id", **where)
            if len(answer.turns) < len(q.turns):
                raise InputError(f"{len(answer.turns)} turns for a {len(q.turns)}-turn question",
                                 field="choices", **where)
        models.add(answer.model_id)
        out[answer.question_id] = answer
    if len(models) > 1:
        raise InputError(f"answers of several models ({', '.join(sorted(models))}): one file per model", file=path)
    if not out:
        raise InputError("no answers", file=path)
    return out


def model_id_of(model: str) -> str:
    """A readable name for the model a user names: a run or model directory, a GGUF, ``openai:URL#MODEL``."""
    if "#" in model and model.startswith("openai:"):
        return model.rsplit("#", 1)[1]
    p = Path(model.rstrip("/"))
    return p.stem if p.suffix == ".gguf" else (p.name or model)


def conversation(question: Question, answers: tuple[str, ...], turn: int) -> list[dict[str, str]]:
    """The messages that ask turn ``turn`` (0-based): earlier user turns with the model's own earlier answers."""
    messages: list[dict[str, str]] = []
    for k in range(turn):
        messages += [{"role": "user", "content": question.turns[k]}, {"role": "assistant", "content": answers[k]}]
    return messages + [{"role": "user", "content": question.turns[turn]}]


def _settings(engine: Engine, sampling: Sampling) -> dict[str, Any]:
    return {"engine": describe(engine), "template": engine.template.name, "sampling": asdict(sampling)}


def _difference(their_model: str, theirs: Any, model_id: str, settings: dict[str, Any]) -> str:
    """What differs between the answers in a file and the ones asked for, in a few words."""
    if their_model != model_id:
        return f"holds answers of model '{their_model}', not '{model_id}'"
    if not isinstance(theirs, dict):
        return "holds answers made elsewhere (no llamabrew settings)"
    def flat(d: dict[str, Any]) -> dict[str, Any]:
        return {**{k: v for k, v in d.items() if k != "sampling"}, **d.get("sampling", {})}

    old, new = flat(theirs), flat(settings)
    diff = [f"{k} {old.get(k)!r} (asked: {new.get(k)!r})" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]
    return "holds answers made with other settings: " + ", ".join(diff)


def answer_questions(engine: Engine, questions: list[Question], out: str | Path, sampling: Sampling, *,
                     model_id: str, batch_size: int = 16, advance: Callable[[int], None] | None = None,
                     ) -> dict[int | str, Answer]:
    """Answer every question (every turn, each after the model's own earlier answers) into ``out``, resuming:
    questions already answered there with the same engine and settings are kept, new lines appended and flushed
    one question at a time. ``batch_size`` conversations go at once through an engine that batches (`answer_all`)."""
    out = Path(out)
    settings = _settings(engine, sampling)
    done: dict[int | str, Answer] = {}
    for rec, line in read_appended(out):
        answer = parse_answer(rec, {"file": out, "line": line})
        theirs = rec.get("llamabrew")
        if answer.model_id != model_id or theirs != settings:
            raise LlamabrewError(f"{out}:{line}: {_difference(answer.model_id, theirs, model_id, settings)}: ask "
                                 "with the same settings, or choose another --out")
        done[answer.question_id] = answer
    if advance and done:
        advance(len(done))
    todo = [q for q in questions if q.question_id not in done]
    step = batch_size if hasattr(engine, "generate_batch") else 1
    for start in range(0, len(todo), step):
        chunk = todo[start : start + step]
        replies: list[tuple[str, ...]] = [() for _ in chunk]
        for turn in range(max(len(q.turns) for q in chunk)):
            asked = [i for i, q in enumerate(chunk) if turn < len(q.turns)]
            chats = [conversation(chunk[i], replies[i], turn) for i in asked]
            texts = answer_all(engine, chats, sampling)
            for i, text in zip(asked, texts, strict=True):
                replies[i] = (*replies[i], text.strip())
        for q, turns in zip(chunk, replies, strict=True):
            append_jsonl(out, {"question_id": q.question_id, "answer_id": uuid.uuid4().hex, "model_id": model_id,
                               "choices": [{"index": 0, "turns": list(turns)}], "tstamp": time.time(),
                               "llamabrew": settings})
            done[q.question_id] = Answer(q.question_id, model_id, turns)
        if advance:
            advance(len(chunk))
    return done
