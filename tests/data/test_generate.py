"""Self-instruct against a scripted teacher over HTTP: parsing, filters, faults, resume after kill, budget."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scripted_teacher import SELF_INSTRUCT_SEEDS, ScriptedTeacher, numbered_batch, self_instruct_responder

from llamabrew.data.generate import (
    GenerateOptions,
    build_prompt,
    format_task,
    generate,
    load_seed_tasks,
    parse_batch,
    summary_path,
    task_problem,
)
from llamabrew.data.rouge import naive_filter
from llamabrew.data.teacher import Price, TeacherConfig
from llamabrew.errors import InputError
from llamabrew.io import read_jsonl

KEY = "sk-gen-SECRET-abcdef"


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("LB_GEN_KEY", KEY)


def teacher(url: str, **kw) -> TeacherConfig:
    base = dict(
        url=url,
        model="scripted",
        key_env="LB_GEN_KEY",
        concurrency=3,
        timeout_s=0.3,
        max_retries=4,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
    )
    return TeacherConfig(**(base | kw))


def cli(*args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "LB_GEN_KEY": KEY, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "llamabrew.data.cli", *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **popen,
    )


# -- parsing and filters


def test_parse_alpaca_numbered_batch():
    text = (
        "Sure! Here are the tasks.\n\n"
        + numbered_batch(
            [
                ("Give three tips for staying focused.", "", "1. Remove distractions..."),
                ("Classify the sentiment.", "I loved it", "Positive"),
            ],
            first=4,
        )
        + "**6. Instruction:** Name a prime number above 90.\n**6. Input:** <noinput>\n**6. Output:** 97"
    )
    tasks = parse_batch(text)
    assert [t["instruction"] for t in tasks] == [
        "Give three tips for staying focused.",
        "Classify the sentiment.",
        "Name a prime number above 90.",
    ]
    assert [t["input"] for t in tasks] == ["", "I loved it", ""]
    assert tasks[1]["output"] == "Positive" and tasks[2]["output"] == "97"
    assert all("problem" not in t for t in tasks)


def test_parse_without_separators_json_and_damage():
    text = "1. Instruction: Say hi politely\n1. Output: Hello!\n2. Instruction: Count to three\n2. Input:\n"
    first, second = parse_batch(text)
    assert first == {"instruction": "Say hi politely", "input": "", "output": "Hello!"}
    assert second["problem"] == "malformed"
    assert parse_batch(text, finish_reason="length")[-1]["problem"] == "truncated"
    fenced = '```json\n[{"instruction": "Add 2 and 3 please", "input": "<noinput>", "output": "5"}]\n```'
    assert parse_batch(fenced) == [{"instruction": "Add 2 and 3 please", "input": "", "output": "5"}]
    assert parse_batch('[{"instruction": "x"}]')[0]["problem"] == "malformed"
    assert parse_batch("I cannot help with that.") == []


def test_prompt_round_trips_through_the_parser():
    seeds = load_seed_tasks()[:3]
    prompt = build_prompt(seeds, 7)
    assert "numbered 4 to 10" in prompt and "<noinput>" in prompt or all(s["input"] for s in seeds)
    parsed = parse_batch("".join(format_task(i + 1, s) for i, s in enumerate(seeds)))
    assert [{k: p[k] for k in ("instruction", "input", "output")} for p in parsed] == seeds


@pytest.mark.parametrize(
    "instruction,problem",
    [
        ("Summarize the text below in two sentences.", None),
        ("Sort these numbers", None),
        ("Hi there", "too_short"),
        (" ".join(["word"] * 151), "too_long"),
        ("Describe the image in detail, please.", "not_text_only"),
        ("Make a drawing of a cat in the snow.", "not_text_only"),
        ("Open the link and summarise the page.", "not_text_only"),
        ("Listen to the recording and transcribe it.", "not_text_only"),
        ("- Write a haiku about autumn leaves.", "starts_with_punctuation"),
        ('"Translate" this sentence into German.', "starts_with_punctuation"),
    ],
)
def test_task_filters(instruction: str, problem: str | None):
    assert task_problem({"instruction": instruction, "input": "", "output": "x"}) == problem


def test_seed_formats(tmp_path: Path):
    own = load_seed_tasks()
    assert len(own) >= 20 and all(task_problem(t) is None for t in own)
    assert len(naive_filter([t["instruction"] for t in own])) == len(own)
    self_instruct = tmp_path / "self_instruct.jsonl"  # Self-Instruct's layout: the task's first instance counts
    self_instruct.write_text(
        '{"id": "seed_task_1", "name": "antonym_relation", "instruction": "What is the relation between the '
        'given pairs?", "instances": [{"input": "Night : Day :: Right : Left", "output": "They are opposites."}], '
        '"is_classification": false}\n'
        '{"id": "seed_task_6", "name": "resolutions", "instruction": "Brainstorm a list of New Year\'s '
        'resolutions.", "instances": [{"input": "", "output": "- Exercise more"}, {"input": "x", "output": "y"}], '
        '"is_classification": false}\n'
    )
    assert load_seed_tasks(self_instruct) == [
        {"instruction": "What is the relation between the given pairs?", "input": "Night : Day :: Right : Left",
         "output": "They are opposites."},
        {"instruction": "Brainstorm a list of New Year's resolutions.", "input": "", "output": "- Exercise more"},
    ]
    bad = tmp_path / "seeds.jsonl"
    bad.write_text(
        '{"instruction": "ok", "instances": [{"input": "", "output": "fine"}]}\n'
        '{"instruction": "no output", "instances": [{"input": ""}]}\n'
    )
    with pytest.raises(InputError, match=r"seeds.jsonl:2: field 'output': missing"):
        load_seed_tasks(bad)
    bad.write_text('{"instruction": "no instances", "instances": []}\n')
    with pytest.raises(InputError, match=r"seeds.jsonl:1: field 'instances': must be a non-empty list"):
        load_seed_tasks(bad)


@pytest.mark.skipif(not SELF_INSTRUCT_SEEDS.is_file(), reason="needs ../shared/data/self_instruct_seed_tasks.jsonl")
def test_the_175_self_instruct_seed_tasks_load():
    tasks = load_seed_tasks(SELF_INSTRUCT_SEEDS)
    assert len(tasks) == 175 and tasks[1]["input"] == "Night : Day :: Right : Left"


# -- end to end


def test_generate_through_faults_duplicates_and_junk(tmp_path: Path):
    out = tmp_path / "gen.jsonl"
    faults = ["429", "500", "timeout", "garbage", "500"]
    responder = self_instruct_responder(per_reply=4, dup_every=2, bad_every=3, as_json_every=4)
    with ScriptedTeacher(responder, faults, hang_s=0.5) as srv:
        summary = generate(
            GenerateOptions(out=out, num=30),  # llamabrew's own seed tasks
            teacher(srv.url, price=Price(1.0, 2.0), concurrency=1, max_retries=6),
        )
    kept = read_jsonl(out)
    assert len(kept) == 30 == summary["kept"] and summary["stopped"] == "done"
    instructions = [k["instruction"] for k in kept]
    assert len(set(instructions)) == 30 and all(naive_filter(instructions))
    rejected = summary["rejected"]
    assert rejected["duplicate"] >= 1 and rejected["not_text_only"] >= 1 and rejected["malformed"] >= 1
    usage = summary["usage"]
    assert usage["retries"] == 5 and usage["requests"] >= 8 and srv.faults == []
    assert usage["cost_usd"] == pytest.approx(usage["requests"] * (100 * 1 + 200 * 2) / 1e6)
    prompts = [r["body"]["messages"][0]["content"] for r in srv.requests]
    seeds = [t["instruction"].strip() for t in load_seed_tasks()]
    assert sum(i in "".join(prompts) for i in seeds) >= 3  # seed tasks were shown
    assert any(i in p for p in prompts[5:] for i in instructions)  # and so were generated ones
    assert json.loads(summary_path(out).read_text())["kept"] == 30
    assert all(KEY not in f.read_text() for f in tmp_path.iterdir())


def test_killed_run_resumes_without_loss_or_duplicates(tmp_path: Path):
    out = tmp_path / "gen.jsonl"
    args = [
        "generate",
        "--out",
        str(out),
        "--num",
        "40",
        "--teacher-model",
        "scripted",
        "--teacher-key-env",
        "LB_GEN_KEY",
        "--concurrency",
        "2",
        "--per-request",
        "3",
        "--timeout",
        "5",
    ]
    with ScriptedTeacher(self_instruct_responder(per_reply=3, dup_every=3), delay_s=0.05) as srv:
        proc = cli(*args, "--teacher-url", srv.url)
        deadline = time.time() + 20
        while len(read_jsonl(out)) < 10 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = read_jsonl(out)
        assert 10 <= len(before) < 40
        with open(out, "a") as f:  # as if killed in the middle of a line
            f.write('{"instruction": "Half a rec')
        proc = cli(*args, "--teacher-url", srv.url)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    after = read_jsonl(out)
    lines = out.read_text().splitlines()
    assert len(after) == len(lines) == 40  # the torn line was cut, not kept or glued to a record
    assert after[: len(before)] == before
    assert len({r["instruction"] for r in after}) == 40 and all(
        naive_filter([r["instruction"] for r in after])
    )
    assert "kept" in stderr and KEY not in stdout + stderr


def test_budget_stops_cleanly_and_holds_across_resumes(tmp_path: Path):
    out = tmp_path / "gen.jsonl"
    # each reply costs (100 + 200) tokens * $10/M = $0.003; a request may reserve up to ~$0.02 (prompt + 1000)
    args = [
        "generate",
        "--out",
        str(out),
        "--num",
        "500",
        "--teacher-model",
        "scripted",
        "--teacher-key-env",
        "LB_GEN_KEY",
        "--concurrency",
        "2",
        "--price-in",
        "10",
        "--price-out",
        "10",
        "--budget-usd",
        "0.05",
        "--max-tokens",
        "1000",
    ]
    with ScriptedTeacher(self_instruct_responder(per_reply=3)) as srv:
        proc = cli(*args, "--teacher-url", srv.url)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        summary = json.loads(summary_path(out).read_text())
        assert summary["stopped"] == "budget" and summary["usage"]["cost_usd"] <= 0.05
        assert summary["kept"] == len(read_jsonl(out)) == 3 * summary["usage"]["requests"]
        sent = len(srv.requests)
        proc = cli(*args, "--teacher-url", srv.url)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "budget" in stderr
    # the rerun counts the first run's spending: at most the slack left by requests in flight
    assert len(srv.requests) - sent <= 2 < sent
    summary = json.loads(summary_path(out).read_text())
    assert summary["usage"]["cost_usd"] <= 0.05 and summary["kept"] == len(read_jsonl(out))


def test_stalls_when_nothing_new_comes_back(tmp_path: Path):
    same = numbered_batch([("Explain what a compiler does for a programmer.", "", "It translates code.")])
    with ScriptedTeacher(lambda m, t: same) as srv:
        summary = generate(GenerateOptions(out=tmp_path / "g.jsonl", num=10, max_stale=5), teacher(srv.url))
    assert summary["stopped"] == "stalled" and summary["kept"] == 1
    assert summary["rejected"]["duplicate"] >= 4


def test_bad_seed_file_is_one_line_exit_2(tmp_path: Path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"instruction": 5, "output": "x"}\n')
    proc = cli(
        "generate",
        "--out",
        str(tmp_path / "o.jsonl"),
        "--num",
        "1",
        "--teacher-model",
        "m",
        "--seeds",
        str(seeds),
        "--teacher-url",
        "http://127.0.0.1:9/v1",
    )
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert stderr.strip().count("\n") == 0 and "seeds.jsonl:1: field 'instruction'" in stderr


def test_a_teacher_that_keeps_failing_ends_the_run_with_one_line(tmp_path: Path):
    out = tmp_path / "g.jsonl"
    with ScriptedTeacher(self_instruct_responder(per_reply=2), ["500"] * 50) as srv:
        proc = cli(
            "generate",
            "--out",
            str(out),
            "--num",
            "5",
            "--teacher-model",
            "m",
            "--teacher-url",
            srv.url,
            "--max-retries",
            "1",
            "--concurrency",
            "1",
        )
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "teacher failed 2 times, last: HTTP 500" in stderr
    assert json.loads(summary_path(out).read_text())["stopped"] == "error"
