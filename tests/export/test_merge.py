"""Merging and stacking LoRA adapters: the merged model computes what base + adapters compute."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from llamabrew.errors import LlamabrewError
from llamabrew.export import merge

# fp32 on both sides; the only difference is summation order (W x + B A x vs (W + B A) x).
ATOL = 1e-4
IDS = torch.tensor([[1, 17, 42, 99, 7, 256, 300, 5, 64, 128]])


def logits(model) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=IDS).logits.float()


def test_merged_model_equals_base_plus_adapter(lora_run: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel

    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora_run
    ).eval()
    base_only = logits(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    report = merge([lora_run], tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(report.out).eval()
    want, got = logits(reference), logits(merged)
    assert (want - base_only).abs().max() > 0.05  # the adapter really changes the model
    assert (got - want).abs().max() < ATOL
    assert (report.out / "model.safetensors").is_file() and (report.out / "tokenizer.json").is_file()
    assert (report.out / "recipe.yaml").is_file()  # the chat template name travels with the merged model
    assert (
        "im_start" in json.loads((report.out / "tokenizer_config.json").read_text()).get("chat_template", "")
        or "im_start" in (report.out / "chat_template.jinja").read_text()
    )
    assert not (report.out / "adapter_config.json").exists()


def _lora_delta(run: Path) -> dict[str, torch.Tensor]:
    """Each target weight's delta scale * B @ A, straight from the adapter files (independent of peft)."""
    from safetensors.torch import load_file

    cfg = json.loads((run / "adapter_config.json").read_text())
    state = load_file(str(run / "adapter_model.safetensors"))
    scale = cfg["lora_alpha"] / cfg["r"]
    out = {}
    for key, a in state.items():
        if key.endswith("lora_A.weight"):
            b = state[key.replace("lora_A", "lora_B")]
            out[key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")] = scale * b @ a
    return out


def test_stacked_adapters_with_weights(
    make_run, lora_run: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    domain = make_run("domain", seed=7, r=8, alpha=8, target=["q_proj", "v_proj", "down_proj"])
    report = merge([lora_run, domain], tmp_path / "stacked", weights=[1.0, 0.5])
    assert report.weights == [1.0, 0.5]
    expected = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    state = expected.state_dict()
    with torch.no_grad():
        for run, w in ((lora_run, 1.0), (domain, 0.5)):
            for name, delta in _lora_delta(run).items():
                state[name] += w * delta
    expected.load_state_dict(state)
    got = logits(AutoModelForCausalLM.from_pretrained(report.out))
    assert (got - logits(expected)).abs().max() < ATOL


def test_merge_keeps_the_published_precision(lora_run: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    base = tmp_path / "base-bf16"
    shutil.copytree(tiny_model_dir, base)
    cfg = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**cfg, "dtype": "bfloat16"}))
    report = merge([lora_run], tmp_path / "m", base=str(base))  # merged in fp32, saved as the base was
    assert report.dtype == "bfloat16"
    with safe_open(str(report.out / "model.safetensors"), "pt") as f:
        assert f.get_tensor("model.layers.0.self_attn.q_proj.weight").dtype == torch.bfloat16
    assert merge([lora_run], tmp_path / "f", dtype="float16").dtype == "float16"


def test_merge_refuses_a_base_stored_quantized(lora_run: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    base = tmp_path / "base-4bit"
    shutil.copytree(tiny_model_dir, base)
    cfg = json.loads((base / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (base / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LlamabrewError, match="stored quantized .* original bf16/fp16"):
        merge([lora_run], tmp_path / "out", base=str(base))


def test_corrupt_adapters_give_clear_errors(lora_run: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut"
    shutil.copytree(lora_run, cut)
    weights = cut / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(LlamabrewError, match="cannot load this adapter"):
        merge([cut], tmp_path / "out1")
    bad_json = tmp_path / "badjson"
    shutil.copytree(lora_run, bad_json)
    (bad_json / "adapter_config.json").write_text("{not json")
    with pytest.raises(LlamabrewError, match="not valid JSON"):
        merge([bad_json], tmp_path / "out2")
    with pytest.raises(LlamabrewError, match="not a PEFT adapter"):
        merge([tmp_path], tmp_path / "out3")
    with pytest.raises(LlamabrewError, match="one per adapter"):
        merge([lora_run], tmp_path / "out4", weights=[1.0, 2.0])
    assert not any((tmp_path / f"out{i}").exists() for i in range(1, 5))
