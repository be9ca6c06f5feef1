"""Evaluation and `llamabrew answer` hand their questions to an engine in batches when it can take them."""

from __future__ import annotations

from pathlib import Path

from llamabrew.data.templates import BUILTIN
from llamabrew.engines import GenerationStats, Sampling
from llamabrew.evaluate.answers import generate_answers
from llamabrew.evaluate.questions import Question, answer_questions

SAMPLED = Sampling(max_new_tokens=8, temperature=0.7, seed=1)  # batched too: not only greedy answers


class Echo:
    """Answers with the last user message reversed; records how it was asked."""

    name, template, context_length = "echo", BUILTIN["chatml"], 512

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.streams = 0
        self.last = GenerationStats()

    def count_prompt_tokens(self, messages):
        return 1

    def stream(self, messages, sampling, cancel=None):
        self.streams += 1
        yield messages[-1]["content"][::-1]


class BatchingEcho(Echo):
    def generate_batch(self, conversations, sampling):
        self.batches.append(len(conversations))
        return [c[-1]["content"][::-1] for c in conversations]


def test_answers_go_in_batches_where_the_engine_batches(tmp_path: Path) -> None:
    chats = [[{"role": "user", "content": f"question {i}"}] for i in range(10)]
    batching, plain = BatchingEcho(), Echo()
    got = generate_answers(batching, chats, SAMPLED, batch_size=4)
    assert got == generate_answers(plain, chats, SAMPLED) == [f"{i} noitseuq" for i in range(10)]
    assert batching.batches == [4, 4, 2] and batching.streams == 0 and plain.streams == 10
    questions = [Question(i, "writing", (f"q{i}", f"again {i}")) for i in range(5)]
    answer_questions(batching, questions, tmp_path / "a.jsonl", SAMPLED, model_id="echo", batch_size=3)
    assert batching.batches[3:] == [3, 3, 2, 2]  # each turn of a chunk of questions goes as one batch
