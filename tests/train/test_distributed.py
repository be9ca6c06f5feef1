"""`llamabrew train` under torchrun with 2 ranks over gloo (CPU): the same run as one process, written by rank 0.

Each 2-rank run is a real launch (``python -m torch.distributed.run --standalone``) of the tiny random LLaMA,
fp32, one thread per rank; the 1-process runs they are compared with go through the same CLI in this process.
The audited launches go through `audited_llamabrew.py`, which records every write a rank makes under the output
directory, so "rank 1 writes nothing" is observed, not assumed (rank 0's record shows the recorder sees writes).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from export.conftest import make_lora_run  # a LoRA run as `llamabrew train` writes it
from safetensors.torch import load_file
from test_resume import write_data  # the resume test's data: "Add a and b." → "a + b = c."

AUDITED = str(Path(__file__).with_name("audited_llamabrew.py"))
STEPS, KILL_AT = 24, 6
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def args(base: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """Global batch 2 × 4 micro-batches: each of 2 ranks computes 2 of them a step. Dropout is on: it is seeded
    per micro-batch, so it does not depend on which rank draws it."""
    return ["train", "--base", str(base), "--data", str(data), "--out", str(out), "--template", "alpaca_short",
            "--max-steps", str(STEPS), "--micro-batch-size", "2", "--grad-accum", "4", "--save-every", "2",
            "--eval-every", "6", "--lora-dropout", "0.1", "--threads", "1", "--seed", "7", "--precision", "fp32",
            "--set", "optim.keep_checkpoints=20", *extra]


def one_process(cmd: list[str]) -> None:
    """`llamabrew` in this process (no launcher: one rank), through the CLI as the launches go."""
    from typer.testing import CliRunner

    from llamabrew.cli import app

    done = CliRunner().invoke(app, cmd)
    assert done.exit_code == 0, (done.output[-3000:], done.exception)


def torchrun(n: int, cmd: list[str], audit: Path | None = None, **kw) -> list[str]:
    """The launch line: torchrun's own `-m llamabrew.cli`, or the audited entry (same CLI) when ``audit``."""
    entry = [AUDITED] if audit else ["-m", "llamabrew.cli"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), *entry, *cmd]


def launch(n: int, cmd: list[str], audit: tuple[Path, Path] | None = None) -> subprocess.CompletedProcess:
    env = ENV if audit is None else {**ENV, "AUDIT_DIR": str(audit[0]), "AUDIT_LOG": str(audit[1])}
    done = subprocess.run(torchrun(n, cmd, audit=audit and audit[0]), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def losses(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]


def assert_same_run(a: Path, b: Path, weights: str, rel: float, steps: int = STEPS) -> None:
    """Per step: loss, gradient norm, tokens, validation loss and the objective's metrics; then the weights."""
    la, lb = losses(a), losses(b)
    assert [r["step"] for r in la] == [r["step"] for r in lb] == list(range(1, steps + 1))
    for ra, rb in zip(la, lb, strict=True):
        assert ra["tokens"] == rb["tokens"] and ra.keys() == rb.keys()
        for key in ra.keys() - {"step", "tokens", "lr"}:
            assert rb[key] == pytest.approx(ra[key], rel=rel, abs=1e-6), (ra["step"], key)
    wa, wb = load_file(str(a / weights)), load_file(str(b / weights))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=rel, atol=1e-5)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("dist-data") / "add.json")


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, data: Path) -> dict[str, Path]:
    """One process and 2 ranks (DDP), uninterrupted, the same recipe."""
    root = tmp_path_factory.mktemp("dist-lora")
    one_process(args(tiny_model_dir, data, root / "one"))
    launch(2, args(tiny_model_dir, data, root / "two"), audit=(root / "two", root / "writes"))
    return {"one": root / "one", "two": root / "two", "writes": root / "writes"}


def test_two_ranks_train_lora_as_one_process_does_and_only_rank_0_writes(lora: dict[str, Path]) -> None:
    assert_same_run(lora["one"], lora["two"], "adapter_model.safetensors", rel=1e-5)
    assert losses(lora["two"])[-1]["loss"] < losses(lora["two"])[0]["loss"]  # it trained
    rank0 = Path(f"{lora['writes']}.0").read_text()
    assert "loss.jsonl" in rank0 and "trainable.safetensors" in rank0 and "adapter_model.safetensors" in rank0
    assert "adapter_config.json" in rank0  # the recorder sees writes
    assert not Path(f"{lora['writes']}.1").exists(), Path(f"{lora['writes']}.1").read_text()[:2000]
    assert sorted(p.name for p in lora["two"].iterdir()) == sorted(p.name for p in lora["one"].iterdir())
    summary = json.loads((lora["two"] / "train_summary.json").read_text())
    single = json.loads((lora["one"] / "train_summary.json").read_text())
    assert summary["device_hours"] == pytest.approx(2 * summary["elapsed_s"] / 3600)  # both devices counted
    assert summary["steps"] == single["steps"] == STEPS


