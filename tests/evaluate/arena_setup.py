"""The arena tests' two models and their answers to three questions (one of them two-turn), in FastChat's
layouts, and the app over them (fixtures in this folder's conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from llamabrew.evaluate.arena import create_arena_app
from llamabrew.evaluate.questions import load_answers, load_questions

ALPHA, BETA = "model-alpha", "model-beta"
NAMES = (ALPHA, BETA, "alpha", "beta")  # not even part of a name may reach the page before the vote
QUESTIONS = [
    {"question_id": 1, "category": "writing", "turns": ["Name a colour of the sky."]},
    {"question_id": 2, "category": "math", "turns": ["What is two plus two?", "And that times three?"]},
    {"question_id": "q3", "category": "reasoning", "turns": ["Is ice cold?"]},
]
ANSWERS = {ALPHA: {1: ["Blue, mostly."], 2: ["Four.", "Twelve."], "q3": ["Yes, ice is cold."]},
           BETA: {1: ["Grey today."], 2: ["It is 4.", "That makes 12."], "q3": ["Usually, yes."]}}
ITEMS = {("1", 1), ("2", 1), ("2", 2), ("q3", 1)}
QUESTION_TEXT = {str(q["question_id"]): q["turns"] for q in QUESTIONS}



def write_arena(tmp_path: Path) -> SimpleNamespace:
    """Question and answer files in FastChat's layout, loaded as the CLI loads them, and a vote database path."""
    q = tmp_path / "questions.jsonl"
    q.write_text("".join(json.dumps(r) + "\n" for r in QUESTIONS))
    files = {}
    for model, by_id in ANSWERS.items():
        files[model] = tmp_path / f"{model}.jsonl"
        files[model].write_text("".join(json.dumps({"question_id": qid, "answer_id": f"{model}-{qid}",
                                                    "model_id": model, "choices": [{"index": 0, "turns": t}],
                                                    "tstamp": 0}) + "\n" for qid, t in by_id.items()))
    questions = load_questions(q)
    answers = {m: load_answers(f, questions) for m, f in files.items()}
    return SimpleNamespace(dir=tmp_path, questions_file=q, files=files, questions=questions, answers=answers,
                           db=tmp_path / "votes.sqlite")


def make_app(env: SimpleNamespace, **kw):
    return create_arena_app(env.questions, env.answers, env.db, **kw)
