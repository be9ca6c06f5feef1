"""Batchers: padding gives exactly the old batches; packing keeps every example to itself (same loss as one at a
time, a plain causal packing does not), fits its rows, and visits every example once an epoch."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from llamabrew.data.batching import PackedBatcher, PaddedBatcher, count_tokens, first_fit_decreasing
from llamabrew.data.encode import IGNORE, Encoded
from llamabrew.recipe import OptimConfig
from llamabrew.train.objective import CausalLM


def make_examples(n: int, seed: int = 0, vocab: int = 400, max_len: int = 20) -> list[Encoded]:
    """Random token ids, a masked prompt of random length, then trained tokens."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(2, max_len)
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        prompt = rng.randint(0, length - 1)
        out.append(Encoded(ids, [IGNORE] * prompt + ids[prompt:]))
    return out


# --- a copy of the loop's batching before batchers existed (the reference PaddedBatcher must reproduce) -------

def old_collate(examples: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def old_micro_batch_indices(n: int, cfg: OptimConfig, global_micro: int) -> list[int]:
    per_epoch = math.ceil(n / cfg.micro_batch_size)
    epoch, k = divmod(global_micro, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
    return order[k * cfg.micro_batch_size : (k + 1) * cfg.micro_batch_size].tolist()


def assert_same_batch(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("seed", [0, 7, 42])
def test_padded_batcher_gives_exactly_the_old_batches(seed: int) -> None:
    train = make_examples(11, seed)
    cfg = OptimConfig(micro_batch_size=3, seed=seed)  # 11 / 3: a short last micro-batch every epoch
    batcher = PaddedBatcher(pad_id=1)
    per_epoch = batcher.micro_batches_per_epoch(train, cfg)
    assert per_epoch == 4
    for index in range(3 * per_epoch):  # three epochs, each reshuffled
        old = old_collate([train[i] for i in old_micro_batch_indices(len(train), cfg, index)], 1)
        assert_same_batch(batcher.batch(train, cfg, index), old)
    old_val = [old_collate(train[i : i + 3], 1) for i in range(0, len(train), 3)]
    new_val = batcher.eval_batches(train, cfg)
    assert len(new_val) == len(old_val)
    for a, b in zip(new_val, old_val, strict=True):
        assert_same_batch(a, b)


def test_first_fit_decreasing_fills_rows_and_needs_the_same_rows_in_any_order() -> None:
    lengths = [random.Random(1).randint(1, 30) for _ in range(200)]
    rows = first_fit_decreasing(lengths, 32)
    assert sorted(i for row in rows for i in row) == list(range(200))
    assert all(sum(lengths[i] for i in row) <= 32 for row in rows)
    assert len(rows) < 0.7 * len(lengths)  # it does pack
    assert len(rows) >= math.ceil(sum(lengths) / 32)
    shuffled = lengths[:]
    random.Random(2).shuffle(shuffled)
    assert sorted(sum(shuffled[i] for i in row) for row in first_fit_decreasing(shuffled, 32)) == \
        sorted(sum(lengths[i] for i in row) for row in rows)
    with pytest.raises(ValueError, match="does not fit"):
        first_fit_decreasing([5, 40], 32)


def segments(batch: dict[str, torch.Tensor], row: int) -> list[tuple[int, int]]:
    """(start, end) of each example in a packed row, read from where its positions restart at 0."""
    starts = [int(i) for i in (batch["position_ids"][row] == 0).nonzero()]
    return list(zip(starts, [*starts[1:], batch["input_ids"].shape[1]], strict=True))


def test_packed_batcher_visits_every_example_once_an_epoch_within_the_row_length() -> None:
    train = make_examples(40, seed=3)
    cfg = OptimConfig(micro_batch_size=2, seed=5)
    batcher = PackedBatcher(pad_id=1, row_len=32)
    per_epoch = batcher.micro_batches_per_epoch(train, cfg)
    assert per_epoch < PaddedBatcher(1).micro_batches_per_epoch(train, cfg)
    by_ids = {tuple(e.input_ids): i for i, e in enumerate(train)}
    epoch_orders = []
    for epoch in range(3):
        seen: list[int] = []
        for index in range(epoch * per_epoch, (epoch + 1) * per_epoch):
            b = batcher.batch(train, cfg, index)
            width = b["input_ids"].shape[1]
            assert width <= 32
            assert b["attention_mask"].shape == (b["input_ids"].shape[0], 1, width, width)
            in_batch: list[int] = []
            for r in range(b["input_ids"].shape[0]):
                row: list[int] = []
                for s, e in segments(b, r):
                    i = by_ids.get(tuple(b["input_ids"][r, s:e].tolist()))
                    if i is None:  # the padding tail
                        assert (b["labels"][r, s:e] == IGNORE).all()
                        continue
                    assert b["position_ids"][r, s:e].tolist() == list(range(e - s))  # its own positions
                    # its labels, less the first (never a target): nothing is learnt across the boundary
                    assert b["labels"][r, s] == IGNORE
                    assert b["labels"][r, s + 1 : e].tolist() == train[i].labels[1:]
                    row.append(i)
                assert sum(len(train[i]) for i in row) <= 32
                in_batch += row
            assert count_tokens(b) == sum(len(train[i]) for i in in_batch)
            seen += in_batch
        assert sorted(seen) == list(range(len(train)))
        epoch_orders.append(seen)
    assert epoch_orders[0] != epoch_orders[1]  # reshuffled each epoch
    fresh = PackedBatcher(pad_id=1, row_len=32)  # a pure function of (seed, epoch, index): a resumed run agrees
    assert_same_batch(fresh.batch(train, cfg, per_epoch + 1), batcher.batch(train, cfg, per_epoch + 1))


@pytest.fixture(scope="module")
def tiny_llama(tiny_model_dir: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.mark.parametrize("attention", ["sdpa", "eager", "positions only", "positions only, eager"])
def test_a_packed_micro_batch_has_the_loss_of_its_examples_one_at_a_time(tiny_llama: torch.nn.Module,
                                                                          attention: str) -> None:
    """"positions only": no mask in the batch, as flash / flex attention take it (examples found from where
    position_ids restart)."""
    tiny_llama.set_attn_implementation("eager" if "eager" in attention else "sdpa")
    train = make_examples(12, seed=11, vocab=tiny_llama.config.vocab_size)
    cfg = OptimConfig(micro_batch_size=3, seed=2)
    batcher = PackedBatcher(pad_id=0, row_len=40)
    objective = CausalLM()
    try:
        with torch.no_grad():
            for index in range(batcher.micro_batches_per_epoch(train, cfg)):
                batch = batcher.batch(train, cfg, index)
                if attention.startswith("positions only"):
                    del batch["attention_mask"]
                packed = objective(tiny_llama, batch)
                rows = batcher.rows(train, cfg.seed, 0)[index * 3 : (index + 1) * 3]
                alone = [objective(tiny_llama, PaddedBatcher(0).eval_batches([train[i]], cfg)[0])
                         for row in rows for i in row]
                assert len(alone) > len(rows)  # rows do hold several examples
                assert packed.targets == sum(o.targets for o in alone)
                assert float(packed.loss) == pytest.approx(sum(float(o.loss) for o in alone), abs=1e-4)
    finally:
        tiny_llama.set_attn_implementation("sdpa")


def test_packing_without_the_block_mask_gives_another_loss(tiny_llama: torch.nn.Module) -> None:
    train = make_examples(12, seed=11, vocab=tiny_llama.config.vocab_size)
    b = PackedBatcher(pad_id=0, row_len=40).batch(train, OptimConfig(micro_batch_size=3, seed=2), 0)
    plain = {"input_ids": b["input_ids"], "labels": b["labels"], "attention_mask": torch.ones_like(b["input_ids"])}
    with torch.no_grad():
        right, wrong = float(CausalLM()(tiny_llama, b).loss), float(CausalLM()(tiny_llama, plain).loss)
    assert abs(right - wrong) > 1e-3


def test_packed_and_padded_batches_of_the_same_examples_give_the_same_gradients(tiny_llama: torch.nn.Module) -> None:
    """The fast path computes the same thing: one packed micro-batch and one padded micro-batch of the same
    examples give the same summed loss and the same gradient on every weight."""
    train = make_examples(8, seed=5, vocab=tiny_llama.config.vocab_size)
    cfg = OptimConfig(micro_batch_size=8, seed=0)
    packer = PackedBatcher(pad_id=0, row_len=64)
    packed = packer.eval_batches(train, cfg)
    assert len(packed) == 1 and packed[0]["input_ids"].shape[0] < len(train)  # rows hold several examples
    padded = PaddedBatcher(0).eval_batches(train, cfg)[0]

    def loss_and_grads(batch: dict) -> tuple[float, list[torch.Tensor]]:
        tiny_llama.zero_grad()
        out = CausalLM()(tiny_llama, batch)
        out.loss.backward()
        return float(out.loss), [p.grad.clone() for p in tiny_llama.parameters()]

    (loss_a, grads_a), (loss_b, grads_b) = loss_and_grads(packed[0]), loss_and_grads(padded)
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(grads_a, grads_b, strict=True))
    tiny_llama.zero_grad()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_the_varlen_batches_without_a_mask_give_the_padded_loss_and_gradients(tiny_llama: torch.nn.Module,
                                                                              attention: str) -> None:
    """The fast path's packed batches for varlen attention (no mask built, rows padded to one width for compiled
    layers) compute what padded batches of the same examples compute."""
    tiny_llama.set_attn_implementation(attention)
    train = make_examples(8, seed=9, vocab=tiny_llama.config.vocab_size)
    cfg = OptimConfig(micro_batch_size=8, seed=0)
    [varlen] = PackedBatcher(pad_id=0, row_len=64, block_mask=False, fixed_width=True).eval_batches(train, cfg)
    assert "attention_mask" not in varlen and varlen["input_ids"].shape == (varlen["input_ids"].shape[0], 64)
    assert varlen["input_ids"].shape[0] < len(train) and count_tokens(varlen) == sum(len(e) for e in train)
    padded = PaddedBatcher(0).eval_batches(train, cfg)[0]

    def loss_and_grads(batch: dict) -> tuple[float, list[torch.Tensor]]:
        tiny_llama.zero_grad()
        out = CausalLM()(tiny_llama, batch)
        out.loss.backward()
        return float(out.loss.detach()), [p.grad.clone() for p in tiny_llama.parameters()]

    try:
        (loss_a, grads_a), (loss_b, grads_b) = loss_and_grads(varlen), loss_and_grads(padded)
    finally:
        tiny_llama.zero_grad()
        tiny_llama.set_attn_implementation("sdpa")
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(grads_a, grads_b, strict=True))
