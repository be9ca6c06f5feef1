"""Experiment tracking: the loss log reaches TensorBoard (read back with TensorBoard's own event reader) and wandb
(offline mode, read back from the run folder wandb writes)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from llamabrew import train
from llamabrew.recipe import DataConfig, ModelConfig, OptimConfig, Recipe
from llamabrew.train.tracking import Trackers, scalars


def tiny_recipe(base: Path, tmp_path: Path, log_to: list[str]) -> Recipe:
    recs = [{"instruction": f"Repeat the word {w}.", "output": w} for w in ["apple", "river", "stone", "cloud"] * 4]
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in recs))
    return Recipe(model=ModelConfig(base=str(base)),
                  data=DataConfig(train_files=[data], template="alpaca_short", cutoff_len=48, val_fraction=0.25),
                  optim=OptimConfig(max_steps=6, eval_every=3, learning_rate=1e-2, micro_batch_size=4, grad_accum=1,
                                    threads=1, log_to=log_to),  # type: ignore[arg-type]
                  out=tmp_path / "run")


def read_events(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_reads_the_same_losses_as_the_loss_log(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = train.run(tiny_recipe(tiny_model_dir, tmp_path, ["tensorboard"])).out
    log = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    events = read_events(out / "tensorboard")
    assert [s for s, _ in events["train/loss"]] == [r["step"] for r in log] == list(range(1, 7))
    assert [v for _, v in events["train/loss"]] == pytest.approx([r["loss"] for r in log], rel=1e-6)
    val = [(r["step"], r["val_loss"]) for r in log if "val_loss" in r]
    assert [(s, pytest.approx(v, rel=1e-6)) for s, v in events["val/loss"]] == val and len(val) == 2
    assert {"train/lr", "train/grad_norm", "train/tokens"} <= set(events)


def test_a_resumed_run_purges_the_events_written_after_its_checkpoint(tmp_path: Path) -> None:
    first = Trackers(["tensorboard"], tmp_path)
    for step in range(1, 6):
        first.log({"step": step, "loss": 10.0 - step})
    first.close()
    resumed = Trackers(["tensorboard"], tmp_path, start_step=3)  # the checkpoint was at step 3
    for step in range(4, 7):
        resumed.log({"step": step, "loss": 100.0 + step})
    resumed.close()
    assert read_events(tmp_path / "tensorboard")["train/loss"] == [
        (1, 9.0), (2, 8.0), (3, 7.0), (4, 104.0), (5, 105.0), (6, 106.0)]


def test_a_run_resumed_in_the_same_second_still_reads_after_the_killed_one(tmp_path: Path) -> None:
    first = Trackers(["tensorboard"], tmp_path)
    for step in range(1, 4):
        first.log({"step": step, "loss": 10.0 - step})
    first.close()
    # the killed run was another process, whose pid sorts after ours, and its file is from this very second
    (old,) = (tmp_path / "tensorboard").iterdir()
    parts = old.name.split(".")
    parts[3], parts[5] = str(int(time.time())), "9" * 9
    old.rename(old.with_name(".".join(parts)))
    resumed = Trackers(["tensorboard"], tmp_path, start_step=2)
    for step in range(3, 5):
        resumed.log({"step": step, "loss": 100.0 + step})
    resumed.close()
    assert read_events(tmp_path / "tensorboard")["train/loss"] == [(1, 9.0), (2, 8.0), (3, 103.0), (4, 104.0)]


def test_scalars_name_train_and_validation_figures() -> None:
    assert scalars({"step": 3, "loss": 1.5, "val_loss": 2.0, "val_reward_accuracy": 0.5, "lr": 1e-3, "note": "x"}) == {
        "train/loss": 1.5, "val/loss": 2.0, "val/reward_accuracy": 0.5, "train/lr": 1e-3}


def wandb_history(path: Path) -> list[dict[str, float]]:
    """The history rows of an offline wandb run file, decoded with wandb's own record schema (the file is a
    LevelDB-style log: 32 KiB blocks of records with a 7-byte header, after the 7-byte ``:W&B`` file header)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, rows, pos, pending = path.read_bytes(), [], 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # block padding
            pos += left
            continue
        pending, pos = pending + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows


def test_wandb_offline_run_holds_the_losses(tmp_path: Path, tiny_model_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb", reason="the wandb extra (in dev) is not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = train.run(tiny_recipe(tiny_model_dir, tmp_path, ["wandb"])).out
    log = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    files = list((out / "wandb").glob("offline-run-*/*.wandb"))
    assert len(files) == 1, os.listdir(out / "wandb")
    history = wandb_history(files[0])
    assert [row["_step"] for row in history] == [r["step"] for r in log]
    assert [row["train/loss"] for row in history] == pytest.approx([r["loss"] for r in log])
    assert [row["val/loss"] for row in history if "val/loss" in row] == pytest.approx(
        [r["val_loss"] for r in log if "val_loss" in r])
