"""Streaming: stop strings across pieces, stream == greedy batch, stats, context limit, `llamabrew chat`."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from llamabrew.engines import GREEDY, ContextLengthError, StopScanner

# --- StopScanner --------------------------------------------------------------------------------------------


def scan(stops: list[str], pieces: list[str]) -> tuple[list[str], str, StopScanner]:
    s = StopScanner(stops)
    out = [s.feed(p) for p in pieces]
    return out, s.flush(), s


def test_stop_split_across_pieces_is_held_back_and_cut():
    out, tail, s = scan(["### Instruction:"], ["The answer is 4.\n\n#", "## Instr", "uction:\nWhat else?"])
    assert out == ["The answer is 4.\n\n", "", ""]  # "#" and "## Instr" are held back, never shown
    assert tail == "" and s.stopped
    assert "".join(out) + tail == "The answer is 4.\n\n"


def test_stop_inside_one_piece():
    out, tail, s = scan(["USER:"], ["Hello there USER: next", " more"])
    assert out == ["Hello there ", ""] and tail == "" and s.stopped


def test_text_without_stops_passes_through_complete():
    pieces = ["Hello", " wor", "ld", ". ##", " not a stop", " <|im"]
    out, tail, s = scan(["### Instruction:", "<|im_end|>"], pieces)
    assert "".join(out) + tail == "".join(pieces)
    assert not s.stopped
    assert out[0] == "Hello"  # nothing that could start a stop: passed on at once
    assert out[-1] == " " and tail == "<|im"  # a possible stop start waits, and comes out at flush


def test_held_back_prefix_released_when_it_does_not_become_a_stop():
    s = StopScanner(["<|im_end|>"])
    assert s.feed("a <|im") == "a "
    assert s.feed("_start|>b") == "<|im_start|>b"


def test_earliest_of_several_stops_wins():
    out, tail, _ = scan(["<|im_start|>", "<|im_end|>"], ["x<|im_end|>\n<|im_start|>user"])
    assert out == ["x"] and tail == ""


def test_spaces_before_the_first_word_are_dropped_once():
    """Inline templates ("### Response: Teal") train a space before the answer; it is not part of it."""
    out, tail, _ = scan(["USER:"], [" ", "  Teal", "  and  ", " blue"])
    assert "".join(out) + tail == "Teal  and   blue"
    out, tail, _ = scan([], ["\n  code"])
    assert "".join(out) + tail == "\n  code"  # only spaces, and only before the first piece of text


def test_nothing_after_the_stop_and_empty_stops_ignored():
    s = StopScanner(["", "STOP"])
    assert s.feed("abSTOPcd") == "ab"
    assert s.feed("more") == "" and s.flush() == ""
    assert StopScanner([""]).feed("text") == "text"


# --- TorchEngine on the tiny model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path):
    from llamabrew.engines.torch_engine import open_torch_engine

    return open_torch_engine(str(tiny_model_dir))


QUESTIONS = ["hi", "What is the capital of Oskenland?", "Tell me a story about a fox."]


def generated_ids(engine, messages, max_new: int) -> list[int]:
    """Greedy tokens straight from transformers, to know how many tokens and whether EOS came."""
    import torch

    ids = torch.tensor([engine.prompt_ids(messages)])
    out = engine.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                                do_sample=False, pad_token_id=engine.tokenizer.pad_token_id,
                                eos_token_id=engine.tokenizer.eos_token_id)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("question", QUESTIONS)
def test_stream_equals_greedy_batch_and_counts_tokens(engine, question: str):
    messages = [{"role": "user", "content": question}]
    streamed = "".join(engine.stream(messages, replace(GREEDY, max_new_tokens=10)))
    (batched,) = engine.greedy_batch([messages], 10)
    assert streamed == batched
    new = generated_ids(engine, messages, 10)
    eos = engine.tokenizer.eos_token_id
    assert engine.last.prompt_tokens == len(engine.prompt_ids(messages))
    assert engine.last.completion_tokens == len(new)
    if eos not in new:
        assert len(new) == 10 and engine.last.finish_reason == "length"
    else:
        assert engine.last.finish_reason == "stop"
    assert engine.last.seconds > 0 and engine.last.tokens_per_second > 0


def test_left_padded_batch_matches_one_by_one(engine):
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS]
    assert len({len(engine.prompt_ids(c)) for c in conversations}) > 1  # the batch really needs padding
    one_by_one = [engine.greedy_batch([c], 10)[0] for c in conversations]
    assert engine.greedy_batch(conversations, 10) == one_by_one


def test_stream_stops_at_a_stop_string(engine):
    messages = [{"role": "user", "content": QUESTIONS[1]}]
    full = "".join(engine.stream(messages, replace(GREEDY, max_new_tokens=12)))
    assert engine.last.finish_reason == "length"
    # a two-character stop from the middle of the answer (whole characters, not a half-decoded byte)
    starts = sorted(range(1, len(full) - 1), key=lambda i: abs(i - len(full) // 2))
    stop = next(w for w in (full[i : i + 2] for i in starts) if w.strip() and "\ufffd" not in w)
    expected = full[: full.find(stop)]
    cut = "".join(engine.stream(messages, replace(GREEDY, max_new_tokens=12, stop=[stop])))
    assert cut == expected
    assert engine.last.finish_reason == "stop"


def test_max_new_tokens_is_respected(engine):
    messages = [{"role": "user", "content": QUESTIONS[2]}]
    "".join(engine.stream(messages, replace(GREEDY, max_new_tokens=3)))
    assert engine.last.completion_tokens == 3 and engine.last.finish_reason == "length"


def test_prompt_longer_than_the_context(engine):
    messages = [{"role": "user", "content": "fox " * (engine.context_length + 10)}]
    assert engine.count_prompt_tokens(messages) > engine.context_length
    with pytest.raises(ContextLengthError, match="context is 512"):
        "".join(engine.stream(messages, GREEDY))
    # the engine is still usable afterwards (its lock was not left held)
    "".join(engine.stream([{"role": "user", "content": "hi"}], replace(GREEDY, max_new_tokens=2)))
    assert engine.last.completion_tokens == 2


def test_answer_writes_the_stream_and_returns_it(engine):
    import io

    from llamabrew.serve.chat import answer

    buf = io.StringIO()
    reply = answer(engine, [{"role": "user", "content": "hi"}], replace(GREEDY, max_new_tokens=6), out=buf)
    (expected,) = engine.greedy_batch([[{"role": "user", "content": "hi"}]], 6)
    assert buf.getvalue() == expected + "\n"
    assert reply == expected.strip()


# --- the CLI ------------------------------------------------------------------------------------------------


def test_chat_cli_one_prompt(engine, tiny_model_dir: Path):
    exe = Path(sys.executable).with_name("llamabrew")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "llamabrew.cli"]
    proc = subprocess.run([*cmd, "chat", str(tiny_model_dir), "--prompt", "hi", "--max-new-tokens", "5",
                           "--temperature", "0", "--repetition-penalty", "1", "--threads", "1"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    # stdout holds the answer alone: the greedy answer, then a newline
    (expected,) = engine.greedy_batch([[{"role": "user", "content": "hi"}]], 5)
    assert expected.strip()
    assert proc.stdout == expected + "\n"
    stats = [ln for ln in proc.stderr.splitlines() if "tok/s" in ln]
    assert len(stats) == 1 and "5 tokens" in stats[0] and "finish: length" in stats[0]
    assert "tok/s" not in proc.stdout
