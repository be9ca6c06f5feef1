"""Questions and answers in FastChat's layouts: the built-in set, strict reading with one-line errors, answering
every turn after the model's own earlier answers, resuming, and refusing to mix sampling settings."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llamabrew.data.templates import get_template
from llamabrew.engines import GREEDY, GenerationStats, Sampling
from llamabrew.errors import InputError, LlamabrewError
from llamabrew.evaluate.questions import answer_questions, load_answers, load_questions


class EchoEngine:
    """Answers "<n>: <last user message>" and remembers every conversation it was given."""

    name = "echo"
    context_length = 4096

    def __init__(self, fail_after: int | None = None) -> None:
        self.template = get_template("chatml")
        self.last = GenerationStats()
        self.seen: list[list[dict[str, str]]] = []
        self.fail_after = fail_after

    def stream(self, messages, sampling: Sampling, cancel: threading.Event | None = None):
        if self.fail_after is not None and len(self.seen) >= self.fail_after:
            raise KeyboardInterrupt  # as if killed
        self.seen.append(messages)
        yield f"{len(messages)}: {messages[-1]['content']}"

    def count_prompt_tokens(self, messages) -> int:
        return 0


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


QS = [{"question_id": "a", "category": "x", "turns": ["one?", "two?"]},
      {"question_id": "b", "category": "y", "turns": ["three?"], "reference": ["3"]}]


def test_builtin_set_is_whole():
    qs = load_questions("builtin:brew80")
    cats = Counter(q.category for q in qs)
    assert len(qs) == 80 and len(cats) == 8 and set(cats.values()) == {10}
    assert sum(len(q.turns) == 2 for q in qs) == 20
    assert all(q.reference for q in qs if q.category in ("math", "reasoning", "coding"))
    with pytest.raises(LlamabrewError, match="no built-in question set 'nope'"):
        load_questions("builtin:nope")


def test_mt_bench_layout_reads_unchanged(tmp_path: Path):
    """MT-bench's own lines: integer ids, a single reference for a two-turn question."""
    f = write(tmp_path / "q.jsonl", [{"question_id": 81, "category": "writing", "turns": ["t1", "t2"]},
                                     {"question_id": 111, "category": "math", "turns": ["t1", "t2"],
                                      "reference": ["r1"]}])
    qs = load_questions(f)
    assert qs[0].reference is None and qs[1].reference == ("r1", "")


@pytest.mark.parametrize(("row", "where"), [
    ({"category": "x", "turns": ["q"]}, "q.jsonl:2: field 'question_id'"),
    ({"question_id": 2, "turns": "not a list"}, "q.jsonl:2: field 'turns'"),
    ({"question_id": 2, "turns": []}, "q.jsonl:2: field 'turns'"),
    ({"question_id": 1, "turns": ["again"]}, "q.jsonl:2: field 'question_id': question_id 1 repeats"),
    ({"question_id": 2, "turns": ["q"], "reference": [3]}, "q.jsonl:2: field 'reference'"),
])
def test_bad_question_lines(tmp_path: Path, row: dict, where: str):
    f = write(tmp_path / "q.jsonl", [{"question_id": 1, "turns": ["ok"]}, row])
    with pytest.raises(InputError) as e:
        load_questions(f)
    assert where in str(e.value)


def test_bad_answer_lines(tmp_path: Path):
    qs = load_questions(write(tmp_path / "q.jsonl", QS))
    good = {"question_id": "a", "model_id": "m", "choices": [{"index": 0, "turns": ["1", "2"]}]}
    cases = [
        ({**good, "choices": [{"index": 0, "turns": ["only one"]}]}, "a.jsonl:1: field 'choices': 1 turns"),
        ({**good, "question_id": "zz"}, "a.jsonl:1: field 'question_id': unknown question id 'zz'"),
        ({k: v for k, v in good.items() if k != "model_id"}, "a.jsonl:1: field 'model_id'"),
        ({**good, "choices": "x"}, "a.jsonl:1: field 'choices'"),
    ]
    for row, where in cases:
        with pytest.raises(InputError) as e:
            load_answers(write(tmp_path / "a.jsonl", [row]), qs)
        assert where in str(e.value)
    (tmp_path / "a.jsonl").write_text(json.dumps(good) + "\n{not json\n" + json.dumps(good) + "\n")
    with pytest.raises(InputError, match="a.jsonl:2: invalid JSON"):
        load_answers(tmp_path / "a.jsonl", qs)


def test_every_turn_follows_the_models_own_answers_and_resumes(tmp_path: Path):
    qs = load_questions(write(tmp_path / "q.jsonl", QS))
    out = tmp_path / "ans.jsonl"
    with pytest.raises(KeyboardInterrupt):
        answer_questions(EchoEngine(fail_after=1), qs, out, GREEDY, model_id="echo")  # killed inside question a
    assert not out.exists() or out.read_text() == ""  # a half-answered question is not written
    engine = EchoEngine()
    answer_questions(engine, qs, out, GREEDY, model_id="echo")
    answers = load_answers(out, qs)
    assert answers["a"].turns == ("1: one?", "3: two?") and answers["b"].turns == ("1: three?",)
    assert engine.seen[1] == [{"role": "user", "content": "one?"}, {"role": "assistant", "content": "1: one?"},
                              {"role": "user", "content": "two?"}]
    again = EchoEngine()
    answer_questions(again, qs, out, GREEDY, model_id="echo")
    assert again.seen == [] and len(out.read_text().splitlines()) == 2  # nothing asked twice
    line = json.loads(out.read_text().splitlines()[0])
    assert line["choices"][0]["index"] == 0 and line["llamabrew"]["sampling"]["temperature"] == 0.0
    with pytest.raises(LlamabrewError, match=r"other settings: .*temperature 0.0 \(asked: 0.7\).*another --out"):
        answer_questions(EchoEngine(), qs, out, Sampling(temperature=0.7), model_id="echo")


def test_answer_command_on_a_tiny_model(tiny_model_dir: Path, tmp_path: Path):
    from llamabrew.cli import app

    q = write(tmp_path / "q.jsonl", QS)
    res = CliRunner().invoke(app, ["answer", "-q", str(q), "--model", str(tiny_model_dir), "--out",
                                   str(tmp_path / "a.jsonl"), "--max-new-tokens", "8"])
    assert res.exit_code == 0, res.output
    answers = load_answers(tmp_path / "a.jsonl", load_questions(q))
    assert answers["a"].model_id == tiny_model_dir.name and len(answers["a"].turns) == 2
