"""LoRA on real weights (SmolLM2-135M-Instruct, the `smollm2` extra), at reduced length: `llamabrew train`'s
defaults lower the held-out loss of answers in a persona the model never had, and merging gives what base +
adapter compute."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def real_run(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from llamabrew import train
    from llamabrew.data.formats import write_jsonl
    from llamabrew.persona import persona_data
    from llamabrew.recipe import DataConfig, ModelConfig, OptimConfig, Recipe

    folder = tmp_path_factory.mktemp("real-lora")
    tuned_on, held = persona_data(seed=0)
    write_jsonl(folder / "train.jsonl", tuned_on[:48])
    write_jsonl(folder / "held.jsonl", held[:10])
    result = train.run(Recipe(model=ModelConfig(base=str(smollm2_dir)),
                              data=DataConfig(train_files=[folder / "train.jsonl"], template="auto"),
                              optim=OptimConfig(max_steps=12, seed=0), out=folder / "run"))
    return result.out, folder / "held.jsonl"


def test_defaults_lower_the_held_out_loss_on_real_weights(real_run):
    from llamabrew import evaluate

    run, held = real_run
    scores = evaluate.run(str(run), held, compare=True, max_new_tokens=1, save=False)
    assert scores.base is not None and scores.base.loss is not None and scores.tuned.loss is not None
    assert scores.tuned.loss < 0.8 * scores.base.loss, (scores.base.loss, scores.tuned.loss)
    recipe = (run / "recipe.yaml").read_text()
    assert "learning_rate" in recipe
    log = [json.loads(line) for line in (run / "loss.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 12


def test_merge_of_a_real_adapter_equals_base_plus_adapter(real_run, smollm2_dir: Path, tmp_path: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llamabrew.export import merge

    run, _ = real_run
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    ids = tok("Tell me one fact about honey. Bees make honey from the nectar of flowers.", return_tensors="pt")
    with torch.inference_mode():
        base = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
        plain = base(**ids).logits
        want = PeftModel.from_pretrained(base, run).eval()(**ids).logits
        merged = AutoModelForCausalLM.from_pretrained(merge([run], tmp_path / "merged").out).eval()
        got = merged(**ids).logits
    assert (want - plain).abs().max() > 0.1  # the adapter changes the real model
    assert (got - want).abs().max() < 1e-3 * want.std()
