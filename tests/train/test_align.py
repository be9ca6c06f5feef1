"""Preference tuning on tiny models: DPO's loss and reward metrics equal TRL's DPOTrainer on the same pairs, DPO
and a reward model learn a preference (margins and held-out accuracy rise), the reward model loads back through
`AutoModelForSequenceClassification` + `PeftModel`, and the DPO adapter merges and exports like an SFT one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llamabrew.data.encode import IGNORE
from llamabrew.train.preference import DPO

TRL_LOSSES = ["sigmoid", "ipo", "hinge"]


def tiny_pairs(n: int) -> list[dict]:
    """A preference a tiny model can learn: a polite sign-off is chosen over a curt reply."""
    colours = ["teal", "amber", "violet", "ochre", "indigo", "coral", "olive", "cyan"]
    return [{"prompt": f"Name a colour for room {i}.",
             "chosen": f"{colours[i % 8].title()} suits room {i}. Cheers!",
             "rejected": f"{colours[(i + 3) % 8]}."} for i in range(n)]


@pytest.fixture
def policy(tiny_model_dir: Path):
    """A LoRA with random (non-zero) B on the tiny base, no dropout."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    return model


@pytest.mark.parametrize("loss", TRL_LOSSES)
def test_dpo_loss_and_metrics_equal_trl(policy, tiny_model_dir: Path, tmp_path: Path, loss: str):
    from datasets import Dataset  # trl and datasets come with the dev extra: this check always runs
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, beta=0.3, loss_type=[loss],
                     report_to=[], use_cpu=True, bf16=False, max_length=128, seed=0)
    trainer = DPOTrainer(model=policy, args=args, train_dataset=Dataset.from_list(tiny_pairs(8)),
                         processing_class=tok)
    # TRL keeps a frozen copy of a pretrained adapter as the reference ("ref", as llamabrew does): move the
    # policy away from it, so rewards and margins are not all zero
    assert "ref" in policy.peft_config
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if ".default." in name and "lora_B" in name:
                p.add_(torch.randn_like(p) * 0.3)
    batch = next(iter(trainer.get_train_dataloader()))
    policy.train()
    theirs = float(trainer.compute_loss(trainer.model, batch))
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    # the same token ids through llamabrew's objective: labels are the completion tokens
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, IGNORE)
    ours_batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}
    out = DPO(beta=0.3, loss=loss)(policy, ours_batch)
    assert float(out.loss) / out.targets == pytest.approx(theirs, abs=1e-4)
    assert out.metrics["rewards_chosen"] == pytest.approx(metrics["rewards/chosen"], abs=1e-4)
    assert out.metrics["rewards_rejected"] == pytest.approx(metrics["rewards/rejected"], abs=1e-4)
    assert out.metrics["margin"] == pytest.approx(metrics["rewards/margins"], abs=1e-4)
    assert out.metrics["accuracy"] == pytest.approx(metrics["rewards/accuracies"], abs=1e-6)
    assert abs(metrics["rewards/margins"]) > 1e-3  # the policy really differs from its reference here


