"""Fine-tuning through the Python API and the CLI: standard outputs, losses that fall, recipes that repeat."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from llamabrew import train
from llamabrew.recipe import DataConfig, ModelConfig, OptimConfig, Recipe


def write_data(path: Path) -> Path:
    recs = [{"instruction": f"Repeat the word {w}.", "input": "", "output": w}
            for w in ["apple", "river", "stone", "cloud", "lamp", "tiger", "violin", "paper"] * 4]
    path.write_text("\n".join(json.dumps(r) for r in recs))
    return path


def recipe(base: Path, data: Path, out: Path, **optim: object) -> Recipe:
    return Recipe(model=ModelConfig(base=str(base)),
                  data=DataConfig(train_files=[data], template="alpaca_short", cutoff_len=64, val_fraction=0.125),
                  optim=OptimConfig(**{"epochs": 8, "learning_rate": 3e-2, "micro_batch_size": 4, "grad_accum": 1,
                                       "threads": 1, **optim}),
                  out=out)


def test_lora_run_writes_a_peft_adapter_that_loads_and_learned(tmp_path: Path, tiny_model_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    result = train.run(recipe(tiny_model_dir, write_data(tmp_path / "d.jsonl"), out))
    assert result.train_examples == 28 and result.val_examples == 4
    log = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    # A random-init base is a poor start for LoRA (quickstart pretrains first), but the loss must still fall.
    assert log[-1]["loss"] < log[0]["loss"] - 0.2
    assert any("val_loss" in r for r in log)
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["data"]["template"] == "alpaca_short" and saved["optim"]["learning_rate"] == 3e-2

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    ids = torch.tensor([[1, 5, 6, 7]])
    assert not torch.allclose(base(ids).logits, tuned(ids).logits)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 16 and cfg["lora_alpha"] == 32 and cfg["lora_dropout"] == 0.05
    targeted = {name.rsplit(".", 1)[-1] for name in cfg["target_modules"]}
    assert targeted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_full_fine_tuning_writes_a_model_directory(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "full"
    r = recipe(tiny_model_dir, write_data(tmp_path / "d.jsonl"), out, epochs=1)
    r.method = "full"
    train.run(r)
    model = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.equal(model.model.embed_tokens.weight, base.model.embed_tokens.weight)
    assert not (out / "adapter_config.json").exists()


def test_saved_recipe_repeats_the_run_and_flags_override_it(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = write_data(tmp_path / "d.jsonl")
    first = tmp_path / "first"
    cli = [sys.executable, "-m", "llamabrew.cli", "train"]
    common = ["--threads", "1", "--max-steps", "3"]
    run1 = subprocess.run([*cli, "--base", str(tiny_model_dir), "--data", str(data), "--out", str(first),
                           "--template", "alpaca_short", *common], capture_output=True, text=True)
    assert run1.returncode == 0, run1.stderr
    assert "plan lora" in run1.stderr and "expected time" in run1.stderr
    again = tmp_path / "again"
    run2 = subprocess.run([*cli, str(first / "recipe.yaml"), "--out", str(again), "--lr", "0.001"],
                          capture_output=True, text=True)
    assert run2.returncode == 0, run2.stderr
    r1 = yaml.safe_load((first / "recipe.yaml").read_text())
    r2 = yaml.safe_load((again / "recipe.yaml").read_text())
    assert r2["optim"]["learning_rate"] == 0.001 and r2["out"] == str(again)
    r1["optim"]["learning_rate"], r1["out"] = 0.001, str(again)
    assert r1 == r2
    l1 = [json.loads(x)["loss"] for x in (first / "loss.jsonl").read_text().splitlines()]
    l2 = [json.loads(x)["loss"] for x in (again / "loss.jsonl").read_text().splitlines()]
    assert l1[0] == l2[0]  # same data, same seed: the first step is the same before the lr matters


def test_overlong_examples_are_reported(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "long.jsonl"
    data.write_text("\n".join(json.dumps({"instruction": "Say it. " * 40, "output": "ok"}) for _ in range(4))
                    + "\n" + json.dumps({"instruction": "Short.", "output": "fine"}))
    res = subprocess.run([sys.executable, "-m", "llamabrew.cli", "train", "--base", str(tiny_model_dir), "--data",
                          str(data), "--out", str(tmp_path / "o"), "--cutoff-len", "40", "--overlong", "drop",
                          "--val-fraction", "0", "--max-steps", "1", "--threads", "1", "--template", "alpaca_short"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "4 example(s) longer than cutoff 40" in res.stderr and "4 dropped" in res.stderr


def test_a_relative_base_is_recorded_as_an_absolute_path(tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    data = write_data(tmp_path / "d.jsonl")
    monkeypatch.chdir(tiny_model_dir.parent)
    r = recipe(Path(tiny_model_dir.name), data, tmp_path / "run", max_steps=1)
    train.run(r)
    monkeypatch.chdir(tmp_path)  # elsewhere: the adapter still finds its base
    cfg = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert Path(cfg["base_model_name_or_path"]) == tiny_model_dir.resolve()
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(cfg["base_model_name_or_path"]), tmp_path / "run")
