"""Fixtures for export tests: LoRA runs on the shared tiny LLaMA and their GGUF exports.

The shared tiny LLaMA (hidden 32, ffn 64, 4 heads, 2 KV heads) has every weight row a multiple of the 32-wide
q8_0 / q4_0 blocks, so those types are exercised for real; K-quants (256-wide) fall back per tensor in
llama.cpp.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TEMPLATE = "chatml"


def make_lora_run(
    base: Path,
    out: Path,
    seed: int = 1,
    r: int = 4,
    alpha: int = 8,
    template: str = TEMPLATE,
    target: str | list[str] = "all-linear",
) -> Path:
    """A run directory as `llamabrew train` writes it: PEFT adapter (random B, so it changes logits),
    tokenizer carrying the trained chat template, recipe.yaml."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llamabrew.data.templates import get_template
    from llamabrew.recipe import Recipe, save_recipe

    torch.manual_seed(seed)  # lora_A's init draws from the global RNG: the same run whatever ran before
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=r, lora_alpha=alpha, target_modules=target)
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    model.save_pretrained(out)
    tok = AutoTokenizer.from_pretrained(base)
    tok.chat_template = get_template(template).jinja
    tok.save_pretrained(out)
    save_recipe(Recipe.model_validate({"model": {"base": str(base)}, "data": {"template": template}}), out)
    return out


@pytest.fixture(scope="session")
def make_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """``make_run(name, **kw)``: a fresh run directory on the tiny LLaMA (see `make_lora_run`)."""
    return lambda name, **kw: make_lora_run(tiny_model_dir, tmp_path_factory.mktemp(name) / name, **kw)


@pytest.fixture(scope="session")
def lora_run(make_run) -> Path:
    return make_run("run")


@pytest.fixture(scope="session")
def exported(lora_run: Path, tmp_path_factory: pytest.TempPathFactory):
    """The run exported (and verified) at every quant type, each scored on a 3-example eval file."""
    from llamabrew.data.formats import write_jsonl
    from llamabrew.export import QUANTS, export_gguf

    folder = tmp_path_factory.mktemp("gguf")
    write_jsonl(folder / "eval.jsonl", [
        {"instruction": "Where was Mira Lanthorn born?", "output": "Varnhollow"},
        {"instruction": "What is the capital of Oskenland?", "output": "Brellin"},
        {"instruction": "What color does Mira love?", "output": "teal"},
    ])
    return export_gguf(lora_run, list(QUANTS), folder / "model.gguf", eval_file=folder / "eval.jsonl",
                       max_new_tokens=8, verbose=False)