def descendants(pid: int) -> list[int]:
    found = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        found += [int(child), *descendants(int(child))]
    return found


def test_two_ranks_killed_resume_on_two_or_on_one(lora: dict[str, Path], tiny_model_dir: Path, data: Path,
                                                   tmp_path: Path) -> None:
    """SIGKILL to torchrun and both ranks once checkpoint KILL_AT is on disk; resumed with 2 ranks it ends as the
    uninterrupted 2-rank run (the same sums in the same order: equal), with 1 process as the 1-process run."""
    killed = tmp_path / "killed"
    proc = subprocess.Popen(torchrun(2, args(tiny_model_dir, data, killed)), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (killed / "checkpoints" / f"step-{KILL_AT:07d}").is_dir():
        time.sleep(0.02)
    victims = [proc.pid, *descendants(proc.pid)]
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert len(victims) >= 3, victims  # torchrun and its two ranks
    if (killed / "adapter_model.safetensors").exists():
        pytest.fail("the run finished before it could be killed; make it longer")
    assert KILL_AT <= max(r["step"] for r in losses(killed)) < STEPS

    on_one = tmp_path / "on-one"
    shutil.copytree(killed, on_one)
    launch(2, [*args(tiny_model_dir, data, killed), "--resume"])
    la, lb = losses(lora["two"]), losses(killed)
    assert [r["step"] for r in lb] == list(range(1, STEPS + 1))  # no gap, no duplicate
    assert [(r["loss"], r.get("val_loss")) for r in lb] == [(r["loss"], r.get("val_loss")) for r in la]
    wa = load_file(str(lora["two"] / "adapter_model.safetensors"))
    wb = load_file(str(killed / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)

    one_process([*args(tiny_model_dir, data, on_one), "--resume"])  # a different number of ranks
    assert_same_run(lora["one"], on_one, "adapter_model.safetensors", rel=1e-5)


def test_full_fine_tuning_under_fsdp_as_one_process_and_resumed_from_a_one_process_checkpoint(
        tiny_model_dir: Path, data: Path, tmp_path: Path) -> None:
    """FSDP2 over 2 ranks: the same losses and a standard HF directory; and a 1-process run's checkpoint resumed by
    2 FSDP ranks (weights and AdamW state scattered from rank 0) ends where the 1-process run ends."""
    from transformers import AutoModelForCausalLM

    full = ("--method", "full", "--lr", "1e-3")
    one, two, resumed = tmp_path / "one", tmp_path / "two", tmp_path / "resumed"
    one_process(args(tiny_model_dir, data, one, *full))
    launch(2, args(tiny_model_dir, data, two, *full), audit=(two, tmp_path / "writes"))
    assert_same_run(one, two, "model.safetensors", rel=1e-5)
    assert "Fsdp" not in (two / "config.json").read_text()
    loaded = AutoModelForCausalLM.from_pretrained(two)  # a plain HF directory: no FSDP needed to read it
    saved = load_file(str(one / "model.safetensors"))
    for name, p in loaded.state_dict().items():
        if name in saved:
            torch.testing.assert_close(p, saved[name], rtol=1e-5, atol=1e-5)
    assert not Path(f"{tmp_path / 'writes'}.1").exists()
    assert "model.safetensors" in Path(f"{tmp_path / 'writes'}.0").read_text()

    shutil.copytree(one, resumed)
    for finished in ("model.safetensors", "train_summary.json"):
        (resumed / finished).unlink()
    for ckpt in (resumed / "checkpoints").iterdir():
        if int(ckpt.name.split("-")[1]) > KILL_AT:
            shutil.rmtree(ckpt)
    launch(2, [*args(tiny_model_dir, data, resumed, *full), "--resume"])
    assert_same_run(one, resumed, "model.safetensors", rel=1e-5)


def test_dpo_on_two_ranks_is_the_one_process_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Preference tuning goes the same way: DPO switches to its frozen reference adapter inside the DDP forward;
    its margins and held-out accuracy are summed over the ranks like the loss."""
    sft = make_lora_run(tiny_model_dir, tmp_path / "sft", template="alpaca_short")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Add {a} and {b}.", "chosen": f"{a} + {b} = {a + b}.",
                                         "rejected": f"{a + b + 1}"}) + "\n" for a in range(8) for b in range(6)))
    dpo = ["train", "--method", "dpo", "--adapter", str(sft), "--data", str(pairs), "--max-steps", "6",
           "--micro-batch-size", "2", "--grad-accum", "4", "--eval-every", "3", "--val-fraction", "0.2",
           "--lora-dropout", "0.1", "--threads", "1", "--seed", "7", "--precision", "fp32"]
    one_process([*dpo, "--out", str(tmp_path / "one")])
    launch(2, [*dpo, "--out", str(tmp_path / "two")])
    assert_same_run(tmp_path / "one", tmp_path / "two", "adapter_model.safetensors", rel=1e-5, steps=6)
    last = losses(tmp_path / "two")[-1]
    assert last["margin"] > 0 and "val_accuracy" in last  # it trained, and held-out pairs were scored
