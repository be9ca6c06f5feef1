"""The `llamabrew` command: help texts; bad input → one located line on stderr, exit 2, nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXE = Path(sys.executable).with_name("llamabrew")
LLAMABREW = [str(EXE)] if EXE.exists() else [sys.executable, "-m", "llamabrew.cli"]
ENV = {**os.environ, "COLUMNS": "200"}


@pytest.fixture
def invoke():
    """Run the CLI in this process, with library progress bars off as the CLI's own process has them."""
    import torch
    from transformers.utils import logging as hf_logging
    from typer.testing import CliRunner

    from llamabrew.cli import app

    was_on, threads = hf_logging.is_progress_bar_enabled(), torch.get_num_threads()
    hf_logging.disable_progress_bar()
    yield lambda *args: CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    torch.set_num_threads(threads)  # the CLI sets its own thread count
    if was_on:
        hf_logging.enable_progress_bar()


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip()]


# --- help ---------------------------------------------------------------------------------------------------


def test_top_level_help_from_the_console_script():
    proc = subprocess.run([*LLAMABREW, "--help"], capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 0, proc.stderr
    for command in ("train", "pretrain", "eval", "chat", "quickstart"):
        assert command in proc.stdout
    assert "instruction-following" in proc.stdout


HELP_FLAGS = {
    "train": ["--base", "--data", "--out", "--template", "--lr", "--cutoff-len", "--overlong", "--lora-r",
              "--max-minutes", "--resume", "--qlora", "recipe YAML"],
    "pretrain": ["--corpus", "--out", "--max-minutes", "--vocab-size", "--seq-len", "--resume"],
    "eval": ["--data", "--base", "--adapter", "--compare", "--json", "--max-new-tokens", "--samples"],
    "chat": ["--prompt", "--system", "--temperature", "--top-p", "--max-new-tokens", "--adapter", "MODEL"],
    "quickstart": ["--out", "--entities", "--pretrain-minutes", "--seed"],
}


@pytest.mark.parametrize("command", list(HELP_FLAGS))
def test_subcommand_help_describes_flags(invoke, command: str):
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    for flag in HELP_FLAGS[command]:
        assert flag in result.stdout, (command, flag)
    assert "Usage" in result.stdout


def test_no_arguments_shows_help(invoke):
    result = invoke()
    assert "train" in result.output and "Usage" in result.output


# --- bad input: one line, exit 2, nothing half-written ------------------------------------------------------

GOOD = {"instruction": "Name a color.", "output": "Teal."}


def bad_files(tmp_path: Path) -> dict[str, tuple[Path, list[str]]]:
    """name → (file, strings the error line must contain)."""
    cases = {}
    p = tmp_path / "bad_json.jsonl"
    p.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD) + '\n{"instruction": "x", "output": \n')
    cases["invalid_json"] = (p, [f"{p.name}:3:", "invalid JSON"])
    p = tmp_path / "no_output.jsonl"
    p.write_text(json.dumps(GOOD) + "\n" + json.dumps({"instruction": "x"}) + "\n")
    cases["missing_output"] = (p, [f"{p.name}:2:", "'output'", "missing"])
    p = tmp_path / "latin1.jsonl"
    latin1 = '{"instruction": "Caf\u00e9", "output": "x"}\n'.encode("latin-1")
    p.write_bytes(json.dumps(GOOD).encode() + b"\n" + latin1)
    cases["not_utf8"] = (p, [f"{p.name}:2:", "UTF-8"])
    p = tmp_path / "empty_output.json"
    p.write_text(json.dumps([GOOD, GOOD, {"instruction": "x", "output": ""}]))
    cases["empty_output_in_list"] = (p, [f"{p.name} record 2:", "'output'", "empty"])
    p = tmp_path / "chat.jsonl"
    p.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    cases["chat_ends_with_user"] = (p, [f"{p.name}:1:", "'messages'", "assistant"])
    return cases


