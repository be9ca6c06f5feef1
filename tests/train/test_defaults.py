"""The data- and model-dependent fine-tuning defaults, and the warning for a run that is not learning."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llamabrew.recipe import LoraConfig, OptimConfig
from llamabrew.run import Run, RunSummary
from llamabrew.train.defaults import (
    ATTENTION,
    MIN_STEPS,
    default_grad_accum,
    default_learning_rate,
    lora_targets,
    resolve,
)
from llamabrew.train.loop import stall_warning, total_steps


def test_learning_rate_follows_the_width() -> None:
    assert default_learning_rate("lora", 4096) == pytest.approx(3e-4)  # alpaca-lora's, at LLaMA-7B's width
    assert default_learning_rate("lora", 576) == pytest.approx(8.0e-4, rel=0.02)  # SmolLM2-135M
    assert default_learning_rate("lora", 128) == pytest.approx(1.7e-3, rel=0.02)
    assert default_learning_rate("lora", 8) == 3e-3  # clamped
    assert default_learning_rate("full", 4096) == pytest.approx(2e-5)
    assert default_learning_rate("full", 128) < default_learning_rate("lora", 128)
    assert default_learning_rate("lora", None) == 3e-4


def test_small_data_takes_smaller_steps_rather_than_too_few() -> None:
    cfg = OptimConfig()  # micro-batches of 4 examples
    assert default_grad_accum(52_000 // 4, cfg) == 8  # Alpaca-sized data keeps batches of 32
    assert default_grad_accum(36, cfg) == 1  # the real-model case, 142 examples: 15 steps at batch 32, 108 at 4
    middle = default_grad_accum(1800 // 4, cfg)
    assert 1 < middle < 8
    assert total_steps(1800, cfg.model_copy(update={"grad_accum": middle})) >= MIN_STEPS
    assert total_steps(1800, cfg.model_copy(update={"grad_accum": middle + 1})) < MIN_STEPS


def test_resolve_fills_only_what_the_recipe_left_unset() -> None:
    class Model:
        class config:  # noqa: N801 - stands in for a HF config
            hidden_size = 576

    chosen = resolve(OptimConfig(), "lora", Model(), 36)
    assert chosen.optim.grad_accum == 1 and chosen.optim.learning_rate == pytest.approx(8.0e-4, rel=0.02)
    assert any("width 576" in n for n in chosen.notes) and any("small data" in n for n in chosen.notes)
    fixed = resolve(OptimConfig(learning_rate=1e-5, grad_accum=4), "lora", Model(), 36)
    assert (fixed.optim.learning_rate, fixed.optim.grad_accum, fixed.notes) == (1e-5, 4, [])


def pretrained_base(folder: Path, kind: str = "pretrain") -> Path:
    """A directory with the run summary `llamabrew pretrain` (or another stage) writes."""
    folder.mkdir()
    Run(folder).write_summary(RunSummary(kind, "full", 10, 1.0, 1.2, False, 1.0))
    return folder


def test_lora_targets_attention_only_on_a_base_llamabrew_pretrained(tmp_path: Path) -> None:
    mine, tuned = pretrained_base(tmp_path / "mine"), pretrained_base(tmp_path / "tuned", kind="sft")
    auto = LoraConfig()
    assert auto.target_modules == "auto"
    assert lora_targets(auto, str(mine)) == ATTENTION
    assert lora_targets(auto, str(tuned)) == "all-linear"  # a fine-tuned run is not a pretrained-here base
    assert lora_targets(auto, "HuggingFaceTB/SmolLM2-135M") == "all-linear"  # a hub id
    assert lora_targets(auto, None) == "all-linear"
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "train_summary.json").write_text("{not json")
    assert lora_targets(auto, str(tmp_path / "broken")) == "all-linear"
    assert lora_targets(LoraConfig(target_modules="all-linear"), str(mine)) == "all-linear"  # asked for
    assert lora_targets(LoraConfig(target_modules=["q_proj"]), str(mine)) == ["q_proj"]

    class Model:
        class config:  # noqa: N801 - stands in for a HF config
            hidden_size = 192

    chosen = resolve(OptimConfig(), "lora", Model(), 300, auto, str(mine))
    assert chosen.lora is not None and chosen.lora.target_modules == ATTENTION
    assert any(n.startswith("LoRA on the attention projections only") for n in chosen.notes)
    hub = resolve(OptimConfig(), "lora", Model(), 300, auto, "some/hub-model")
    assert hub.lora is not None and hub.lora.target_modules == "all-linear"
    assert not any("attention" in n for n in hub.notes)


def test_stall_warning_only_for_a_flat_loss_after_a_good_share_of_steps() -> None:
    flat = [5.0 + 0.01 * (i % 3) for i in range(30)]
    falling = [5.0 * 0.98**i for i in range(30)]
    assert "not learning" in (stall_warning(flat, 100, 3e-4) or "")
    assert "5.0" in (stall_warning(flat, 100, 3e-4) or "") and "--lr" in (stall_warning(flat, 100, 3e-4) or "")
    assert stall_warning(falling, 100, 3e-4) is None
    assert stall_warning(flat[:20], 100, 3e-4) is None  # too early to tell


def test_train_prints_the_chosen_defaults_and_warns_when_not_learning(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say the number {i}.", "output": "Yes, gladly."})
                            + "\n" for i in range(40)))
    cli = [sys.executable, "-m", "llamabrew.cli", "train", "--base", str(tiny_model_dir), "--data", str(data),
           "--threads", "1", "--template", "alpaca_short", "--val-fraction", "0"]
    stuck = subprocess.run([*cli, "--out", str(tmp_path / "stuck"), "--lr", "1e-9", "--max-steps", "60"],
                           capture_output=True, text=True)
    assert stuck.returncode == 0, stuck.stderr
    assert "training is not learning" in stuck.stderr
    # LoRA barely moves a random-init toy (quickstart pretrains first); full tuning of it learns at once
    learning = subprocess.run([*cli, "--out", str(tmp_path / "ok"), "--max-steps", "60", "--lr", "1e-2",
                               "--method", "full"], capture_output=True, text=True)
    assert learning.returncode == 0, learning.stderr
    assert "defaults chosen: grad accum 1 (small data" in learning.stderr
    assert "not learning" not in learning.stderr
    log = [json.loads(x) for x in (tmp_path / "ok" / "loss.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < 0.7 * log[0]["loss"]
