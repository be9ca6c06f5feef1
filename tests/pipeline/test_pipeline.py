"""`llamabrew run`: every stage through its own entry point, unchanged stages skipped, an interrupted training
stage continued from its checkpoint after SIGKILL, --from / --only, the dry-run plan."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_pipeline import STAGES, write_tiny

from llamabrew import pipeline
from llamabrew.pipeline.state import STATE


def read_events(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def loss_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "loss.jsonl").read_text().splitlines()]


def test_every_stage_runs_through_its_entry_point(tiny_pipeline) -> None:
    path, result, events = tiny_pipeline
    out = result.pipeline.out
    assert result.ran == STAGES and result.skipped == []
    assert [(e.event, e.stage.name) for e in events] == [(kind, s) for s in STAGES for kind in ("start", "done")]
    state = json.loads((out / STATE).read_text())
    assert all(state["stages"][s]["status"] == "done" and state["stages"][s]["hash"] for s in STAGES)
    assert (out / "base" / "model.safetensors").is_file() and (out / "sft" / "adapter_config.json").is_file()
    held = result.results["held_out"]
    assert held["loss"] < held["base"]["loss"] - 0.1  # tuning lowered the held-out loss (adapter on vs off)
    assert held["n"] == 30 and (out / "held_out" / "eval.json").is_file()
    judge = result.results["judge"]
    assert judge["games"] == 8 and judge["model_a"] == "base" and judge["model_b"] == "sft"
    export = result.results["gguf"]["results"]
    assert [r["quant"] for r in export] == ["q8_0"] and export[0]["check"]["passed"]
    assert Path(export[0]["path"]) == out / "gguf" / "model.gguf" and (out / "gguf" / "model.gguf").is_file()
    assert result.results["chat"]["command"] == f"llamabrew serve {out / 'gguf' / 'model.gguf'} --port 8001"
    # log_to: [tensorboard] reached both training stages; TensorBoard reads what the loss log says
    tb = read_events(out / "sft" / "tensorboard")
    assert [(s, pytest.approx(v, rel=1e-6)) for s, v in tb["train/loss"]] == [
        (r["step"], r["loss"]) for r in loss_log(out / "sft")]
    assert read_events(out / "base" / "tensorboard")["train/loss"]
    assert result.report == out / "report.html" and result.report.stat().st_size > 10_000


def test_a_second_run_skips_every_unchanged_stage(tiny_pipeline) -> None:
    path, first, _ = tiny_pipeline
    before = (first.pipeline.out / "sft" / "adapter_model.safetensors").stat().st_mtime_ns
    events: list = []
    again = pipeline.run(pipeline.load_pipeline(path), on_event=events.append)
    assert again.ran == [] and again.skipped == STAGES
    assert {e.event for e in events} == {"skip"}
    assert (first.pipeline.out / "sft" / "adapter_model.safetensors").stat().st_mtime_ns == before


def test_the_dry_run_plan_says_what_would_run_and_what_it_costs(tiny_pipeline, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path, _, _ = tiny_pipeline
    assert [p.action for p in pipeline.plan(pipeline.load_pipeline(path))] == ["skip (unchanged)"] * len(STAGES)
    monkeypatch.setenv("LLAMABREW_USD_PER_HOUR", "2")
    fresh = {p.stage.name: p for p in pipeline.plan(pipeline.load_pipeline(path, [f"out={tmp_path / 'new'}"]))}
    assert all(p.action == "run" for p in fresh.values())
    assert fresh["base"].seconds == 18 and "time limit" in fresh["base"].basis  # max_minutes 0.3: sized to fill it
    assert fresh["base"].usd == pytest.approx(0.01)
    assert fresh["sft"].seconds is None  # no time limit, and its base does not exist yet
    assert not (tmp_path / "new").exists()  # a plan writes nothing
    # with its base and data there (the finished run), the planner times a fine-tuning stage on this machine
    measured = {p.stage.name: p for p in pipeline.plan(pipeline.load_pipeline(path), only="sft")}
    assert measured["sft"].action == "run" and measured["data"].action == "not selected"
    assert 0 < measured["sft"].seconds < 120 and "timed on this machine" in measured["sft"].basis


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory):
    """A pipeline SIGKILLed while its sft stage trains (after a checkpoint), then run again."""
    path = write_tiny(tmp_path_factory.mktemp("killed"), steps=60)
    ckpts = path.parent / "runs" / "sft" / "checkpoints"
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "llamabrew.cli", "run", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 400
    while not (ckpts.is_dir() and any(ckpts.glob("step-*"))):
        assert proc.poll() is None and time.monotonic() < deadline, "the pipeline ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    state = json.loads((path.parent / "runs" / STATE).read_text())
    assert state["stages"]["sft"]["status"] == "running" and "held_out" not in state["stages"]
    events: list = []
    result = pipeline.run(pipeline.load_pipeline(path), on_event=events.append)
    return path, result, events


def test_a_killed_pipeline_resumes_inside_the_stage_it_was_in(resumed) -> None:
    path, result, events = resumed
    out = result.pipeline.out
    assert result.skipped == ["data", "base"] and result.ran == STAGES[2:]
    start = next(e for e in events if e.event == "start" and e.stage.name == "sft")
    assert "continues from its checkpoint at step" in start.note
    step = json.loads((out / STATE).read_text())["stages"]["sft"]["resumed_from_step"]
    assert 2 <= step < 60 and f"step {step}" in start.note
    assert [r["step"] for r in loss_log(out / "sft")] == list(range(1, 61))  # each step once, none lost
    assert [s for s, _ in read_events(out / "sft" / "tensorboard")["train/loss"]] == list(range(1, 61))


def test_changed_settings_rerun_that_stage_and_what_follows(resumed) -> None:
    path, _, _ = resumed
    events: list = []
    changed = pipeline.run(pipeline.load_pipeline(path, ["stages.sft.optim.max_steps=12"]), on_event=events.append)
    assert changed.skipped == ["data", "base"] and changed.ran == STAGES[2:]
    start = next(e for e in events if e.event == "start" and e.stage.name == "sft")
    assert "starting over" in start.note
    out = changed.pipeline.out
    assert [r["step"] for r in loss_log(out / "sft")] == list(range(1, 13))
    sets = ["stages.sft.optim.max_steps=12"]
    only = pipeline.run(pipeline.load_pipeline(path, sets), only="held_out", report=False)
    assert only.ran == ["held_out"] and only.skipped == []
    later = pipeline.run(pipeline.load_pipeline(path, sets), start_from="gguf", report=False)
    assert later.ran == ["gguf", "chat"]
    assert pipeline.run(pipeline.load_pipeline(path, sets), report=False).ran == []
