"""Reading instruction data (Alpaca, ShareGPT, OpenAI messages) into `Example`s; one-line located errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llamabrew.data.formats import find_duplicates, load_examples, write_jsonl
from llamabrew.errors import InputError


def jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def roles(ex) -> list[str]:
    return [m.role for m in ex.messages]


def load_error(path: Path) -> InputError:
    with pytest.raises(InputError) as info:
        load_examples(path)
    msg = str(info.value)
    assert "\n" not in msg, "errors must fit on one line"
    assert str(path) in msg
    return info.value


# --- the formats that load ----------------------------------------------------------------------------------


def test_alpaca_jsonl(tmp_path: Path):
    path = jsonl(tmp_path / "a.jsonl", [
        {"instruction": "Name a color.", "output": "Teal."},
        {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
        {"instruction": "Say hi.", "input": None, "output": "Hi!"},
    ])
    exs = load_examples(path)
    assert len(exs) == 3
    assert roles(exs[0]) == ["user", "assistant"]
    assert (exs[0].instruction, exs[0].input, exs[0].output) == ("Name a color.", "", "Teal.")
    assert (exs[1].instruction, exs[1].input, exs[1].output) == ("Translate to French.", "cat", "chat")
    assert exs[1].messages[0].as_dict() == {"role": "user", "content": "Translate to French.", "input": "cat"}
    assert exs[1].messages[0].text() == "Translate to French.\n\ncat"
    assert exs[2].input == ""  # null input = no input
    assert exs[1].source == f"{path}:2"
    assert exs[1].to_alpaca() == {"instruction": "Translate to French.", "input": "cat", "output": "chat"}


def test_alpaca_json_list(tmp_path: Path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([
        {"instruction": "Name a color.", "input": "", "output": "Teal."},
        {"instruction": "Add.", "input": "2 + 2", "output": "4"},
    ], indent=2))
    exs = load_examples(path)
    assert [(e.instruction, e.input, e.output) for e in exs] == [("Name a color.", "", "Teal."),
                                                                 ("Add.", "2 + 2", "4")]
    assert exs[1].source == f"{path}[1]"


def test_sharegpt_with_system_turn(tmp_path: Path):
    path = jsonl(tmp_path / "s.jsonl", [{"conversations": [
        {"from": "system", "value": "You are terse."},
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello."},
        {"from": "human", "value": "Capital of Oskenland?"},
        {"from": "gpt", "value": "Brellin."},
    ]}])
    (ex,) = load_examples(path)
    assert [(m.role, m.content) for m in ex.messages] == [
        ("system", "You are terse."), ("user", "Hi"), ("assistant", "Hello."),
        ("user", "Capital of Oskenland?"), ("assistant", "Brellin."),
    ]
    assert ex.instruction == "Hi" and ex.output == "Brellin." and ex.input == ""


def test_openai_messages(tmp_path: Path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps([{"messages": [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
    ]}]))
    (ex,) = load_examples(path)
    assert roles(ex) == ["system", "user", "assistant"]
    assert [m.content for m in ex.messages] == ["Be kind.", "What is 2+2?", "4"]
    assert all(m.input == "" for m in ex.messages)


def test_utf8_bom_is_accepted(tmp_path: Path):
    path = tmp_path / "bom.jsonl"
    record = json.dumps({"instruction": "Grüß dich", "output": "Servus"}).encode()
    path.write_bytes(b"\xef\xbb\xbf" + record + b"\n")
    (ex,) = load_examples(path)
    assert ex.instruction == "Grüß dich"
    bom_list = tmp_path / "bom.json"
    bom_list.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"instruction": "a", "output": "b"}]).encode())
    assert load_examples(bom_list)[0].output == "b"


def test_blank_lines_and_crlf_are_fine_and_line_numbers_stay_true(tmp_path: Path):
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(b'{"instruction": "a", "output": "b"}\r\n\r\n{"instruction": "c", "output": "d"}\r\n')
    exs = load_examples(path)
    assert [e.output for e in exs] == ["b", "d"]
    assert exs[1].source == f"{path}:3"


def test_unicode_line_separators_inside_strings_round_trip(tmp_path: Path):
    """U+2028 / U+0085 are legal raw in JSON strings (json.dumps(ensure_ascii=False) writes them raw)."""
    records = [{"instruction": "first\u2028second", "input": "", "output": "x\x85y"},
               {"instruction": "b", "input": "", "output": "c"}]
    path = tmp_path / "seps.jsonl"
    write_jsonl(path, records)
    exs = load_examples(path)
    assert [e.to_alpaca() for e in exs] == records
    assert exs[1].source == f"{path}:2"


def test_find_duplicates_reports_sources(tmp_path: Path):
    path = jsonl(tmp_path / "d.jsonl", [
        {"instruction": "Name a color.", "output": "Teal."},
        {"instruction": "Other", "output": "thing"},
        {"instruction": "  Name a color. ", "output": "Teal."},  # same after trimming
        {"instruction": "Name a color.", "output": "Red."},  # different answer: not a duplicate
        {"instruction": "Name a color.", "output": "Teal."},
    ])
    exs = load_examples(path)
    assert find_duplicates(exs) == [(f"{path}:3", f"{path}:1"), (f"{path}:5", f"{path}:1")]
    assert find_duplicates(exs[:2]) == []


# --- errors: file + line (JSONL) or record index (JSON list) + field ----------------------------------------


def test_invalid_json_names_the_line(tmp_path: Path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n'
                    '{"instruction": "x",\n')
    err = load_error(path)
    assert err.line == 3
    assert f"{path}:3:" in str(err) and "invalid JSON" in str(err)


def test_invalid_json_in_a_json_list_names_the_line(tmp_path: Path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c" "output": "d"}\n]\n')
    err = load_error(path)
    assert err.line == 3 and f"{path}:3:" in str(err)


@pytest.mark.parametrize(("text", "got"), [
    ('{"instruction": "a",\n "output": "b"}\n', "dict"), ("42\n", "int"), ('"just a string"', "str"),
])
def test_wrong_top_level_type(tmp_path: Path, text: str, got: str):
    path = tmp_path / "top.json"
    path.write_text(text)
    err = load_error(path)
    assert "expected a list of records" in str(err) and got in str(err)


def test_record_that_is_not_an_object_in_json_list(tmp_path: Path):
    path = tmp_path / "l.json"
    path.write_text(json.dumps([{"instruction": "a", "output": "b"}, ["not", "an", "object"]]))
    err = load_error(path)
    assert err.record == 1
    assert f"{path} record 1:" in str(err) and "expected an object, got list" in str(err)


def test_record_that_is_not_an_object_in_jsonl(tmp_path: Path):
    path = tmp_path / "l.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n7\n')
    err = load_error(path)
    assert err.line == 2 and f"{path}:2:" in str(err) and "got int" in str(err)


@pytest.mark.parametrize(("record", "field", "reason"), [
    ({"output": "b"}, "instruction", "missing"),
    ({"instruction": "a"}, "output", "missing"),
    ({"instruction": "a", "output": ""}, "output", "empty"),
    ({"instruction": "a", "output": "   \n"}, "output", "empty"),
    ({"instruction": "  ", "output": "b"}, "instruction", "empty"),
    ({"instruction": "a", "output": 5}, "output", "must be a string, got int"),
    ({"instruction": "a", "output": ["b"]}, "output", "must be a string, got list"),
    ({"instruction": "a", "input": 3, "output": "b"}, "input", "must be a string, got int"),
    ({"instruction": "a", "input": {"k": 1}, "output": "b"}, "input", "must be a string, got dict"),
])
def test_bad_alpaca_fields_name_line_and_field(tmp_path: Path, record: dict, field: str, reason: str):
    path = jsonl(tmp_path / "f.jsonl", [{"instruction": "ok", "output": "ok"}, record])
    err = load_error(path)
    assert (err.line, err.field) == (2, field)
    assert f"{path}:2: field '{field}':" in str(err) and reason in str(err)


def test_bad_field_in_json_list_names_record_index(tmp_path: Path):
    path = tmp_path / "f.json"
    good, bad = {"instruction": "a", "output": "b"}, {"instruction": "a", "output": ""}
    path.write_text(json.dumps([good, good, bad]))
    err = load_error(path)
    assert (err.record, err.field, err.line) == (2, "output", None)
    assert f"{path} record 2: field 'output': is empty" in str(err)


def test_not_utf8_names_the_line(tmp_path: Path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": "b"}\n'
                     + '{"instruction": "Café", "output": "x"}\n'.encode("latin-1"))
    err = load_error(path)
    assert err.line == 3 and f"{path}:3:" in str(err) and "UTF-8" in str(err)


@pytest.mark.parametrize("content", [b"", b"  \n\t\n  "])
def test_empty_and_whitespace_only_files(tmp_path: Path, content: bytes):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    assert "empty" in str(load_error(path))


def test_empty_json_list_has_no_records(tmp_path: Path):
    path = tmp_path / "none.json"
    path.write_text("[]")
    assert "no records" in str(load_error(path))


def test_missing_file(tmp_path: Path):
    assert "no such file" in str(load_error(tmp_path / "nope.jsonl"))


def test_chat_that_does_not_alternate(tmp_path: Path):
    path = jsonl(tmp_path / "c.jsonl", [{"messages": [
        {"role": "user", "content": "a"}, {"role": "user", "content": "b"},
        {"role": "assistant", "content": "c"},
    ]}])
    err = load_error(path)
    assert err.line == 1 and err.field == "messages[1]"
    assert "alternate" in str(err) and "messages[1]" in str(err)


def test_chat_alternation_counts_the_system_turn(tmp_path: Path):
    path = jsonl(tmp_path / "c.jsonl", [{"conversations": [
        {"from": "system", "value": "s"}, {"from": "human", "value": "a"}, {"from": "gpt", "value": "b"},
        {"from": "gpt", "value": "c"},
    ]}])
    err = load_error(path)
    assert err.field == "conversations[3]" and "expected user" in str(err)


def test_chat_ending_with_user_turn(tmp_path: Path):
    path = jsonl(tmp_path / "c.jsonl", [{"conversations": [
        {"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}, {"from": "human", "value": "c"},
    ]}])
    err = load_error(path)
    assert err.field == "conversations" and "end with an assistant turn" in str(err)


def test_chat_with_only_a_system_turn(tmp_path: Path):
    path = jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "system", "content": "s"}]}])
    assert "end with an assistant turn" in str(load_error(path))


def test_unknown_role(tmp_path: Path):
    path = jsonl(tmp_path / "c.jsonl", [{"instruction": "a", "output": "b"}, {"messages": [
        {"role": "user", "content": "a"}, {"role": "robot", "content": "b"},
    ]}])
    err = load_error(path)
    assert err.line == 2 and err.field == "messages[1].role" and "'robot'" in str(err)


@pytest.mark.parametrize(("turns", "field"), [
    ([], "conversations"),
    ("hello", "conversations"),
    ([{"from": "human", "value": "a"}, "gpt: b"], "conversations[1]"),
    ([{"from": "human", "value": "a"}, {"from": "gpt", "value": 3}], "conversations[1].value"),
    ([{"from": "human", "value": "a"}, {"from": "gpt", "value": " "}], "conversations[1].value"),
])
def test_malformed_turns(tmp_path: Path, turns, field: str):
    err = load_error(jsonl(tmp_path / "c.jsonl", [{"conversations": turns}]))
    assert err.field == field and f"field '{field}'" in str(err)


def test_unknown_record_format(tmp_path: Path):
    path = jsonl(tmp_path / "u.jsonl", [{"instruction": "a", "output": "b"},
                                         {"prompt": "a", "completion": "b"}])
    err = load_error(path)
    assert err.line == 2 and "unknown record format" in str(err)
