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


# --- flags declared once: derived from the recipe's fields, `--set` for the rest, recipe sections -------------


def test_every_flag_is_a_recipe_field_described_once(invoke):
    """A flag's help is its field's description, so a field is written down in one place."""
    from llamabrew.cli import EVAL_FLAGS, PRETRAIN_FLAGS, TRAIN_FLAGS
    from llamabrew.export.cli import EXPORT_FLAGS
    from llamabrew.recipe import EvalRecipe, ExportRecipe, PretrainRecipe, Recipe, ServeRecipe, field_of
    from llamabrew.serve.cli import SERVE_FLAGS

    for cls, flags, command in [(Recipe, TRAIN_FLAGS, "train"), (PretrainRecipe, PRETRAIN_FLAGS, "pretrain"),
                                (EvalRecipe, EVAL_FLAGS, "eval"), (ExportRecipe, EXPORT_FLAGS, "export"),
                                (ServeRecipe, SERVE_FLAGS, "serve")]:
        shown = " ".join(invoke(command, "--help").stdout.split())
        for spec in flags.values():
            dotted = spec if isinstance(spec, str) else spec[0]
            description = field_of(cls, dotted).description
            assert description, f"{command}: {dotted} has no description"
            assert " ".join(description.split())[:40] in shown, (command, dotted)
        assert "--set" in shown


def test_set_and_flags_reach_the_recipe(invoke, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from types import SimpleNamespace

    import llamabrew.train as train_stage

    seen = []

    def fake_run(recipe):
        seen.append(recipe)
        return SimpleNamespace(steps=1, train_loss=1.0, val_loss=None, out=recipe.out)

    monkeypatch.setattr(train_stage, "run", fake_run)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  weight_decay: 0.5\n  epochs: 7\n", encoding="utf-8")
    result = invoke("train", recipe, "--base", "b", "--epochs", "2", "--set", "optim.weight_decay=0.01",
                    "--set", "lora.target_modules=[q_proj, v_proj]", "--set", "data.packing=true", "--drop-duplicates")
    assert result.exit_code == 0, result.stderr
    r = seen[-1]
    assert r.model.base == "b" and r.optim.epochs == 2 and r.optim.weight_decay == 0.01
    assert r.lora.target_modules == ["q_proj", "v_proj"] and r.data.packing is True and r.data.drop_duplicates
    assert r.resume is False  # a switch left off does not override the recipe
    bad = invoke("train", "--base", "b", "--set", "optim.wieght_decay=1")
    assert bad.exit_code == 2 and error_lines(bad.stderr) == [
        "error: --set optim.wieght_decay=1: no such recipe field 'optim.wieght_decay'"]
    bad = invoke("train", "--base", "b", "--set", "optim.epochs")
    assert bad.exit_code == 2 and "expected KEY=VALUE" in bad.stderr


def test_eval_export_and_serve_read_recipe_sections(invoke, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """`eval`, `export` and `serve` take the fields of their recipe section from a YAML file, flags on top."""
    import llamabrew.evaluate as evaluate
    import llamabrew.export as export_stage
    from llamabrew.evaluate import EvalReport, EvalResult

    calls: dict[str, tuple] = {}
    monkeypatch.setattr(evaluate, "run", lambda *a, **k: calls.setdefault("eval", (a, k))
                        and EvalResult(EvalReport(1, 1.0, 1.0)))
    (tmp_path / "eval.yaml").write_text("model: runs/x\ndata: held.jsonl\nmax_new_tokens: 9\n", encoding="utf-8")
    result = invoke("eval", "--recipe", tmp_path / "eval.yaml", "--limit", "3", "--json")
    assert result.exit_code == 0, result.stderr
    args, kwargs = calls["eval"]
    assert args == ("runs/x", Path("held.jsonl")) and kwargs["max_new_tokens"] == 9 and kwargs["limit"] == 3
    assert json.loads(result.stdout)["n"] == 1

    class Report:
        source, template, results = "runs/x", "alpaca", []

        def lines(self):
            return []

    monkeypatch.setattr(export_stage, "export_gguf", lambda *a, **k: calls.setdefault("export", (a, k)) and Report())
    (tmp_path / "export.yaml").write_text("model: runs/x\nquants: [q8_0, q4_k_m]\nverify: false\n", encoding="utf-8")
    result = invoke("export", "--recipe", tmp_path / "export.yaml", "-q", "f16", "--no-modelfile")
    assert result.exit_code == 0, result.stderr
    args, kwargs = calls["export"]
    assert args[:2] == ("runs/x", ["f16"]) and kwargs["verify"] is False and kwargs["modelfile"] is False

    (tmp_path / "serve.yaml").write_text("model: runs/x.gguf\nport: 9999\n", encoding="utf-8")
    result = invoke("serve", "--recipe", tmp_path / "serve.yaml", "--set", "port=70000")
    assert result.exit_code == 2 and "field 'port'" in result.stderr  # validated like any recipe
