"""LLM-as-judge through real HTTP: a scripted judge on 127.0.0.1 that is fair, position-biased, garbled,
rate-limited, refusing the key or out of budget; and the aggregation checked against hand-computed numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data.scripted_teacher import ScriptedTeacher
from typer.testing import CliRunner

from llamabrew.cli import app
from llamabrew.data.teacher import Price, TeacherConfig
from llamabrew.evaluate import judge_prompts as prompts
from llamabrew.evaluate.compare import compare
from llamabrew.evaluate.questions import load_questions

QUESTIONS = [
    {"question_id": 1, "category": "math", "turns": ["What is 2 + 3?"], "reference": ["5"]},
    {"question_id": 2, "category": "math", "turns": ["What is 4 * 4?", "And half of that?"], "reference": ["16", "8"]},
    {"question_id": 3, "category": "writing", "turns": ["Name a colour."]},
    {"question_id": 4, "category": "writing", "turns": ["Write a title.", "Shorter, please."]},
]
# B's answers are "good", A's are "poor": a fair judge prefers B whatever the order it is shown in
ANSWERS = {"base": {1: ["poor 7"], 2: ["poor 15", "poor 9"], 3: ["poor"], 4: ["poor long title here", "poor"]},
           "tuned": {1: ["good 5"], 2: ["good 16", "good 8"], 3: ["good teal"], 4: ["good title", "good"]}}


def write_set(folder: Path, keep=lambda q: True) -> tuple[Path, Path, Path]:
    """Question and answer files of the questions ``keep`` keeps."""
    folder.mkdir(parents=True, exist_ok=True)
    q = folder / "questions.jsonl"
    kept = [r for r in QUESTIONS if keep(r)]
    q.write_text("".join(json.dumps(r) + "\n" for r in kept))
    ids = {r["question_id"] for r in kept}
    files = []
    for model, all_answers in ANSWERS.items():
        answers = {k: v for k, v in all_answers.items() if k in ids}
        f = folder / f"{model}.jsonl"
        f.write_text("".join(json.dumps({"question_id": qid, "model_id": model, "answer_id": str(qid),
                                         "choices": [{"index": 0, "turns": turns}]}) + "\n"
                             for qid, turns in answers.items()))
        files.append(f)
    return q, files[0], files[1]


def answer_text(prompt: str, name: str) -> str:
    parts = prompts.sections(prompt)
    own = parts.get(prompts.ANSWER.format(name=name)) or parts.get(prompts.CONVERSATION.format(name=name)) or ""
    return own.rsplit("Assistant: ", 1)[-1]


def fair(messages, _server) -> str:
    prompt = messages[-1]["content"]
    if prompts.ANSWER.format(name="B") not in prompt and prompts.CONVERSATION.format(name="B") not in prompt:
        return "Rating: [[8]]" if answer_text(prompt, "A").startswith("good") else "Fine.\nRating: [[4]]"
    return "B is right.\n[[B]]" if answer_text(prompt, "B").startswith("good") else "A is right.\n[[A]]"


def judge_config(url: str, **kw) -> TeacherConfig:
    return TeacherConfig(**{"url": url, "model": "judge-1", "concurrency": 2, "backoff_base_s": 0.01,
                            "timeout_s": 5, **kw})


def run(folder: Path, server: ScriptedTeacher, mode: str = "pairwise", **kw):
    q, a, b = write_set(folder)
    return compare(load_questions(q), str(a), str(b), judge_url=server.url, judge_model="judge-1",
                   judge_config=judge_config(server.url, **kw), mode=mode, out=folder / "out")


def test_fair_judge_both_orders_and_the_prompt(tmp_path: Path):
    with ScriptedTeacher(fair) as server:
        s = run(tmp_path, server).summary
    assert (s["wins"], s["ties"], s["losses"], s["inconsistent"], s["errors"]) == (6, 0, 0, 0, 0)  # 6 turns
    assert s["win_rate"] == 1.0 and s["win_rate_adjusted"] == 1.0 and s["complete"]
    assert len(server.requests) == 12  # every turn in both orders
    bodies = [r["body"] for r in server.requests]
    assert all(b["temperature"] == 0.0 and b["model"] == "judge-1" for b in bodies)
    shown = [b["messages"][-1]["content"] for b in bodies]
    # reference-guided where the question has one; the second turn shows each model's whole conversation
    assert sum(prompts.REFERENCE in p for p in shown) == 6
    second = [p for p in shown if "And half of that?" in p]
    assert len(second) == 2 and all("poor 15" in p and "good 16" in p and "Conversation" in p for p in second)
    assert s["mean_words"] == {"base": 2.0, "tuned": pytest.approx(11 / 6)}  # 12 and 11 words / 6
    assert s["by_category"]["math"]["games"] == 3


def test_position_bias_becomes_ties_counted_as_inconsistent(tmp_path: Path):
    with ScriptedTeacher(lambda m, s: "The first one.\n[[A]]") as server:
        s = run(tmp_path, server).summary
    assert (s["wins"], s["ties"], s["losses"], s["inconsistent"]) == (0, 6, 0, 6)
    assert s["win_rate"] == 0.0 and s["win_rate_adjusted"] == 0.5


def test_garbage_and_two_verdicts_are_asked_again_then_errors(tmp_path: Path):
    def responder(messages, server) -> str:
        prompt = messages[-1]["content"]
        if "What is 2 + 3?" in prompt:
            return "Both have merit."  # no verdict, twice: an error, never guessed
        if "Name a colour." in prompt and server.counter == 0:
            server.counter += 1
            return "[[A]] or maybe [[B]]"  # two verdicts: asked once more, then fine
        return fair(messages, server)

    with ScriptedTeacher(responder, faults=["429", "500", "garbage"]) as server:
        result = run(tmp_path, server)
    s = result.summary
    assert s["errors"] == 1 and s["wins"] == 5 and s["games"] == 5
    assert s["usage"]["retries"] == 3  # the HTTP faults, retried by the client
    verdicts = [json.loads(line) for line in result.verdicts_path.read_text().splitlines()]
    errors = [v for v in verdicts if v["verdict"] is None]
    assert len(errors) == 2 and all(v["retried"] for v in errors)  # both orders of question 1
    assert sum(v["retried"] for v in verdicts) == 3


def test_killed_run_resumes_without_judging_twice(tmp_path: Path):
    with ScriptedTeacher(fair, faults=[""] * 5 + ["401"]) as server:  # the key is refused after 5 verdicts
        with pytest.raises(Exception, match="refused the key"):
            run(tmp_path, server, concurrency=1)
        first = len(server.requests)
        stored = (tmp_path / "out").glob("pairwise-*.jsonl")
        assert sum(len(p.read_text().splitlines()) for p in stored) == 5
        s = run(tmp_path, server).summary
    assert first == 6 and len(server.requests) - first == 7  # only the 7 verdicts not yet stored
    assert s["games"] == 6 and s["wins"] == 6


def test_budget_stops_cleanly_and_a_bigger_budget_resumes(tmp_path: Path):
    price = Price(1000.0, 1000.0)  # $0.3 per scripted request (100 + 200 tokens)
    with ScriptedTeacher(fair) as server:
        s = run(tmp_path, server, budget_usd=1.0, price=price, max_tokens=300).summary
        assert s["stopped"] == "budget" and 0 < s["pending"] < 12 and s["usage"]["cost_usd"] <= 1.0
        judged = 12 - s["pending"]
        s = run(tmp_path, server, budget_usd=10.0, price=price, max_tokens=300).summary
    assert s["complete"] and len(server.requests) == 12 and s["usage"]["requests"] == 12
    assert judged >= 1  # each worst case (prompt estimate + 300 tokens) is ~$0.6: the second would pass $1


def test_single_grades_mean_and_relative_score(tmp_path: Path):
    with ScriptedTeacher(fair) as server:
        s = run(tmp_path, server, mode="single").summary
    assert s["graded"] == 6 and s["mean_score"] == {"base": 4.0, "tuned": 8.0}
    assert s["relative_score"] == pytest.approx(200.0)
    assert len(server.requests) == 12


def test_cli_json_and_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    q, a, b = write_set(tmp_path)
    runner = CliRunner()
    with ScriptedTeacher(fair) as server:
        res = runner.invoke(app, ["judge", "-q", str(q), "--a", str(a), "--b", str(b), "--judge-url", server.url,
                                  "--judge-model", "judge-1", "--out", str(tmp_path / "o"), "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout.strip().splitlines()[-1])["wins"] == 6
    with ScriptedTeacher(fair, faults=["401"]) as server:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-123")
        res = runner.invoke(app, ["judge", "-q", str(q), "--a", str(a), "--b", str(b), "--judge-url", server.url,
                                  "--judge-model", "judge-1", "--out", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "refused the key" in res.output and "sk-secret-123" not in res.output
    assert server.requests[0]["headers"]["authorization"] == "Bearer sk-secret-123"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question_id": 9, "model_id": "x", "choices": [{"index": 0, "turns": ["hi"]}]}) + "\n")
    res = runner.invoke(app, ["judge", "-q", str(q), "--a", str(a), "--b", str(bad),  # fails before any request
                              "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "j", "--out",
                              str(tmp_path / "o3")])
    assert res.exit_code == 2 and "bad.jsonl:1: field 'question_id': unknown question id 9" in res.output
    assert not (tmp_path / "o3").exists()  # nothing written for a refused input


def test_reference_judge_offline(tmp_path: Path):
    q, a, b = write_set(tmp_path / "all")
    with pytest.raises(Exception, match="needs a reference answer for every turn; question 3"):
        compare(load_questions(q), str(a), str(b), judge_url="builtin:reference", out=tmp_path / "o")
    q, a, b = write_set(tmp_path / "referenced", keep=lambda r: "reference" in r)
    s = compare(load_questions(q), str(a), str(b), judge_url="builtin:reference", out=tmp_path / "o").summary
    assert (s["wins"], s["ties"], s["losses"]) == (3, 0, 0) and s["judge"] == "reference"
    again = compare(load_questions(q), str(a), str(b), judge_url="builtin:reference", out=tmp_path / "o").summary
    assert again["wins"] == 3 and again["usage"]["requests"] == s["usage"]["requests"] == 6  # resumed: counted once


def test_verdicts_become_preference_pairs(tmp_path: Path):
    from llamabrew.data.preference import load_pairs

    q, a, b = write_set(tmp_path)
    with ScriptedTeacher(fair) as server:
        s = compare(load_questions(q), str(a), str(b), judge_url=server.url, judge_model="judge-1",
                    judge_config=judge_config(server.url), out=tmp_path / "out", pairs_out=tmp_path / "pairs.jsonl")
    pairs = load_pairs(tmp_path / "pairs.jsonl")  # read back by the preference loader: a valid file
    assert s.summary["pairs"]["written"] == 4 and s.summary["pairs"]["skipped"] == {
        "second turn (answers follow different histories)": 2}
    assert [p.chosen for p in pairs] == ["good 5", "good 16", "good teal", "good title"]
    assert [p.rejected for p in pairs][0] == "poor 7" and pairs[0].prompt[0].content == "What is 2 + 3?"


def test_cli_takes_the_judge_recipe_a_pipeline_stage_takes(tmp_path: Path):
    q, a, b = write_set(tmp_path, keep=lambda r: "reference" in r)
    recipe = tmp_path / "judge.yaml"
    recipe.write_text(f"questions: {q}\na: {a}\nb: {b}\njudge: {{url: 'builtin:reference'}}\nout: {tmp_path / 'o'}\n")
    res = CliRunner().invoke(app, ["judge", "--recipe", str(recipe), "--json", "--set", "seed=1"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout.strip().splitlines()[-1])
    assert (s["wins"], s["ties"], s["losses"]) == (3, 0, 0) and s["judge"] == "reference"
    recipe.write_text(recipe.read_text().replace("judge: {url:", "judge: {urll:"))
    res = CliRunner().invoke(app, ["judge", "--recipe", str(recipe)])
    assert res.exit_code == 2 and f"{recipe}: field 'judge.urll'" in res.stderr
