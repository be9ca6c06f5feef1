"""Format conversions, and OpenAssistant trees to best-path chats and ranked preference pairs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llamabrew.data.convert import convert, load_oasst
from llamabrew.data.formats import load_examples
from llamabrew.errors import InputError
from llamabrew.io import read_jsonl


def write(path: Path, recs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    return path


def msg(mid: str, parent: str | None, role: str, text: str, rank: int | None = None, **kw) -> dict:
    return {
        "message_id": mid,
        "parent_id": parent,
        "role": role,
        "text": text,
        "rank": rank,
        "lang": "en",
        **kw,
    }


# a prompt with three ranked replies; the best one has a follow-up; one reply deleted; one orphan
OASST = [
    msg("p1", None, "prompter", "How do I boil an egg?"),
    msg("a1", "p1", "assistant", "Boil it for 9 minutes.", rank=1),
    msg("a2", "p1", "assistant", "Put it in boiling water for 7 minutes, then cool it.", rank=0),
    msg("a3", "p1", "assistant", "Eggs are laid by hens.", rank=2),
    msg("a4", "p1", "assistant", "spam", rank=None, deleted=True),
    msg("p2", "a2", "prompter", "And a soft one?"),
    msg("a5", "p2", "assistant", "About 5 minutes.", rank=0),
    msg("a6", "p2", "assistant", "An hour.", rank=1),
    msg("p3", "a4", "prompter", "reply to a deleted message"),
    msg("q1", None, "prompter", "Bonjour ?", lang="fr"),
    msg("b1", "q1", "assistant", "Bonjour !", rank=0, lang="fr"),
    msg("q2", None, "prompter", "A prompt nobody answered"),
]


def test_alpaca_to_chats_and_back(tmp_path: Path):
    src = write(
        tmp_path / "a.jsonl",
        [
            {"instruction": "Sum these.", "input": "2, 3", "output": "5"},
            {"instruction": "Say hi.", "input": "", "output": "Hi!"},
        ],
    )
    convert(src, tmp_path / "s.jsonl", "sharegpt")
    convert(tmp_path / "s.jsonl", tmp_path / "m.jsonl", "messages")
    report = convert(tmp_path / "m.jsonl", tmp_path / "back.jsonl", "alpaca")
    assert read_jsonl(tmp_path / "s.jsonl")[0] == {
        "conversations": [{"from": "human", "value": "Sum these.\n\n2, 3"}, {"from": "gpt", "value": "5"}]
    }
    assert read_jsonl(tmp_path / "m.jsonl")[1] == {
        "messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]
    }
    assert report["written"] == 2 and read_jsonl(tmp_path / "back.jsonl")[1] == {
        "instruction": "Say hi.",
        "input": "",
        "output": "Hi!",
    }
    assert len(load_examples(tmp_path / "s.jsonl")) == 2  # outputs are valid llamabrew input


def test_chats_alpaca_cannot_hold_are_skipped(tmp_path: Path):
    src = write(
        tmp_path / "m.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": "Be terse."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hi."},
                ]
            },
            {
                "messages": [
                    {"role": "user", "content": "1"},
                    {"role": "assistant", "content": "2"},
                    {"role": "user", "content": "3"},
                    {"role": "assistant", "content": "4"},
                ]
            },
            {"messages": [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "fine"}]},
        ],
    )
    report = convert(src, tmp_path / "a.jsonl", "alpaca")
    assert report["written"] == 1 and report["skipped"] == {"has_system_prompt": 1, "multi_turn": 1}
    report = convert(src, tmp_path / "s.jsonl", "sharegpt")
    assert read_jsonl(tmp_path / "s.jsonl")[0]["conversations"][0] == {"from": "system", "value": "Be terse."}


def test_oasst_best_paths(tmp_path: Path):
    src = write(tmp_path / "oa.jsonl", OASST)
    report = convert(src, tmp_path / "chats.jsonl", "messages", lang="en")
    chats = [[m["content"] for m in r["messages"]] for r in read_jsonl(tmp_path / "chats.jsonl")]
    assert chats == [
        [
            "How do I boil an egg?",
            "Put it in boiling water for 7 minutes, then cool it.",
            "And a soft one?",
            "About 5 minutes.",
        ]
    ]
    assert report["skipped"] == {"deleted": 1, "other_language": 2, "orphan": 1, "no_assistant_reply": 1}
    report = convert(src, tmp_path / "all.jsonl", "sharegpt")
    assert report["written"] == 2  # the French tree too


def test_oasst_ranked_pairs(tmp_path: Path):
    convert(write(tmp_path / "oa.jsonl", OASST), tmp_path / "pairs.jsonl", "pairs", lang="en")
    pairs = read_jsonl(tmp_path / "pairs.jsonl")
    first = [
        (p["chosen"][0]["content"][:8], p["rejected"][0]["content"][:8])
        for p in pairs
        if len(p["prompt"]) == 1
    ]
    assert sorted(first) == sorted(
        [("Put it i", "Boil it "), ("Put it i", "Eggs are"), ("Boil it ", "Eggs are")]
    )
    deep = [p for p in pairs if len(p["prompt"]) == 3]
    assert len(deep) == 1 and deep[0]["prompt"][-1] == {"role": "user", "content": "And a soft one?"}
    assert deep[0]["prompt"][1]["content"].startswith("Put it in")
    assert deep[0]["chosen"] == [{"role": "assistant", "content": "About 5 minutes."}]


def test_oasst_nested_trees(tmp_path: Path):
    tree = {
        "message_tree_id": "t1",
        "prompt": {
            "message_id": "p",
            "role": "prompter",
            "text": "Name a colour.",
            "replies": [
                {"message_id": "x", "role": "assistant", "text": "Red.", "rank": 1},
                {"message_id": "y", "role": "assistant", "text": "Blue.", "rank": 0, "replies": []},
            ],
        },
    }
    src = write(tmp_path / "trees.jsonl", [tree])
    roots, skipped = load_oasst(src)
    assert len(roots) == 1 and [c.id for c in roots[0].best_first()] == ["y", "x"] and not skipped
    convert(src, tmp_path / "a.jsonl", "alpaca")
    assert read_jsonl(tmp_path / "a.jsonl") == [
        {"instruction": "Name a colour.", "input": "", "output": "Blue."}
    ]


def test_bad_input_names_line_and_field(tmp_path: Path):
    src = write(tmp_path / "oa.jsonl", [msg("p", None, "prompter", "hi"), msg("a", "p", "robot", "beep")])
    with pytest.raises(InputError, match=r"oa.jsonl:2: field 'role': unknown role 'robot'"):
        convert(src, tmp_path / "o.jsonl", "messages")
    alpaca = write(tmp_path / "a.jsonl", [{"instruction": "x", "output": "y"}])
    with pytest.raises(InputError, match="ranked pairs need OpenAssistant"):
        convert(alpaca, tmp_path / "o.jsonl", "pairs")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "llamabrew.data.cli",
            "convert",
            "--in",
            str(alpaca),
            "--out",
            str(tmp_path / "o.jsonl"),
            "--to",
            "yaml",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2  # the recipe section checks the choice, before the file is read
    assert proc.stderr.strip() == "error: field 'to': Input should be 'alpaca', 'sharegpt', 'messages' or 'pairs'"
