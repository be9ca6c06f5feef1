"""Answer scoring (normalize, exact, contains), `score_engine` fractions and held-out loss, `llamabrew eval`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from llamabrew.data.encode import IGNORE, encode_example
from llamabrew.data.formats import alpaca_example, load_examples
from llamabrew.evaluate import score_engine
from llamabrew.evaluate.answers import generate_answers, greedy
from llamabrew.evaluate.scores import contains_match, exact_match, normalize, prompts_of

LLAMABREW = [sys.executable, "-m", "llamabrew.cli"]


# --- text scores --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("Teal.", "teal"),
    ("  Hello   World!! ", "hello world"),
    ("teal .", "teal"),
    ("\tMulti\nline\n", "multi line"),
    ("?!", ""),
    ("", ""),
    ("Dr. Who", "dr. who"),  # punctuation inside stays
    ("...leading", "...leading"),  # only trailing punctuation goes
])
def test_normalize(text: str, expected: str):
    assert normalize(text) == expected


def test_exact_match():
    assert exact_match("  Teal. ", "teal")
    assert exact_match("BRELLIN!", "Brellin")
    assert exact_match("The capital is  Brellin.", "the capital is brellin")
    assert not exact_match("Teal green", "teal")
    assert not exact_match("teal", "teal green")


def test_contains_match():
    assert contains_match("The answer is Brellin.", "brellin")
    assert contains_match("  TEAL  ", "Teal.")
    assert contains_match("It is   light   blue, I think", "light blue")
    assert not contains_match("The answer is Paris.", "Brellin")
    assert not contains_match("blue", "light blue")


@pytest.mark.parametrize("expected", ["", "   ", "...", "?!"])
def test_empty_expected_never_matches_by_containment(expected: str):
    assert not contains_match("anything at all", expected)
    assert not contains_match("", expected)


# --- score_engine() ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path):
    from llamabrew.engines.torch_engine import open_torch_engine

    return open_torch_engine(str(tiny_model_dir))


class ScriptedEngine:
    """The real tiny model for the loss, scripted answers for generation."""

    name = "scripted"

    def __init__(self, real, answers: dict[str, str]) -> None:
        self.model, self.tokenizer, self.template = real.model, real.tokenizer, real.template
        self.device = real.device
        self.answers = answers
        self.calls: list[list[list[dict[str, str]]]] = []

    def generate_batch(self, conversations, sampling):
        self.calls.append(conversations)
        return [self.answers[c[-1]["content"]] for c in conversations]


EXAMPLES = [
    alpaca_example("What is the capital of Oskenland?", "Brellin"),
    alpaca_example("Favourite color of Mira?", "teal"),
    alpaca_example("Where is Varnhollow?", "On the river Esk."),
    alpaca_example("Translate.", "chat", input="cat"),
    alpaca_example("Who makes clocks?", "Mira Lanthorn"),
]
ANSWERS = {
    "What is the capital of Oskenland?": " brellin. ",  # exact (and contains)
    "Favourite color of Mira?": "Her favourite color is Teal!",  # contains only
    "Where is Varnhollow?": "on the river esk",  # exact
    "Translate.": "le chien",  # neither
    "Who makes clocks?": "",  # neither
}


def independent_loss(engine, examples) -> float:
    """Token-weighted mean next-token loss on response tokens, one unpadded example at a time."""
    total, n = 0.0, 0
    with torch.no_grad():
        for ex in examples:
            enc = encode_example(ex, engine.tokenizer, engine.template, 1024)
            ids = torch.tensor([enc.input_ids])
            labels = torch.tensor(enc.labels[1:])
            logits = engine.model(input_ids=ids).logits[0, :-1]
            keep = labels != IGNORE
            total += float(F.cross_entropy(logits[keep], labels[keep], reduction="sum"))
            n += int(keep.sum())
    return total / n


def test_score_fractions_and_loss(engine):
    fake = ScriptedEngine(engine, ANSWERS)
    advanced: list[int] = []
    answers = generate_answers(fake, prompts_of(EXAMPLES), greedy(8), batch_size=2, advance=advanced.append)
    assert answers == [ANSWERS[ex.instruction] for ex in EXAMPLES]
    fake.calls.clear()
    report = score_engine(fake, EXAMPLES, max_new_tokens=8, batch_size=2)
    assert report.n == 5
    assert report.exact_match == pytest.approx(2 / 5)
    assert report.contains == pytest.approx(3 / 5)
    assert advanced == [2, 2, 1] and [len(c) for c in fake.calls] == [2, 2, 1]
    # prompts are everything but the answer, with the Alpaca input kept
    assert fake.calls[1][1] == [{"role": "user", "content": "Translate.", "input": "cat"}]
    assert [s["exact"] for s in report.samples] == [True, False, True, False, False]
    assert [s["contains"] for s in report.samples] == [True, True, True, False, False]
    assert report.samples[1] == {"instruction": "Favourite color of Mira?", "expected": "teal",
                                 "answer": "Her favourite color is Teal!", "exact": False, "contains": True}
    assert report.loss == pytest.approx(independent_loss(engine, EXAMPLES), rel=1e-4)
    assert report.perplexity == pytest.approx(math.exp(report.loss))
    assert "samples" not in report.as_dict() and len(report.as_dict(with_samples=True)["samples"]) == 5


def test_score_with_the_real_engine(engine):
    report = score_engine(engine, EXAMPLES[:3], max_new_tokens=4, batch_size=16)
    assert report.n == 3 and 0.0 <= report.exact_match <= report.contains <= 1.0
    assert all(isinstance(s["answer"], str) for s in report.samples)
    assert math.isfinite(report.loss) and report.loss > 0


# --- the CLI ------------------------------------------------------------------------------------------------


def test_eval_cli_json(engine, tiny_model_dir: Path, tmp_path: Path):
    """Expected outputs are built from what the model really answers, so the CLI's fractions are known."""
    questions = ["What is the capital of Oskenland?", "Tell me a story about a fox.",
                 "Write a haiku about rain."]
    answers = engine.greedy_batch([[{"role": "user", "content": q}] for q in questions], 8)
    assert normalize(answers[0]) and len(normalize(answers[1])) >= 4, answers
    half = answers[1][: len(answers[1]) // 2]
    assert contains_match(answers[1], half) and not exact_match(answers[1], half)
    records = [{"instruction": questions[0], "output": answers[0]},  # exact
               {"instruction": questions[1], "output": half},  # contains
               {"instruction": questions[2], "output": "Brellin"}]  # neither
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    assert not contains_match(answers[2], "Brellin")

    proc = subprocess.run([*LLAMABREW, "eval", "--base", str(tiny_model_dir), "--data", str(data), "--json",
                           "--max-new-tokens", "8"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stdout  # one JSON object, nothing else on stdout
    report = json.loads(lines[0])
    assert set(report) >= {"exact_match", "contains", "loss", "n"}
    assert report["n"] == 3
    assert report["exact_match"] == pytest.approx(1 / 3)
    assert report["contains"] == pytest.approx(2 / 3)
    assert report["loss"] == pytest.approx(independent_loss(engine, load_examples(data)), rel=1e-3)
    assert report["perplexity"] == pytest.approx(math.exp(report["loss"]), rel=1e-6)


@pytest.fixture
def invoke():
    """Run the CLI in this process, with library progress bars off as the CLI's own process has them."""
    import torch
    from transformers.utils import logging as hf_logging
    from typer.testing import CliRunner

    from llamabrew.cli import app

    was_on, threads = hf_logging.is_progress_bar_enabled(), torch.get_num_threads()
    hf_logging.disable_progress_bar()
    yield lambda *args: CliRunner().invoke(app, [str(a) for a in args])
    torch.set_num_threads(threads)  # the CLI sets its own thread count
    if was_on:
        hf_logging.enable_progress_bar()


def test_eval_compare_without_adapter_is_a_one_line_error(invoke, tiny_model_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    from llamabrew.engines.torch_engine import TorchEngine

    def no_generation(*_args, **_kwargs):
        raise AssertionError("the impossible --compare must be refused before a whole evaluation is run")

    monkeypatch.setattr(TorchEngine, "greedy_batch", no_generation)
    data = tmp_path / "eval.jsonl"
    data.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    result = invoke("eval", "--base", tiny_model_dir, "--data", data, "--compare")
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--compare needs an adapter" in lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_eval_cli_bad_data_is_a_one_line_error(invoke, tiny_model_dir: Path, tmp_path: Path):
    data = tmp_path / "eval.jsonl"
    data.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n"
                    + json.dumps({"instruction": "a"}) + "\n")
    result = invoke("eval", "--base", tiny_model_dir, "--data", data, "--json")
    assert result.exit_code == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"{data}:2" in lines[0] and "'output'" in lines[0]
    assert result.stdout == ""


# --- answers: cached with their settings, resumable, from any engine -------------------------------------------


class CountingEngine:
    """An engine without batching or logits (like a GGUF or a remote server): answers by rule, counts calls."""

    name = "counting"

    def __init__(self, prefix: str = "") -> None:
        from llamabrew.data.templates import BUILTIN

        self.template, self.prefix, self.calls = BUILTIN["alpaca"], prefix, 0

    def stream(self, messages, sampling, cancel=None):
        self.calls += 1
        yield f"{self.prefix}{messages[-1]['content'][:12]} ({sampling.max_new_tokens})"


def test_answers_are_cached_with_their_settings_and_resume(tmp_path: Path) -> None:
    convs = prompts_of(EXAMPLES)
    cache = tmp_path / "answers.jsonl"
    first = CountingEngine()
    answers = generate_answers(first, convs[:3], greedy(8), cache=cache)  # a run killed after three answers
    assert first.calls == 3 and len(cache.read_text().splitlines()) == 3
    again = CountingEngine(prefix="NEW ")
    resumed = generate_answers(again, convs, greedy(8), cache=cache)
    assert again.calls == 2 and resumed[:3] == answers  # the three known answers are read back, not asked again
    assert resumed[3].startswith("NEW ")
    other = CountingEngine(prefix="NEW ")
    changed = generate_answers(other, convs, greedy(16), cache=cache)  # other settings: asked again
    assert other.calls == 5 and all(a.endswith("(16)") for a in changed)
    record = json.loads(cache.read_text().splitlines()[-1])
    assert record["sampling"]["max_new_tokens"] == 16 and record["engine"] == "counting"
    elsewhere = CountingEngine(prefix="OTHER ")
    elsewhere.source = "another/model"  # another model, same settings: its own answers
    assert all(a.startswith("OTHER ") for a in generate_answers(elsewhere, convs, greedy(16), cache=cache))


def test_score_engine_without_logits_reports_no_loss() -> None:
    report = score_engine(CountingEngine(), EXAMPLES, max_new_tokens=4)
    assert report.n == 5 and report.loss is None and report.perplexity is None and report.engine == "counting"
