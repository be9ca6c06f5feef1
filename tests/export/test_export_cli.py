"""`llamabrew export` / `llamabrew merge` as commands: a results table, one-line errors with exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from llamabrew.export import cli

app = typer.Typer()
app.command("export")(cli.export)
app.command("merge")(cli.merge)
runner = CliRunner()


def test_export_and_merge_commands(lora_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    res = runner.invoke(app, ["export", str(lora_run), "-q", "q8_0", "-o", str(tmp_path / "m.gguf")])
    assert res.exit_code == 0, res.output
    row = next(line for line in res.output.splitlines() if line.startswith("q8_0"))
    assert row.split()[-1] == "ok" and "same" in row
    assert (tmp_path / "m.gguf").is_file() and (tmp_path / "m.Modelfile").is_file()
    res = runner.invoke(app, ["export", str(lora_run), "--adapter-only", "-o", str(tmp_path / "a.gguf")])
    assert res.exit_code == 0 and (tmp_path / "a.gguf").is_file(), res.output
    assert "f16: mean KL" in res.output and "-> ok" in res.output  # checked on its base in llama.cpp
    res = runner.invoke(
        app,
        [
            "merge",
            "-a",
            str(lora_run),
            "-a",
            str(lora_run),
            "-w",
            "0.5",
            "-w",
            "0.5",
            "-o",
            str(tmp_path / "merged"),
        ],
    )
    assert res.exit_code == 0 and "x0.5" in res.output, res.output
    assert (tmp_path / "merged" / "config.json").is_file()


def test_errors_are_one_line_with_exit_code_2(lora_run: Path, tmp_path: Path) -> None:
    cases = [
        (["export", str(lora_run), "-q", "q3_k", "-o", str(tmp_path / "x.gguf")], "unknown quant type"),
        (["export", str(lora_run), "--adapter-only"], "needs --out"),
        (["merge", "-a", str(tmp_path), "-o", str(tmp_path / "m")], "not a PEFT adapter"),
        (["export", str(lora_run), "--no-verify", "--eval", "x.jsonl"], "cannot be combined"),
    ]
    for args, message in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, (
            args,
            res.output,
        )
