"""Tokens a base never read: pretraining records them, LoRA trains the rows its data uses, exports keep them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from llamabrew import train
from llamabrew.data.encode import Encoded
from llamabrew.errors import LlamabrewError
from llamabrew.export.merge import merge_into
from llamabrew.recipe import DataConfig, LoraConfig, ModelConfig, OptimConfig, Recipe
from llamabrew.train import untrained

WORDS = ["apple", "river", "stone", "cloud", "lamp", "tiger", "violin", "paper"]


def base_with_record(tmp_path: Path, tiny_model_dir: Path, ids: list[int]) -> Path:
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    (base / untrained.FILE).write_text(json.dumps({"ids": ids}))
    return base


def tuning(base: Path, tmp_path: Path, **lora: object) -> Recipe:
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"instruction": f"Repeat the word {w}.", "input": "", "output": w})
                              for w in WORDS * 2))
    return Recipe(model=ModelConfig(base=str(base)), lora=LoraConfig(**lora),
                  data=DataConfig(train_files=[data], template="alpaca_short", cutoff_len=64, val_fraction=0.125),
                  optim=OptimConfig(epochs=2, learning_rate=3e-2, micro_batch_size=4, grad_accum=1, threads=1),
                  out=tmp_path / "run")


def test_record_and_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert untrained.record(tmp_path, 6, [[0, 1], [1, 3]]) == [2, 4, 5]
    assert untrained.recorded(tmp_path) == [2, 4, 5]
    assert untrained.used(tmp_path, [Encoded([0, 4, 1], [0, 4, 1])]) == [4]
    assert untrained.recorded(tmp_path / "elsewhere") == [] == untrained.used(None, [])
    (tmp_path / untrained.FILE).write_text("{broken")
    assert untrained.recorded(tmp_path) == []  # costs only the rows it would have trained, and says so
    assert f"{tmp_path / untrained.FILE}: unreadable" in caplog.text


def test_lora_trains_the_untrained_rows_its_data_uses_and_no_others(tmp_path: Path, tiny_model_dir: Path,
                                                                     tiny_tokenizer) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    in_data = sorted({i for w in WORDS for i in tiny_tokenizer(" " + w, add_special_tokens=False)["input_ids"]})
    not_in_data = [i for i in range(len(tiny_tokenizer) - 1, 0, -1) if i not in in_data][:3]
    base = base_with_record(tmp_path, tiny_model_dir, in_data[:4] + not_in_data)
    train.run(tuning(base, tmp_path))
    cfg = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert cfg["trainable_token_indices"] == in_data[:4]

    before = AutoModelForCausalLM.from_pretrained(base).get_input_embeddings().weight
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path / "run")
    ids = torch.tensor([[1, *in_data[:4], 5]])
    logits = merged(ids).logits
    merged = merged.merge_and_unload()  # what `llamabrew export` and `merge` do
    after = merged.get_input_embeddings().weight
    changed = {i for i in range(len(before)) if not torch.equal(before[i], after[i])}
    assert changed == set(in_data[:4])
    assert torch.allclose(merged(ids).logits, logits, atol=1e-5)
    half = merge_into(AutoModelForCausalLM.from_pretrained(base), [tmp_path / "run"], [0.5])  # stacking's weights
    rows = torch.tensor(in_data[:4])
    assert torch.allclose(half.get_input_embeddings().weight[rows], (before[rows] + after[rows]) / 2, atol=1e-6)


def test_the_rows_can_be_left_alone_and_a_gguf_lora_refuses_them(tmp_path: Path, tiny_model_dir: Path,
                                                                 tiny_tokenizer) -> None:
    from llamabrew.export.lora_gguf import export_adapter_gguf

    ids = tiny_tokenizer(" apple", add_special_tokens=False)["input_ids"]
    base = base_with_record(tmp_path, tiny_model_dir, ids)
    train.run(tuning(base, tmp_path))
    with pytest.raises(LlamabrewError, match="token embeddings"):
        export_adapter_gguf(tmp_path / "run", tmp_path / "lora.gguf")
    assert not (tmp_path / "lora.gguf").exists()
    shutil.rmtree(tmp_path / "run")
    train.run(tuning(base, tmp_path, train_untrained_tokens=False))
    assert not json.loads((tmp_path / "run" / "adapter_config.json").read_text()).get("trainable_token_indices")


def test_a_base_llamabrew_pretrained_tunes_its_attention_only(tmp_path: Path, tiny_model_dir: Path) -> None:
    import yaml
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llamabrew.run import Run, RunSummary

    base = base_with_record(tmp_path, tiny_model_dir, [])
    Run(base).write_summary(RunSummary("pretrain", "full", 10, 1.0, 1.2, False, 1.0))  # as pretrain leaves it
    train.run(tuning(base, tmp_path))
    cfg = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert sorted(cfg["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert sorted(saved["lora"]["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]  # repeats exactly
    before = dict(AutoModelForCausalLM.from_pretrained(base).named_parameters())
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path / "run").merge_and_unload()
    changed = {name for name, w in merged.named_parameters() if not torch.equal(w, before[name])}
    assert changed and all(".self_attn." in name for name in changed)  # the MLPs, where facts live, untouched
