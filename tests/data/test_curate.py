"""Curation: duplicates, near-duplicates, token lengths, scripts, seeded split, and the stats report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llamabrew.data.curate import CurateOptions, curate, instruction_verb, letter_scripts
from llamabrew.io import read_jsonl

TOPICS = [
    "volcanoes",
    "tax returns",
    "sourdough",
    "jazz chords",
    "tide pools",
    "chess openings",
    "bus routes",
    "solar panels",
    "knitting",
    "cloud storage",
    "bee keeping",
    "marathon training",
]
SHAPES = ["how", "a poem about", "five facts on", "the history of"]
VERBS = ["Explain", "Write", "List", "Summarize", "Describe", "Give"]


def records() -> list[dict]:
    recs = [
        {
            "instruction": f"{VERBS[i % 6]} {SHAPES[i % 4]} "
            f"{t} {['for beginners', 'in winter', 'on a budget'][i % 3]}",
            "input": "",
            "output": " ".join(["word"] * (5 + 7 * i)),
        }
        for i, t in enumerate(TOPICS)
    ]
    recs.append(dict(recs[0]))  # exact duplicate
    recs.append(
        {**recs[1], "instruction": "  " + recs[1]["instruction"].replace(" ", "   ") + " "}
    )  # whitespace
    recs.append({**recs[2], "instruction": recs[2]["instruction"].replace("five", "six")})  # near duplicate
    recs.append(
        {"instruction": "解释火山是如何形成的", "input": "", "output": "火山是由地下岩浆喷出地表形成的。"}
    )
    recs.append({"instruction": "What is the capital of France?", "input": "", "output": "Paris " * 400})
    return recs


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A tiny byte-level BPE tokenizer trained here, saved as a transformers tokenizer folder."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        [json.dumps(r) for r in records()] * 3,
        vocab_size=400,
        min_frequency=1,
        special_tokens=["<s>", "</s>"],
        show_progress=False,
    )
    out = tmp_path_factory.mktemp("tok")
    PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>"
    ).save_pretrained(out)
    return out


def write(path: Path, recs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    return path


def test_full_pipeline_with_tokenizer_lengths(tmp_path: Path, tokenizer_dir: Path):
    recs = records()
    a = write(tmp_path / "a.jsonl", recs[:10])
    b = write(tmp_path / "b.jsonl", recs[10:])
    out = tmp_path / "cur"
    report = curate(
        CurateOptions(
            [a, b],
            out,
            tokenizer=str(tokenizer_dir),
            max_length=300,
            lang="en",
            sort_by_length=True,
            val_fraction=0.2,
            seed=3,
        )
    )
    assert report["read"] == 17 and report["length_unit"] == "tokens"
    assert report["removed"] == {"exact_duplicate": 2, "script": 1, "length": 1, "near_duplicate": 1}
    assert report["kept"] == 12 == report["train"] + report["val"] and report["val"] == 2
    train, val = read_jsonl(out / "train.jsonl"), read_jsonl(out / "val.jsonl")
    assert not {r["instruction"] for r in train} & {r["instruction"] for r in val}
    assert [len(r["output"]) for r in train] == sorted(len(r["output"]) for r in train)
    assert all(r in recs for r in train + val)  # records written back unchanged
    assert (out / "lengths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "report.json").read_text())
    assert dict(saved["top_verbs"])["explain"] == 2 and saved["length"]["max"] <= 300
    assert any(v.startswith("list five") or v.startswith("list facts") for v, _ in saved["top_verb_objects"])


def test_split_is_seeded_and_words_are_the_default_unit(tmp_path: Path):
    inp = write(tmp_path / "in.jsonl", records()[:12])

    def val_of(seed: int, name: str) -> list[dict]:
        report = curate(
            CurateOptions([inp], tmp_path / name, val_fraction=0.25, seed=seed, near_dup_threshold=None)
        )
        assert report["length_unit"] == "words" and report["val"] == 3
        return read_jsonl(tmp_path / name / "val.jsonl")

    assert val_of(1, "x") == val_of(1, "y") != val_of(2, "z")


def test_script_filter_keeps_chinese(tmp_path: Path):
    inp = write(tmp_path / "in.jsonl", records())
    report = curate(CurateOptions([inp], tmp_path / "zh", scripts={"han"}, val_fraction=0))
    assert report["kept"] == 1 and report["train"] == 1 and report["no_leading_verb"] == 1


def test_cli_and_its_errors(tmp_path: Path):
    inp = write(tmp_path / "in.jsonl", records())
    run = [
        sys.executable,
        "-m",
        "llamabrew.data.cli",
        "curate",
        "--in",
        str(inp),
        "--out-dir",
        str(tmp_path / "o"),
    ]
    ok = subprocess.run(run + ["--max-length", "300"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "near_duplicate" in ok.stderr and (tmp_path / "o" / "train.jsonl").exists()
    bad = subprocess.run(run + ["--script", "klingon"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown script 'klingon'" in bad.stderr
    broken = write(tmp_path / "broken.jsonl", [{"instruction": "x"}])
    bad = subprocess.run(run[:5] + [str(broken)] + run[6:], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "broken.jsonl:1: field 'output': missing" in bad.stderr


@pytest.mark.parametrize(
    "text,verb",
    [
        ("Write a short poem about autumn.", ("write", "poem")),
        ("Please list the planets in order.", ("list", "planets")),
        ("Generate three names for a cat.", ("generate", "names")),
        ("What is the boiling point of water?", None),
        ("Given the text, find the main idea.", None),
    ],
)
def test_instruction_verb(text: str, verb):
    assert instruction_verb(text) == verb


def test_letter_scripts():
    shares = letter_scripts("Hello 世界!! 123")
    assert shares == {"latin": 5 / 7, "han": 2 / 7}
    assert letter_scripts("123 !!") == {}
    assert letter_scripts("Привет")["cyrillic"] == 1.0


def test_cli_takes_the_curate_recipe_a_pipeline_stage_takes(tmp_path: Path):
    from typer.testing import CliRunner

    from llamabrew.cli import app

    inp = write(tmp_path / "in.jsonl", records())
    recipe = tmp_path / "curate.yaml"
    recipe.write_text(f"inputs: [{inp}]\nout_dir: {tmp_path / 'o'}\nval_fraction: 0.5\nmax_length: 300\n")
    done = CliRunner().invoke(app, ["data", "curate", "--recipe", str(recipe), "--val-fraction", "0.25"])
    assert done.exit_code == 0, done.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["val"] == round(report["kept"] * 0.25)  # the flag overrode the file
    recipe.write_text(recipe.read_text() + "scirpt: [han]\n")
    done = CliRunner().invoke(app, ["data", "curate", "--recipe", str(recipe)])
    assert done.exit_code == 2 and f"{recipe}: field 'scirpt'" in done.stderr
