"""A run killed with SIGKILL and resumed ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

LLAMABREW = [sys.executable, "-m", "llamabrew.cli"]


def write_data(path: Path, n: int = 48) -> Path:
    recs = [{"instruction": f"Add {a} and {b}.", "input": "", "output": f"{a} + {b} = {a + b}."}
            for a in range(n // 6) for b in range(6)]
    path.write_text(json.dumps(recs))
    return path


def train_args(base: Path, data: Path, out: Path) -> list[str]:
    return [*LLAMABREW, "train", "--base", str(base), "--data", str(data), "--out", str(out),
            "--template", "alpaca_short", "--max-steps", "60", "--save-every", "4", "--eval-every", "10",
            "--micro-batch-size", "4", "--grad-accum", "2", "--lora-dropout", "0.1", "--threads", "1",
            "--seed", "7"]


def losses(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]


def kill_after_checkpoint(cmd: list[str], out: Path, env: dict[str, str], step: int = 12) -> None:
    """Start a training run and SIGKILL it once checkpoint ``step`` is on disk (before it can finish)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((out / "checkpoints").glob(f"step-{step:07d}")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if (out / "adapter_model.safetensors").exists():
        pytest.fail("the run finished before it could be killed; make it longer")


def test_sigkill_then_resume_reaches_the_same_weights_and_loss(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = write_data(tmp_path / "add.json")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(train_args(tiny_model_dir, data, straight), check=True, env=env, capture_output=True)

    kill_after_checkpoint(train_args(tiny_model_dir, data, killed), killed, env)
    done_before_kill = max(r["step"] for r in losses(killed))
    assert 12 <= done_before_kill < 60

    resumed = subprocess.run([*train_args(tiny_model_dir, data, killed), "--resume"], env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr

    a, b = losses(straight), losses(killed)
    assert [r["step"] for r in b] == [r["step"] for r in a] == list(range(1, 61))  # no gap, no duplicate
    assert b[-1]["loss"] == a[-1]["loss"]
    assert b[-1]["val_loss"] == a[-1]["val_loss"]
    wa = load_file(str(straight / "adapter_model.safetensors"))
    wb = load_file(str(killed / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all((wa[k] == wb[k]).all() for k in wa)


def test_a_dpo_run_killed_and_resumed_ends_like_an_uninterrupted_one(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The preference objective goes through the same loop: its resume is as exact (the frozen reference too)."""
    from export.conftest import make_lora_run

    sft = make_lora_run(tiny_model_dir, tmp_path / "sft", template="alpaca_short")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Add {a} and {b}.", "chosen": f"{a} + {b} = {a + b}.",
                                         "rejected": f"{a + b + 1}"}) + "\n" for a in range(8) for b in range(6)))

    def args(out: Path) -> list[str]:
        return [*LLAMABREW, "train", "--method", "dpo", "--adapter", str(sft), "--data", str(pairs), "--out",
                str(out), "--max-steps", "40", "--save-every", "4", "--eval-every", "10", "--micro-batch-size",
                "4", "--grad-accum", "1", "--lora-dropout", "0.1", "--threads", "1", "--seed", "7"]

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(args(straight), check=True, env=env, capture_output=True)
    kill_after_checkpoint(args(killed), killed, env)
    resumed = subprocess.run([*args(killed), "--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a, b = losses(straight), losses(killed)
    assert [r["step"] for r in b] == [r["step"] for r in a] == list(range(1, 41))
    assert b[-1]["loss"] == a[-1]["loss"] and b[-1]["val_accuracy"] == a[-1]["val_accuracy"]
    assert a[-1]["margin"] != 0  # it trained
    wa = load_file(str(straight / "adapter_model.safetensors"))
    wb = load_file(str(killed / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


def test_training_into_a_run_with_checkpoints_needs_resume(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = write_data(tmp_path / "add.json")
    out = tmp_path / "run"
    args = [*train_args(tiny_model_dir, data, out)]
    args[args.index("--max-steps") + 1] = "4"
    subprocess.run(args, check=True, capture_output=True)
    again = subprocess.run(args, capture_output=True, text=True)
    assert again.returncode == 2
    assert "--resume" in again.stderr and "Traceback" not in again.stderr
