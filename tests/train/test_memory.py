"""Per-device training memory (`train.memory`): one GPU, DDP and FSDP, the arithmetic `llamabrew plan` prints."""

from __future__ import annotations

from dataclasses import replace

import pytest

from llamabrew.train.memory import (
    GIB,
    KNOWN_SHAPES,
    TrainSetup,
    estimate_memory,
    layers_to_checkpoint,
    lora_params,
)

SEVEN_B = KNOWN_SHAPES["7B"]  # LLaMA-7B's shapes


def full(gpus: int, sharding: str) -> TrainSetup:
    return TrainSetup(method="full", gpus=gpus, sharding=sharding, checkpointing=True)


def test_full_bf16_weights_gradients_and_moments_are_8_bytes_a_parameter() -> None:
    one = estimate_memory(SEVEN_B, full(1, "ddp"))
    assert one.weights == 2 * SEVEN_B.params and one.gradients == 2 * SEVEN_B.params
    assert one.optimizer == 4 * SEVEN_B.params and one.gathered == 0
    assert 50 < (one.weights + one.gradients + one.optimizer) / GIB < 51
    assert estimate_memory(SEVEN_B, full(1, "fsdp")) == one  # nothing to shard on one device


def test_ddp_replicates_and_fsdp_divides_by_the_devices() -> None:
    one = estimate_memory(SEVEN_B, full(1, "ddp"))
    ddp8 = estimate_memory(SEVEN_B, full(8, "ddp"))
    assert ddp8.total == pytest.approx(one.total + one.gradients)  # the same on every device, plus DDP's buckets
    fsdp = {n: estimate_memory(SEVEN_B, full(n, "fsdp")) for n in (2, 4, 8, 16)}
    for n in (2, 4, 8):
        sharded = fsdp[n].weights + fsdp[n].gradients + fsdp[n].optimizer
        halved = fsdp[2 * n].weights + fsdp[2 * n].gradients + fsdp[2 * n].optimizer
        assert halved == pytest.approx(sharded / 2)
        assert fsdp[n].gathered == fsdp[2 * n].gathered > 0  # whole layers do not shrink
        assert fsdp[n].activations == one.activations  # each device still runs its own micro-batch
    unit = SEVEN_B.layer_linear_params + 2 * SEVEN_B.hidden
    root = SEVEN_B.params - SEVEN_B.layers * unit
    assert root == SEVEN_B.embedding_params + SEVEN_B.hidden  # embeddings, head and the final norm
    assert fsdp[8].gathered == 2 * (3 * unit + 2 * root)  # two layers' weights + one's gradients, root whole
    states = fsdp[8].weights + fsdp[8].gradients + fsdp[8].optimizer + fsdp[8].gathered
    assert 8.0 < states / GIB < 8.6  # 6.3 GiB of shards + 2.1 GiB gathered, against 50 GiB on one device
    assert (ddp8.weights + ddp8.gradients + ddp8.optimizer) / GIB > 60


def test_lora_counts_the_frozen_base_at_its_own_width() -> None:
    setup = TrainSetup(method="lora", lora_r=16)
    bf16, nf4 = estimate_memory(SEVEN_B, setup), estimate_memory(SEVEN_B, TrainSetup(method="lora", quantize_4bit=True))
    adapter = lora_params(SEVEN_B, 16, "all-linear")
    assert bf16.weights == SEVEN_B.params * 2 + adapter * 4  # bf16 base, fp32 adapter
    assert bf16.gradients == adapter * 4 and bf16.optimizer == adapter * 8
    linear = SEVEN_B.layers * SEVEN_B.layer_linear_params
    assert bf16.weights - nf4.weights == pytest.approx(linear * (2 - 0.5 * (1 + 0.127 / 4)))


def test_recomputing_some_layers_costs_memory_between_none_and_all() -> None:
    setup = TrainSetup(method="lora", lora_r=16, tokens_per_micro_batch=2048, loss="liger")
    none = estimate_memory(SEVEN_B, setup).total_gib
    every = estimate_memory(SEVEN_B, replace(setup, checkpointing=True)).total_gib
    assert every == estimate_memory(SEVEN_B, replace(setup, checkpointing=True, checkpointed_layers=32)).total_gib
    partial = [estimate_memory(SEVEN_B, replace(setup, checkpointing=True, checkpointed_layers=k)).total_gib
               for k in range(1, 33)]
    assert all(a > b for a, b in zip(partial, partial[1:], strict=False)) and partial[-1] == every
    assert partial[0] > none > partial[1]  # one recomputed layer saves its activations, but one is rebuilt
    assert layers_to_checkpoint(SEVEN_B, setup, none + 0.1) == 0
    assert layers_to_checkpoint(SEVEN_B, setup, every - 0.1) == 32  # does not fit either way: recompute all
    k = layers_to_checkpoint(SEVEN_B, setup, 21.6)  # a 24 GiB card's share
    assert 0 < k < 32 and partial[k - 1] <= 21.6 < partial[k - 2]