def write_pairs(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_reference_is_the_base_without_a_frozen_copy(policy, tiny_model_dir: Path):
    from transformers import AutoModelForCausalLM

    from llamabrew.train.preference import as_reference

    ids = torch.tensor([[1, 5, 9, 14, 20]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    policy.train()
    with as_reference(policy):
        ref = policy(input_ids=ids).logits
        assert not policy.training
    assert policy.training and torch.allclose(ref, base(input_ids=ids).logits, atol=1e-5)
    assert not torch.allclose(policy.eval()(input_ids=ids).logits, ref, atol=1e-3)  # the adapter is back on


def train_recipe(tmp_path: Path, method: str, rows: list[dict], **model):
    from llamabrew.recipe import DataConfig, ModelConfig, OptimConfig, Recipe

    return Recipe(model=ModelConfig(**model), method=method, out=tmp_path / method,
                  data=DataConfig(train_files=[write_pairs(tmp_path / "pairs.jsonl", rows)],
                                  val_files=[write_pairs(tmp_path / "held_out.jsonl", tiny_pairs(80)[60:])]),
                  optim=OptimConfig(epochs=3, seed=3, threads=2))


def test_reward_model_learns_a_preference_and_loads_back(tiny_model_dir: Path, tmp_path: Path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from llamabrew import train

    res = train.run(train_recipe(tmp_path, "reward", tiny_pairs(60), base=str(tiny_model_dir)))
    first = json.loads((res.out / "loss.jsonl").read_text().splitlines()[0])
    assert res.metrics["val_accuracy"] >= 0.9 and res.metrics["val_margin"] > 0.5, res.metrics
    assert first["accuracy"] < 0.9  # it had to learn it
    # the saved run is a standard PEFT adapter of a sequence classifier: scores as training left them
    tok = AutoTokenizer.from_pretrained(res.out)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    model = PeftModel.from_pretrained(model, res.out).eval()
    wins = 0
    for row in tiny_pairs(80)[60:]:
        score = {}
        for side in ("chosen", "rejected"):  # the chat as the run's own template writes it, then EOS
            text = tok.apply_chat_template([{"role": "user", "content": row["prompt"]},
                                            {"role": "assistant", "content": row[side]}], tokenize=False)
            ids = tok(text, add_special_tokens=False)["input_ids"]
            ids = ids if ids[-1] == tok.eos_token_id else [*ids, tok.eos_token_id]
            score[side] = float(model(input_ids=torch.tensor([ids])).logits[0, 0])
        wins += score["chosen"] > score["rejected"]
    assert wins >= 18  # of 20 held-out pairs, read without llamabrew


def test_dpo_from_an_sft_adapter_moves_the_margin_then_merges_and_exports(tiny_model_dir: Path, tmp_path: Path):
    from export.conftest import make_lora_run

    from llamabrew import train
    from llamabrew.export import export_gguf
    from llamabrew.run import Run

    sft = make_lora_run(tiny_model_dir, tmp_path / "sft", template="alpaca")
    res = train.run(train_recipe(tmp_path, "dpo", tiny_pairs(60), adapter=str(sft)))
    log = [json.loads(line) for line in (res.out / "loss.jsonl").read_text().splitlines()]
    assert log[0]["margin"] == pytest.approx(0.0, abs=1e-4)  # the policy starts as its reference
    assert res.metrics["val_accuracy"] >= 0.9 and res.metrics["val_margin"] > log[0]["margin"] + 0.1
    assert res.train_loss < 0.6931 - 0.1  # below log 2, where a policy equal to its reference sits
    summary = Run(res.out).summary()
    assert summary.kind == "dpo" and summary.metrics["val_accuracy"] >= 0.9
    assert not (res.out / "ref").exists()  # only the trained adapter is saved, not the frozen reference
    assert Run(res.out).template_name() == "alpaca"  # it answers in the SFT run's format
    report = export_gguf(str(res.out), "f16", tmp_path / "dpo.gguf", verbose=False, modelfile=False)
    assert report.results[0].check.passed, report.results[0].check.summary()


def test_simpo_needs_no_reference_and_learns_the_preference(tiny_model_dir: Path, tmp_path: Path):
    from export.conftest import make_lora_run

    from llamabrew import train
    from llamabrew.recipe import PreferenceConfig

    sft = make_lora_run(tiny_model_dir, tmp_path / "sft", template="alpaca")
    recipe = train_recipe(tmp_path, "dpo", tiny_pairs(60), adapter=str(sft))
    recipe = recipe.model_copy(update={"preference": PreferenceConfig(loss="simpo", beta=2.0, simpo_gamma=0.5)})
    res = train.run(recipe)
    log = [json.loads(line) for line in (res.out / "loss.jsonl").read_text().splitlines()]
    assert res.metrics["val_accuracy"] >= 0.9 and res.metrics["val_margin"] > log[0]["margin"], res.metrics
    assert res.train_loss < log[0]["loss"]

