"""Preference pairs and RL prompts: TRL's layouts (text or messages), one-line errors with file, line and field,
and their encoding (only the final answer is a target; prompt tokens shared by both sides)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llamabrew.data.encode import IGNORE, encode_pairs
from llamabrew.data.preference import load_pairs, load_prompts
from llamabrew.data.templates import get_template
from llamabrew.errors import InputError


def write(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = {"prompt": "Name a colour.", "chosen": "Teal, friend!", "rejected": "red"}


def test_text_and_message_layouts(tmp_path: Path):
    chat = {"prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi?"}],
            "chosen": [{"role": "assistant", "content": "Hello there!"}],
            "rejected": [{"role": "assistant", "content": "What."}], "margin": 2}
    pairs = load_pairs(write(tmp_path / "p.jsonl", [GOOD, chat]))
    assert pairs[0].prompt[0].content == "Name a colour." and pairs[0].margin is None
    assert [m.role for m in pairs[1].prompt] == ["system", "user"] and pairs[1].chosen == "Hello there!"
    assert pairs[1].margin == 2.0 and pairs[1].source.endswith("p.jsonl:2")


@pytest.mark.parametrize(("row", "where"), [
    ({"chosen": "a", "rejected": "b"}, "p.jsonl:2: field 'prompt': missing"),
    ({**GOOD, "chosen": ""}, "p.jsonl:2: field 'chosen'"),
    ({**GOOD, "rejected": 3}, "p.jsonl:2: field 'rejected'"),
    ({**GOOD, "rejected": "Teal, friend!"}, "p.jsonl:2: field 'rejected': chosen and rejected are the same"),
    ({**GOOD, "margin": "big"}, "p.jsonl:2: field 'margin'"),
    ({**GOOD, "prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
     "p.jsonl:2: field 'prompt': the prompt must end with a user message"),
    ({**GOOD, "prompt": [{"role": "robot", "content": "q"}]}, "p.jsonl:2: field 'prompt': message 0"),
    ({**GOOD, "chosen": [{"role": "user", "content": "x"}]}, "p.jsonl:2: field 'chosen': expected one assistant"),
])
def test_bad_pairs_name_file_line_and_field(tmp_path: Path, row: dict, where: str):
    with pytest.raises(InputError) as e:
        load_pairs(write(tmp_path / "p.jsonl", [GOOD, row]))
    assert where in str(e.value)


def test_prompts_for_online_rl(tmp_path: Path):
    prompts = load_prompts(write(tmp_path / "q.jsonl", [{"prompt": "2+2?", "reference": "4", "id": 7},
                                                        {"prompt": "Say hi."}]))
    assert prompts[0].reference == "4" and prompts[0].row["id"] == 7 and prompts[1].reference is None
    with pytest.raises(InputError, match=r"q.jsonl:1: field 'reference'"):
        load_prompts(write(tmp_path / "q.jsonl", [{"prompt": "2+2?", "reference": 4}]))


def test_pairs_encode_with_shared_prompt_and_only_the_last_answer_as_target(tmp_path: Path, tiny_tokenizer):
    chat = {"prompt": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."},
                       {"role": "user", "content": "Name a colour."}],
            "chosen": "Teal, friend!", "rejected": "red", "margin": 1.5}
    pairs = load_pairs(write(tmp_path / "p.jsonl", [chat]))
    (enc,), report = encode_pairs(pairs, tiny_tokenizer, get_template("chatml"), cutoff_len=256)
    assert report.kept == 1 and enc.margin == 1.5
    for side, text in ((enc.chosen, "Teal, friend!"), (enc.rejected, "red")):
        targets = [t for t, lab in zip(side.input_ids, side.labels, strict=True) if lab != IGNORE]
        assert tiny_tokenizer.decode(targets).strip().startswith(text)  # the answer (and EOS), not "Hello."
        assert targets[-1] == tiny_tokenizer.eos_token_id
    first_target = enc.chosen.labels.index(next(lab for lab in enc.chosen.labels if lab != IGNORE))
    assert enc.chosen.input_ids[:first_target] == enc.rejected.input_ids[:first_target]  # the same prompt


def test_openassistant_ranked_pairs_load_as_preference_pairs(tmp_path: Path):
    """`llamabrew data convert --to pairs` writes what the preference loader reads (TRL's conversational
    layout, prompts that end with the user's turn)."""
    from data.test_convert import OASST, write

    from llamabrew.data.convert import convert
    from llamabrew.data.preference import load_pairs

    convert(write(tmp_path / "oa.jsonl", OASST), tmp_path / "pairs.jsonl", "pairs", lang="en")
    pairs = load_pairs(tmp_path / "pairs.jsonl")
    assert pairs and all(p.prompt[-1].role == "user" and p.chosen != p.rejected for p in pairs)
