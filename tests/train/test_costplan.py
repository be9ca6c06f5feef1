"""`llamabrew plan`: a table with every card, fit / no-fit where the answer is known, the data counted with the
base's own tokenizer (else labelled an estimate), prices and GPUs that scale the cost, bad input in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llamabrew.cli import app
from llamabrew.errors import LlamabrewError
from llamabrew.recipe import Recipe
from llamabrew.train.cards import CARDS, MULTI_GPU_EFFICIENCY
from llamabrew.train.costplan import computed_per_epoch, plan_costs
from llamabrew.train.memory import KNOWN_SHAPES, TrainSetup, estimate_memory


def write_data(path: Path, n: int = 60) -> Path:
    path.write_text("".join(json.dumps({"instruction": f"Add {a} and {a + 1}.", "output": f"{2 * a + 1}"}) + "\n"
                            for a in range(n)))
    return path


def recipe(data_file: Path, data: dict | None = None, **sections: object) -> Recipe:
    return Recipe.model_validate({"data": {"train_files": [str(data_file)], "val_fraction": 0, **(data or {})},
                                  **sections})


def test_the_cli_prints_every_card_with_the_data_tokenized_by_the_base(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = write_data(tmp_path / "d.jsonl")
    res = CliRunner().invoke(app, ["plan", "--base", str(tiny_model_dir), "--data", str(data), "--epochs", "2",
                                   "--template", "alpaca_short", "--val-fraction", "0"])
    assert res.exit_code == 0, res.output
    rows = {line.split("│")[1].strip(): line for line in res.output.splitlines() if line.startswith("│")}
    assert set(rows) == {*CARDS, "cpu"}
    text = " ".join(res.output.split())
    assert "tokenized with" in text and "60 examples" in text and "2 epochs" in text
    assert all("estimate" in rows[c] for c in CARDS if c != "h200") and "measured" in rows["cpu"]
    assert "measured" in rows["h200"]  # LoRA on the H200 is the one card measured (RESULTS.md)
    assert "cheapest listed card that fits: H100" in text  # the lowest $ per FLOP at the listed prices
    assert "as of 2025-06" in text


def test_fit_and_no_fit_where_the_answer_is_known(tmp_path: Path) -> None:
    data = write_data(tmp_path / "d.jsonl")
    full_70b = plan_costs(recipe(data, method="full"), params="70B", cards=["4090", "h200"])
    assert not any(c.fits for c in full_70b.cards) and full_70b.cheapest is None  # 70B × 8 bytes a weight
    qlora_7b = plan_costs(recipe(data, model={"quantize_4bit": True}), params="7B", cards=["4090"])
    assert qlora_7b.cards[0].fits and qlora_7b.cheapest is not None and qlora_7b.cheapest.card == "4090"
    lora_7b = plan_costs(recipe(data, data={"cutoff_len": 1024}, optim={
        "micro_batch_size": 4}), params="7B", cards=["4090", "h100"])
    small, big = lora_7b.cards
    assert small.fits and small.checkpointing and not big.checkpointing  # 24 GiB needs checkpointing, 80 not
    assert small.tokens_per_s and big.tokens_per_s and small.tokens_per_s < big.tokens_per_s
    every = plan_costs(recipe(data, data={"cutoff_len": 1024}, optim={"micro_batch_size": 4},
                              speed={"gradient_checkpointing": "on"}), params="7B", cards=["4090"]).cards[0]
    # auto recomputes only the layers 24 GiB needs: more memory than recomputing all, within the card, less time
    assert every.memory_gib < small.memory_gib <= 0.9 * 24 and small.seconds < every.seconds
    assert "estimate" in lora_7b.data.source  # no LLaMA tokenizer here: the count is labelled


def test_gpus_scale_time_and_cost_and_fsdp_shards_the_memory(tmp_path: Path) -> None:
    r = recipe(write_data(tmp_path / "d.jsonl"), method="full")
    one = plan_costs(r, params="13B", cards=["h100"]).cards[0]
    ddp = plan_costs(r, params="13B", gpus=4, cards=["h100"]).cards[0]
    fsdp = plan_costs(r, params="13B", gpus=4, sharding="fsdp", cards=["h100"]).cards[0]
    assert ddp.seconds == pytest.approx(one.seconds / (4 * MULTI_GPU_EFFICIENCY))
    assert ddp.cost_usd == pytest.approx(one.cost_usd / MULTI_GPU_EFFICIENCY)  # 4 GPUs for a quarter of the time
    assert ddp.memory_gib > one.memory_gib and not one.fits  # every GPU holds it all, and DDP's gradient buckets
    assert fsdp.memory_gib < one.memory_gib / 2 and fsdp.fits


def test_a_price_replaces_the_named_cards(tmp_path: Path) -> None:
    h100 = plan_costs(recipe(write_data(tmp_path / "d.jsonl")), params="7B", gpu="h100", price=1.0,
                      cards=["h100"]).cards[0]
    assert h100.usd_per_hour == 1.0 and h100.cost_usd == pytest.approx(h100.seconds / 3600)


def test_padding_computes_more_than_packing() -> None:
    lengths = [20, 200, 30, 180, 25, 220, 40, 90] * 10
    padded = computed_per_epoch(lengths, 4, False, 256, 0)
    packed = computed_per_epoch(lengths, 4, True, 256, 0)
    assert packed < padded and packed >= sum(lengths)


def test_the_memory_estimate_is_near_the_measured_alpaca_lora_recipe() -> None:
    """Issue 14's H200 run of the alpaca-lora recipe (LLaMA-7B shape, LoRA r=8 on q,v, micro-batch 4, cutoff 256,
    checkpointing, bf16 base) peaked at 13.4 GiB."""
    setup = TrainSetup("lora", False, 8, ["q_proj", "v_proj"], 4 * 256, True, "plain", "adamw")
    assert estimate_memory(KNOWN_SHAPES["7B"], setup).total_gib == pytest.approx(13.4, rel=0.10)


@pytest.mark.parametrize("quant, rank, checkpointing, measured", [
    (False, 16, False, 26.2), (False, 16, True, 14.2), (True, 64, True, 7.1)])
def test_the_memory_estimate_is_near_the_fast_path_measured_on_an_h200(quant: bool, rank: int, checkpointing: bool,
                                                                        measured: float) -> None:
    """benchmarks/train_throughput.py on an H200 (RESULTS.md): LLaMA-7B shape, LoRA on every linear layer, 4 packed
    rows of 512, liger's fused loss; `default`, `fits-24g` and `qlora-8g` peaked at these GiB."""
    setup = TrainSetup("lora", quant, rank, "all-linear", 4 * 512, checkpointing, "liger",
                       "paged_adamw_8bit" if quant else "adamw")
    assert estimate_memory(KNOWN_SHAPES["7B"], setup).total_gib == pytest.approx(measured, rel=0.12)


