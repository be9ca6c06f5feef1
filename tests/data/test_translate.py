"""Translation over real HTTP: protected spans, refusals, budgets, shortest-first, and resume after kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scripted_teacher import ScriptedTeacher, fake_zh, translate_responder

from llamabrew.data.teacher import Price, TeacherConfig, TeacherError
from llamabrew.data.translate import TranslateOptions, check_translation, protect, restore, select, translate
from llamabrew.io import read_jsonl

CODE = "```python\nprint('hello world')\n```"
RECORDS = [
    {"instruction": "Explain what this code prints.", "input": CODE, "output": "It prints hello world once."},
    {
        "instruction": "Fill the template {name} with a real name.",
        "input": "",
        "output": "Dear {name}, hello.",
    },
    {
        "instruction": "Return the object as it is.",
        "input": '{"a": 1, "b": [2, 3]}',
        "output": 'Here it is: {"a": 1, "b": [2, 3]} and nothing more.',
    },
    {"instruction": "Add 12.5 and 30.", "input": "", "output": "The sum is 42.5."},
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hi to $USER"},
            {"role": "assistant", "content": "Hi $USER, see https://example.com/a?b=1 for more."},
        ]
    },
]


def cfg(url: str, **kw) -> TeacherConfig:
    base = dict(
        url=url,
        model="scripted",
        key_env="LB_TR_KEY",
        concurrency=2,
        timeout_s=2,
        max_retries=3,
        backoff_base_s=0.01,
        backoff_max_s=0.02,
    )
    return TeacherConfig(**(base | kw))


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_protect_and_restore_round_trip():
    text = (
        "Run `ls -la` then ```bash\necho {x}\n``` with {{var}}, <noinput>, %s, %(n)d, $HOME, [NAME], "
        'https://x.org/p and {"k": [1, {"z": null}]} or [1, 2].'
    )
    masked, kept = protect(text)
    for span in [
        "ls -la",
        "echo",
        "{{var}}",
        "<noinput>",
        "%s",
        "%(n)d",
        "$HOME",
        "[NAME]",
        "x.org",
        '"k"',
        "[1, 2]",
    ]:
        assert span not in masked, span
    assert restore(masked, kept) == text
    assert protect("Plain words, {not json here") == ("Plain words, {not json here", [])


@pytest.mark.parametrize(
    "translated,problem",
    [
        ("译译 ⟦0⟧ 译 12", None),
        ("", "empty"),
        ("译译 译 12", "lost_marker"),
        ("译译 ⟦0⟧ ⟦0⟧ 译 12", "lost_marker"),
        ("译译 ⟦0⟧ 译 十二", "lost_number"),
        ("译译 ⟦0⟧ 译 13", "lost_number"),
        ("译 12 译 ⟦0⟧ 译 7", None),
        ("Print the ⟦0⟧ value 12", "untranslated"),
        ("Printed ⟦0⟧ values 12 again", "untranslated"),
    ],
)
def test_check_translation(translated: str, problem: str | None):
    assert check_translation("Print the ⟦0⟧ value 12", translated, "zh") == problem


def test_select_shortest_first_within_char_budget():
    recs = [{"instruction": "x" * n, "output": "y"} for n in (50, 5, 20, 8, 100)]
    opts = TranslateOptions(Path("i"), Path("o"), "zh", budget_chars=40, shortest_first=True)
    assert select(recs, opts) == [1, 2, 3]  # 6 + 21 + 9 chars; in file order
    opts.shortest_first = False
    assert select(recs, opts) == [1, 2, 3]  # 51 does not fit, the rest do (skipping, not stopping)
    opts.budget_chars = 60
    assert select(recs, opts) == [0, 1]


def test_translate_keeps_code_json_numbers_and_placeholders(tmp_path: Path):
    inp, out = write(tmp_path / "in.jsonl", RECORDS), tmp_path / "zh.jsonl"
    with ScriptedTeacher(translate_responder(), ["429", "500"], retry_after="0.01") as srv:
        report = translate(TranslateOptions(inp, out, "zh"), cfg(srv.url, price=Price(1, 1)))
    got = read_jsonl(out)
    assert report["translated"] == 5 == len(got) and report["stopped"] == "done" and report["rejected"] == {}
    assert got[0]["input"] == CODE and "⟦" not in json.dumps(got, ensure_ascii=False)
    assert "{name}" in got[1]["output"] and "{name}" in got[1]["instruction"]
    assert got[2]["input"] == RECORDS[2]["input"] and '{"a": 1, "b": [2, 3]}' in got[2]["output"]
    assert "12.5" in got[3]["instruction"] and "42.5" in got[3]["output"]
    assert (
        got[4]["messages"][2]["content"].count("$USER") == 1
        and "https://example.com/a?b=1" in got[4]["messages"][2]["content"]
    )
    assert got[0]["instruction"] == fake_zh("Explain what this code prints.")
    unsent = len(CODE) + len(RECORDS[2]["input"])  # fields that are only code or JSON are not sent at all
    assert report["chars_selected"] - unsent == report["chars_sent_this_run"] > 0
    assert report["usage"]["retries"] == 2 and report["usage"]["cost_usd"] > 0


def test_bad_replies_are_retried_once_then_refused(tmp_path: Path):
    recs = [
        {"instruction": f"Say the word number {i} aloud.", "input": "", "output": f"Word {i}."}
        for i in range(4)
    ]
    inp, out = write(tmp_path / "in.jsonl", recs), tmp_path / "zh.jsonl"

    def mode(key: str, value: str) -> str:
        if "number 0" in value:
            return value  # echoed back untranslated
        if "number 1" in value:
            return ""
        if "number 2" in value:
            return fake_zh(value).replace("2", "二")  # number changed
        return fake_zh(value)

    with ScriptedTeacher(translate_responder(mode)) as srv:
        report = translate(TranslateOptions(inp, out, "zh"), cfg(srv.url))
    assert report["translated"] == 1 and report["rejected"] == {
        "untranslated": 1,
        "empty": 1,
        "lost_number": 1,
    }
    assert len(srv.requests) == 3 * 2 + 1  # one retry per refused record
    assert [r["instruction"] for r in read_jsonl(out)] == [fake_zh("Say the word number 3 aloud.")]


def test_budget_usd_stops_cleanly_and_a_rerun_finishes_from_cache(tmp_path: Path):
    recs = [
        {"instruction": f"Describe the colour of item {i} in a sentence.", "input": "", "output": "Blue."}
        for i in range(8)
    ]
    inp, out = write(tmp_path / "in.jsonl", recs), tmp_path / "zh.jsonl"
    price = Price(100.0, 100.0)  # $0.0001 per token; each reply reports 300 tokens = $0.03
    with ScriptedTeacher(translate_responder()) as srv:
        first = translate(TranslateOptions(inp, out, "zh", budget_usd=0.2), cfg(srv.url, price=price))
        assert first["usage"]["cost_usd"] <= 0.2 and 0 < first["translated"] < 8
        assert first["stopped"] == "budget" or first["not_selected_over_budget"] > 0
        sent = len(srv.requests)
        second = translate(TranslateOptions(inp, out, "zh"), cfg(srv.url))
    assert second["translated"] == 8 and second["from_cache"] == first["translated"]
    assert len(srv.requests) - sent == 8 - first["translated"]  # nothing paid twice
    assert [r["output"] for r in read_jsonl(out)] == [fake_zh("Blue.")] * 8


def test_killed_cli_run_resumes_from_cache(tmp_path: Path):
    recs = [
        {"instruction": f"Give a short fact about the number {i}.", "input": "", "output": f"{i} is {i}."}
        for i in range(30)
    ]
    inp, out = write(tmp_path / "in.jsonl", recs), tmp_path / "zh.jsonl"
    cache = tmp_path / "zh.jsonl.cache.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with ScriptedTeacher(translate_responder(), delay_s=0.05) as srv:
        args = [
            sys.executable,
            "-m",
            "llamabrew.data.cli",
            "translate",
            "--to",
            "zh",
            "--in",
            str(inp),
            "--out",
            str(out),
            "--teacher-model",
            "m",
            "--teacher-url",
            srv.url,
            "--concurrency",
            "2",
            "--budget-chars",
            "100000",
            "--shortest-first",
        ]
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 20
        while len(read_jsonl(cache)) < 6 and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = len(read_jsonl(cache))
        assert 6 <= done_before < 30 and not out.exists()
        proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    got = read_jsonl(out)
    assert [r["output"] for r in got] == [fake_zh(r["output"]) for r in recs]  # input order, nothing missing
    assert len(srv.requests) <= 30 + 2  # at most the two in flight at the kill were paid twice
    assert "translated" in proc.stderr


def test_bad_input_is_one_line_exit_2(tmp_path: Path):
    inp = write(
        tmp_path / "in.jsonl", [{"instruction": "ok", "output": "fine"}, {"instruction": "x", "output": 3}]
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "llamabrew.data.cli",
            "translate",
            "--to",
            "zh",
            "--in",
            str(inp),
            "--out",
            str(tmp_path / "o.jsonl"),
            "--teacher-model",
            "m",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "in.jsonl:2: field 'output': must be a string" in proc.stderr


def test_teacher_failure_still_saves_output_and_spending(tmp_path: Path):
    inp, out = write(tmp_path / "in.jsonl", RECORDS[:2]), tmp_path / "zh.jsonl"
    with ScriptedTeacher(translate_responder(), [None, "500", "500", "500"]) as srv:
        with pytest.raises(TeacherError, match="HTTP 500"):
            translate(TranslateOptions(inp, out, "zh"), cfg(srv.url, concurrency=1, max_retries=1))
    summary = json.loads((tmp_path / "zh.jsonl.summary.json").read_text())
    assert summary["stopped"] == "error" and summary["translated"] == 1 and summary["usage"]["requests"] == 1
    assert len(read_jsonl(out)) == 1