CASES = ["invalid_json", "missing_output", "not_utf8", "empty_output_in_list", "chat_ends_with_user"]


def assert_nothing_written(out: Path) -> None:
    written = sorted(p.name for p in out.rglob("*")) if out.exists() else []
    weights = [n for n in written if n.startswith("adapter") or n.endswith((".safetensors", ".bin"))]
    assert not weights, written
    assert "recipe.yaml" not in written and "checkpoints" not in written, written


def test_train_bad_data_in_a_fresh_process(tiny_model_dir: Path, tmp_path: Path):
    """The console script itself: exactly one line on stderr, exit 2, no traceback, no library noise."""
    path, expected = bad_files(tmp_path)["invalid_json"]
    out = tmp_path / "X"
    proc = subprocess.run([*LLAMABREW, "train", "--base", str(tiny_model_dir), "--data", str(path),
                           "--out", str(out)], capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 2, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    for s in expected:
        assert s in lines[0]
    assert str(path) in lines[0]
    assert_nothing_written(out)


@pytest.mark.parametrize("case", CASES)
def test_train_bad_data(invoke, tiny_model_dir: Path, tmp_path: Path, case: str):
    path, expected = bad_files(tmp_path)[case]
    out = tmp_path / "X"
    result = invoke("train", "--base", tiny_model_dir, "--data", path, "--out", out)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # a handled exit, not a crash
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and str(path) in lines[0]
    for s in expected:
        assert s in lines[0], (s, lines[0])
    assert "Traceback" not in result.output and result.stdout == ""
    assert_nothing_written(out)


def test_train_bad_file_after_a_good_one_is_named(invoke, tiny_model_dir: Path, tmp_path: Path):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(GOOD) + "\n")
    bad, _ = bad_files(tmp_path)["missing_output"]
    result = invoke("train", "--base", tiny_model_dir, "--data", good, "--data", bad, "--out", tmp_path / "X")
    assert result.exit_code == 2
    (line,) = error_lines(result.stderr)
    assert f"{bad}:2" in line and "good.jsonl" not in line


def test_train_unknown_template(invoke, tiny_model_dir: Path, tmp_path: Path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(GOOD) + "\n")
    result = invoke("train", "--base", tiny_model_dir, "--data", data, "--out", tmp_path / "X",
                    "--template", "llama9")
    assert result.exit_code == 2
    (line,) = error_lines(result.stderr)
    assert "llama9" in line and "chatml" in line
    assert_nothing_written(tmp_path / "X")


def test_train_recipe_with_unknown_key(invoke, tmp_path: Path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  base: x\noptim:\n  learnin_rate: 0.001\n")
    result = invoke("train", recipe)
    assert result.exit_code == 2
    (line,) = error_lines(result.stderr)
    assert str(recipe) in line and "optim.learnin_rate" in line


def test_train_recipe_with_invalid_yaml(invoke, tmp_path: Path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  base: x\n bad: 1\n")
    result = invoke("train", recipe, "--lr", "1e-4")
    assert result.exit_code == 2
    (line,) = error_lines(result.stderr)
    assert f"{recipe}:3:" in line and "invalid YAML" in line


def test_train_without_data_or_base(invoke, tiny_model_dir: Path, tmp_path: Path):
    result = invoke("train", "--base", tiny_model_dir, "--out", tmp_path / "X")
    assert result.exit_code == 2 and "--data" in error_lines(result.stderr)[0]
    result = invoke("train", "--data", tmp_path / "d.jsonl", "--out", tmp_path / "X")
    assert result.exit_code == 2 and "--base" in error_lines(result.stderr)[0]


def test_eval_missing_data_file(invoke, tiny_model_dir: Path, tmp_path: Path):
    missing = tmp_path / "nope.jsonl"
    result = invoke("eval", "--base", tiny_model_dir, "--data", missing)
    assert result.exit_code == 2
    (line,) = error_lines(result.stderr)
    assert str(missing) in line and "no such file" in line
