"""Per-device training memory under DDP and FSDP (`train.memory`): the arithmetic a multi-GPU plan prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamabrew.train.memory import GIB, model_memory, training_memory

SEVEN_B = {"params": 6_738_415_616, "unit_params": 202_383_360, "root_params": 262_148_096}  # LLaMA-2-7B's shapes


def test_ddp_replicates_and_fsdp_divides_by_the_devices() -> None:
    full = dict(trainable=SEVEN_B["params"], weight_bytes=2, trainable_bytes=2)
    one = training_memory(SEVEN_B["params"], **full, devices=1, strategy="ddp")
    # bf16 weights, gradients and AdamW's two bf16 moments: 8 bytes a parameter, about 50 GiB for 7B
    assert one.total == 8 * SEVEN_B["params"] and 50 < one.total / GIB < 51
    assert training_memory(SEVEN_B["params"], **full, devices=1, strategy="fsdp") == one  # nothing to shard
    ddp8 = training_memory(SEVEN_B["params"], **full, devices=8, strategy="ddp")
    assert ddp8.total == one.total + one.gradients  # the same on every device, plus DDP's gradient buckets
    fsdp = {n: training_memory(SEVEN_B["params"], **full, devices=n, strategy="fsdp", unit_params=SEVEN_B[
        "unit_params"], root_params=SEVEN_B["root_params"]) for n in (2, 4, 8, 16)}
    for n in (2, 4, 8):
        sharded, halved = fsdp[n].total - fsdp[n].gathered, fsdp[2 * n].total - fsdp[2 * n].gathered
        assert halved == pytest.approx(sharded / 2)
        assert fsdp[n].gathered == fsdp[2 * n].gathered  # whole layers do not shrink
    # two layers' weights and one layer's gradients gathered, the root (embeddings + head) whole: 2.1 GiB
    assert fsdp[8].gathered == 2 * (3 * SEVEN_B["unit_params"] + 2 * SEVEN_B["root_params"])
    assert 8.3 < fsdp[8].total / GIB < 8.5  # 6.3 GiB of shards + 2.1 GiB gathered: a 24 GiB card has room
    assert ddp8.total / GIB > 60


def test_lora_counts_the_frozen_base_at_its_own_width() -> None:
    lora = 40_000_000
    bf16 = training_memory(SEVEN_B["params"], lora, weight_bytes=2, trainable_bytes=4)
    nf4 = training_memory(SEVEN_B["params"], lora, weight_bytes=0.56, trainable_bytes=4)
    assert bf16.weights == (SEVEN_B["params"] - lora) * 2 + lora * 4
    assert bf16.gradients == lora * 4 and bf16.optimizer == lora * 8
    assert bf16.total - nf4.total == pytest.approx((SEVEN_B["params"] - lora) * 1.44)
    with pytest.raises(ValueError):
        training_memory(1, 1, devices=0)


def test_a_models_units_are_its_decoder_layers(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    params = sum(p.numel() for p in model.parameters())
    layer = sum(p.numel() for p in model.model.layers[0].parameters())
    outside = params - layer * len(model.model.layers)  # embeddings, final norm, head
    got = model_memory(model, devices=2, strategy="fsdp", trainable_bytes=4)
    assert got == training_memory(params, params, 2, "fsdp", trainable_bytes=4, unit_params=layer,
                                  root_params=outside)
    assert outside == sum(p.numel() for p in (*model.model.embed_tokens.parameters(), *model.lm_head.parameters(),
                                              *model.model.norm.parameters()))