@pytest.mark.parametrize("args, says", [
    (["--gpu", "v100"], "unknown card 'v100'"),
    (["--price-per-hour", "2"], "--price-per-hour prices one card"),
    (["--set", "data.nope=1"], "no such recipe field 'data.nope'"),
    (["--params", "seven"], "not a parameter count"),
])
def test_bad_flags_are_one_line_and_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    res = CliRunner().invoke(app, ["plan", "--params", "7B", "--data", str(write_data(tmp_path / "d.jsonl")), *args])
    assert res.exit_code == 2 and says in res.output and len(res.output.strip().splitlines()) <= 2, res.output


def test_bad_data_and_a_bad_recipe_name_the_file_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "hi", "output": "ok"}) + "\n" + json.dumps({"instruction": "x"}) + "\n")
    res = CliRunner().invoke(app, ["plan", "--params", "7B", "--data", str(bad)])
    assert res.exit_code == 2 and "bad.jsonl" in res.output and "2" in res.output and "Traceback" not in res.output
    yaml_file = tmp_path / "r.yaml"
    yaml_file.write_text("optim:\n  epochs: -1\n")
    res = CliRunner().invoke(app, ["plan", str(yaml_file), "--params", "7B", "--data", str(bad)])
    assert res.exit_code == 2 and "r.yaml" in res.output and "optim.epochs" in res.output
    res = CliRunner().invoke(app, ["plan", "--base", str(tmp_path / "nowhere"), "--data", str(bad)])
    assert res.exit_code == 2 and "--params" in res.output


def test_a_hub_model_in_the_cache_is_planned_from_its_cached_files(tmp_path: Path, tiny_model_dir: Path,
                                                                   monkeypatch) -> None:
    """No download: config.json and the tokenizer come from the Hugging Face cache's snapshot of the repo."""
    import shutil

    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--acme--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    for f in tiny_model_dir.iterdir():
        if f.suffix in (".json", ".jinja"):
            shutil.copy(f, snapshot / f.name)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    r = Recipe.model_validate({"model": {"base": "acme/tiny"}, "data": {
        "train_files": [str(write_data(tmp_path / "d.jsonl"))], "val_fraction": 0, "template": "alpaca_short"}})
    plan = plan_costs(r, cards=["4090"])
    assert plan.shape.hidden == 32 and plan.shape.layers == 2
    assert plan.data.source == "tokenized with acme/tiny's tokenizer" and len(plan.data.lengths) == 60
    with pytest.raises(LlamabrewError, match="--params"):
        plan_costs(r.model_copy(update={"model": r.model.model_copy(update={"base": "acme/absent"})}),
                   cards=["4090"])
