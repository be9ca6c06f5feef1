"""What a run costs: a $ budget stops training cleanly with a checkpoint (a tiny CPU run at a fake price), a
resumed run counts what was spent before, and every summary carries device-hours and cost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from llamabrew.run import Run


def test_budget_stops_with_a_checkpoint_and_the_summary_says_what_it_cost(tmp_path: Path, tiny_model_dir: Path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Add {a} and {b}.", "output": f"{a + b}"}) + "\n"
                            for a in range(10) for b in range(10)))
    cli = [sys.executable, "-m", "llamabrew.cli", "train", "--base", str(tiny_model_dir), "--data", str(data),
           "--threads", "1", "--template", "alpaca_short", "--val-fraction", "0", "--max-steps", "100000",
           "--out", str(tmp_path / "run"), "--price-per-hour", "3600"]  # a fake price: $1 a second
    done = subprocess.run([*cli, "--budget-usd", "3"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "budget $3 spent" in done.stderr and "about $" in done.stderr  # said in the plan too
    summary = Run(tmp_path / "run").summary()
    assert summary.stopped_early and 0 < summary.steps < 100000
    assert 3.0 <= summary.cost_usd < 3.0 + 1.0  # stops at the first step past the budget
    assert summary.device_hours == summary.elapsed_s / 3600
    assert list((tmp_path / "run" / "checkpoints").iterdir())  # resumable
    more = subprocess.run([*cli, "--budget-usd", "5", "--resume"], capture_output=True, text=True, timeout=300)
    assert more.returncode == 0, more.stderr
    again = Run(tmp_path / "run").summary()
    assert again.steps > summary.steps and 5.0 <= again.cost_usd < 6.0  # the first $3 counted


def test_a_budget_without_a_price_fails_before_loading_anything(tmp_path: Path, tiny_model_dir: Path):
    from typer.testing import CliRunner

    from llamabrew.cli import app

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"instruction": "Hi", "output": "Hello"}) + "\n")
    res = CliRunner(env={"LLAMABREW_USD_PER_HOUR": ""}).invoke(
        app, ["train", "--base", str(tiny_model_dir), "--data", str(data), "--budget-usd", "1",
              "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--budget-usd needs the machine's price" in res.output
    assert not (tmp_path / "x").exists()
