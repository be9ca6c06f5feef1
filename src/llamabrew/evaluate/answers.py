"""Answers from any engine, cached with the sampling settings that made them.

Evaluating, exporting with ``--eval`` and judging all start here: the same conversations, the same settings,
the same engine → the same answers, computed once. The cache is a JSONL file appended one answer at a time
(flushed), so a killed run resumes where it stopped; a line is found by a hash of (engine, template, sampling,
conversation), so changing any of them asks again instead of reusing a stale answer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from llamabrew.engines import Engine, Sampling, answer_all, describe
from llamabrew.io import append_jsonl, read_jsonl

Conversation = list[dict[str, str]]


def greedy(max_new_tokens: int) -> Sampling:
    """Deterministic answers for scoring: no sampling, no repetition penalty."""
    return Sampling(max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0)


def answer_key(engine: Engine, sampling: Sampling, conversation: Conversation) -> str:
    blob = json.dumps({"engine": describe(engine), "template": engine.template.name, "sampling": asdict(sampling),
                       "messages": conversation}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def generate_answers(engine: Engine, conversations: Sequence[Conversation], sampling: Sampling, *,
                     cache: str | Path | None = None, batch_size: int = 16,
                     advance: Callable[[int], None] | None = None) -> list[str]:
    """One answer per conversation, ``batch_size`` at a time through an engine that batches (`answer_all`),
    else one by one. With ``cache``, known answers are read back and new ones appended."""
    keys = [answer_key(engine, sampling, c) for c in conversations]
    known = {r["key"]: r["answer"] for r in read_jsonl(cache)} if cache and Path(cache).is_file() else {}
    answers: dict[int, str] = {i: known[k] for i, k in enumerate(keys) if k in known}
    if advance and answers:
        advance(len(answers))
    todo = [i for i in range(len(conversations)) if i not in answers]
    step = batch_size if hasattr(engine, "generate_batch") else 1
    for start in range(0, len(todo), step):
        chunk = todo[start : start + step]
        texts = answer_all(engine, [conversations[i] for i in chunk], sampling)
        for i, text in zip(chunk, texts, strict=True):
            answers[i] = text
            if cache:
                append_jsonl(cache, {"key": keys[i], "answer": text, "engine": describe(engine),
                                     "sampling": asdict(sampling), "messages": conversations[i]})
        if advance:
            advance(len(chunk))
    return [answers[i] for i in range(len(conversations))]
