"""The fast path's choices per device and installed packages (a pure function, so every combination is checked on
a CPU), explicit choices and their one-line refusals, a resumed run keeping its packing and optimizer, and a CPU
run recording what it chose; DoRA and rsLoRA adapters train and load back with PeftModel."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch
import yaml
from test_sft import recipe as sft_recipe
from test_sft import write_data

from llamabrew import train
from llamabrew.data.batching import PackedBatcher, PaddedBatcher
from llamabrew.errors import LlamabrewError
from llamabrew.recipe import Recipe
from llamabrew.run import Run
from llamabrew.train import fastpath
from llamabrew.train.fastpath import Environment, choose
from llamabrew.train.memory import KNOWN_SHAPES, ModelShape

TINY = ModelShape(32, 2, 64, 512, 4, 2)
EVERYTHING = frozenset(fastpath.OPTIONAL)


def cuda(installed: frozenset[str] = frozenset(), card_gib: float = 80.0) -> Environment:
    return Environment("cuda", installed, card_gib, bf16=True)


def with_(**sections: dict) -> Recipe:
    return Recipe.model_validate(sections)


@pytest.mark.parametrize("installed", [frozenset(), EVERYTHING])
def test_on_a_cpu_auto_keeps_the_behaviour_from_before_the_fast_path(installed: frozenset[str]) -> None:
    for bf16 in (False, True):
        fast = choose(Recipe(), Environment("cpu", installed, None, bf16), KNOWN_SHAPES["8B"])
        assert (fast.packing, fast.attention, fast.loss, fast.liger_kernels, fast.gradient_checkpointing,
                fast.compile, fast.optimizer) == (False, "sdpa", "plain", False, False, False, "adamw")
        assert isinstance(fast.batcher(0, 64), PaddedBatcher)
        assert fast.objective().chunk_tokens == 0 and not fast.objective().fused


def test_on_cuda_with_nothing_optional_it_packs_with_a_block_mask_and_chunks_a_large_vocabulary() -> None:
    small = choose(Recipe(), cuda(), KNOWN_SHAPES["7B"])  # 32,000 tokens
    large = choose(Recipe(), cuda(), KNOWN_SHAPES["8B"])  # 128,256 tokens
    assert small.packing and small.attention == "sdpa" and small.loss == "plain"
    assert large.loss == "chunked" and large.objective().chunk_tokens == fastpath.DEFAULT_CHUNK_TOKENS
    assert not small.liger_kernels and small.compile and small.optimizer == "adamw"
    batcher = small.batcher(0, 256)
    assert isinstance(batcher, PackedBatcher) and batcher.block_mask and batcher.fixed_width


def test_on_cuda_with_flash_attn_liger_and_bitsandbytes_everything_fast_is_used() -> None:
    fast = choose(Recipe(), cuda(EVERYTHING), KNOWN_SHAPES["7B"])
    assert fast.attention == "flash_attention_2" and fast.loss == "liger" and fast.liger_kernels
    assert fast.objective().fused
    batcher = fast.batcher(0, 512)
    assert isinstance(batcher, PackedBatcher) and not batcher.block_mask  # position ids only: varlen attention
    qlora = choose(with_(model={"quantize_4bit": True}), cuda(EVERYTHING), KNOWN_SHAPES["7B"])
    assert qlora.optimizer == "paged_adamw_8bit" and not qlora.compile
    gpt2 = choose(Recipe(), cuda(EVERYTHING), ModelShape(768, 12, 3072, 50257, 12, 12, True, "gpt2"))
    assert not gpt2.liger_kernels  # an architecture liger-kernel does not patch
    fp32 = choose(Recipe(), Environment("cuda", EVERYTHING, 80.0, bf16=False), KNOWN_SHAPES["7B"])
    assert fp32.attention == "sdpa" and not fp32.compile  # FlashAttention and compile want half precision


def test_checkpointing_only_when_the_estimate_does_not_fit_the_card() -> None:
    lora_7b = with_(data={"cutoff_len": 512}, optim={"micro_batch_size": 4})
    assert not choose(lora_7b, cuda(card_gib=80), KNOWN_SHAPES["7B"]).gradient_checkpointing
    assert choose(lora_7b, cuda(card_gib=16), KNOWN_SHAPES["7B"]).gradient_checkpointing
    long_rows = with_(data={"cutoff_len": 4096}, optim={"micro_batch_size": 8})
    fast = choose(long_rows, cuda(card_gib=80), KNOWN_SHAPES["7B"])
    assert fast.gradient_checkpointing and any("checkpointing on" in r for r in fast.reasons)
    forced_off = with_(data={"cutoff_len": 4096}, optim={"micro_batch_size": 8},
                       speed={"gradient_checkpointing": "off"})
    assert not choose(forced_off, cuda(card_gib=80), KNOWN_SHAPES["7B"]).gradient_checkpointing


def test_checkpointing_only_as_many_layers_as_the_card_needs() -> None:
    """A 7B LoRA at 4 x 512 tokens needs about 29 GiB without checkpointing and 15 with it everywhere (both measured
    on an H200 within 10%): a 24 GiB card recomputes some of the 32 layers, not all; a 16 GiB card all of them."""
    lora_7b = with_(data={"cutoff_len": 512}, optim={"micro_batch_size": 4})
    some = choose(lora_7b, cuda(card_gib=24), KNOWN_SHAPES["7B"])
    assert some.gradient_checkpointing and 0 < some.checkpointed_layers < 32
    assert f"on for {some.checkpointed_layers} of 32 layers" in " ".join(some.reasons)
    assert f"checkpointing {some.checkpointed_layers} layers" in some.describe()
    tighter = choose(lora_7b, cuda(card_gib=20), KNOWN_SHAPES["7B"])
    assert some.checkpointed_layers < tighter.checkpointed_layers < 32
    every = choose(lora_7b, cuda(card_gib=16), KNOWN_SHAPES["7B"])
    assert every.gradient_checkpointing and every.checkpointed_layers is None  # all: the card needs every one
    forced_on = with_(data={"cutoff_len": 512}, optim={"micro_batch_size": 4}, speed={"gradient_checkpointing": "on"})
    assert choose(forced_on, cuda(card_gib=80), KNOWN_SHAPES["7B"]).checkpointed_layers is None


def test_only_the_chosen_layers_recompute_and_the_gradients_do_not_change(tiny_model_dir: Path) -> None:
    """Checkpointing the first of the tiny model's 2 layers: that layer starts its forward twice a step (once more in
    the backward), the other once, and the adapter's gradients are those of no checkpointing at all."""
    from transformers import AutoModelForCausalLM

    from llamabrew.recipe import OptimConfig
    from llamabrew.train.sft import attach_lora

    batch = PaddedBatcher(0).batch(masked_examples((12, 30, 7, 21), seed=3), OptimConfig(micro_batch_size=4, seed=0), 0)
    grads, calls = {}, {}
    for layers in (0, 1, None):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        fast = fastpath.FastPath(False, "sdpa", "plain", 0, False, layers != 0, False, "adamw",
                                 checkpointed_layers=layers)
        fastpath.prepare_base(model, fast)
        model = attach_lora(model, Recipe.model_validate({"lora": {"dropout": 0.0}}),
                            checkpointing=fast.gradient_checkpointing).train()
        assert fastpath.limit_checkpointing(model, fast) == {0: 0, 1: 1, None: 2}[layers]
        seen = [0, 0]
        for i, layer in enumerate(fastpath.decoder_layers(model)):
            layer.self_attn.register_forward_pre_hook(lambda *_, i=i, seen=seen: seen.__setitem__(i, seen[i] + 1))
        fast.objective()(model, batch).loss.backward()
        calls[layers] = seen
        grads[layers] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert calls == {0: [1, 1], 1: [2, 1], None: [2, 2]}
    for layers in (1, None):
        for name, grad in grads[0].items():
            torch.testing.assert_close(grads[layers][name], grad, rtol=1e-5, atol=1e-7)


def test_explicit_choices_win_and_impossible_ones_are_one_clear_error() -> None:
    fast = choose(with_(data={"packing": "off"}, speed={"attention": "eager", "loss": "chunked", "compile": "off"}),
                  cuda(EVERYTHING), KNOWN_SHAPES["7B"])
    assert (fast.packing, fast.attention, fast.loss, fast.compile) == (False, "eager", "chunked", False)
    on_cpu = choose(with_(data={"packing": True}, speed={"loss": "chunked"}, optim={"loss_chunk_tokens": 96}),
                    Environment("cpu"), TINY)
    assert on_cpu.packing and on_cpu.objective().chunk_tokens == 96 and on_cpu.batcher(0, 64).block_mask
    for bad, says in [({"speed": {"attention": "flash"}}, "flash-attn"), ({"speed": {"loss": "liger"}}, "CUDA"),
                      ({"speed": {"liger_kernels": "on"}}, "liger-kernel"),
                      ({"optim": {"optimizer": "paged_adamw_8bit"}}, "bitsandbytes")]:
        with pytest.raises(LlamabrewError, match=says):
            choose(with_(**bad), Environment("cpu", EVERYTHING), TINY)


def test_a_resumed_run_keeps_the_packing_and_optimizer_it_started_with(tmp_path: Path) -> None:
    from llamabrew.recipe import save_recipe

    first = with_(out=str(tmp_path))
    started_on_gpu = choose(first, cuda(frozenset({"bitsandbytes"})), KNOWN_SHAPES["7B"])
    save_recipe(fastpath.record(first, started_on_gpu), tmp_path)
    resumed = fastpath.keep_resumed_choices(with_(out=str(tmp_path), resume=True))
    assert resumed.data.packing is True and resumed.optim.optimizer == "adamw"
    assert choose(resumed, Environment("cpu"), TINY).packing  # the CPU's "auto" (off) does not apply
    explicit = fastpath.keep_resumed_choices(with_(out=str(tmp_path), resume=True, data={"packing": False}))
    assert explicit.data.packing is False
    assert fastpath.keep_resumed_choices(with_(out=str(tmp_path))).data.packing == "auto"  # not resuming


def test_a_cpu_run_prints_and_records_its_fast_path(tmp_path: Path, tiny_model_dir: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="llamabrew")
    out = tmp_path / "run"
    train.run(sft_recipe(tiny_model_dir, write_data(tmp_path / "d.jsonl"), out, max_steps=2))
    assert "fast path: padded, sdpa, plain loss, adamw" in caplog.text
    assert Run(out).summary().fast_path == {
        "packing": False, "attention": "sdpa", "loss": "plain", "chunk_tokens": 0,
        "liger_kernels": False, "gradient_checkpointing": False, "compile": False, "optimizer": "adamw",
        "checkpointed_layers": None}
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["data"]["packing"] is False and saved["optim"]["optimizer"] == "adamw"
    assert saved["speed"]["attention"] == "auto"  # kernels re-decided on whatever machine repeats it


@pytest.mark.parametrize("variant", ["use_dora", "use_rslora"])
def test_dora_and_rslora_adapters_train_and_load_back_with_peft(tmp_path: Path, tiny_model_dir: Path,
                                                                  variant: str) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / variant
    r = sft_recipe(tiny_model_dir, write_data(tmp_path / "d.jsonl"), out, learning_rate=1e-2)
    setattr(r.lora, variant, True)
    train.run(r)
    log = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    # held-out examples at the end against the first step's (the untuned base's) loss; a random-init base, so
    # LoRA alone learns slowly
    assert log[-1]["val_loss"] < log[0]["loss"] - 0.2
    config = json.loads((out / "adapter_config.json").read_text())
    assert config[variant] is True and config["use_dora" if variant == "use_rslora" else "use_rslora"] is False
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        assert not torch.allclose(base(ids).logits, tuned(ids).logits, atol=1e-4)
    q_proj = tuned.get_base_model().model.layers[0].self_attn.q_proj
    if variant == "use_dora":
        assert "default" in q_proj.lora_magnitude_vector  # a learnt magnitude per output row
    else:
        assert q_proj.scaling["default"] == pytest.approx(r.lora.alpha / r.lora.r**0.5)  # not alpha / r


def test_the_switches_are_train_flags_and_read_auto_on_off() -> None:
    from typer.testing import CliRunner

    from llamabrew.cli import app
    from llamabrew.recipe import load_recipe

    help_text = CliRunner().invoke(app, ["train", "--help"], terminal_width=200).output
    for flag in ("--packing", "--optimizer", "--dora", "--rslora"):
        assert flag in help_text
    assert [load_recipe(Recipe, None, {"data.packing": v}).data.packing for v in ("on", "off", "auto")] == [
        True, False, "auto"]


def test_a_bitsandbytes_optimizer_without_the_gpu_extra_names_the_extra() -> None:
    from llamabrew.extras import MissingExtra
    from llamabrew.recipe import OptimConfig
    from llamabrew.train.loop import make_optimizer

    model = torch.nn.Linear(4, 4)
    assert type(make_optimizer(model, OptimConfig(learning_rate=1e-3), torch.device("cpu"))) is torch.optim.AdamW
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(MissingExtra, match="'gpu' extra"):
            make_optimizer(model, OptimConfig(learning_rate=1e-3, optimizer="paged_adamw_8bit"), torch.device("cpu"))
    else:  # 8-bit AdamW is bitsandbytes' own class
        opt = make_optimizer(model, OptimConfig(learning_rate=1e-3, optimizer="adamw_8bit"), torch.device("cpu"))
        assert type(opt).__module__.startswith("bitsandbytes")


def test_compiled_layers_with_checkpointing_and_varlen_rows_give_the_eager_losses(tiny_model_dir: Path) -> None:
    """torch.compile is chosen on CUDA only, but its wiring (per-layer compile of a LoRA model, activation
    checkpointing, packed fixed-width rows with no mask) is the same on a CPU: compiled, it computes the same."""
    from torch._dynamo.utils import counters
    from transformers import AutoModelForCausalLM

    from llamabrew.recipe import OptimConfig
    from llamabrew.train.sft import attach_lora

    data = masked_examples((9, 30, 14, 22, 5, 40, 17, 12, 26, 8, 33, 19), seed=1)
    losses = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        fast = fastpath.FastPath(True, "sdpa", "plain", 0, False, True, compiled, "adamw")
        fastpath.prepare_base(model, fast)
        model = attach_lora(model, Recipe(), checkpointing=True).train()
        frames = counters["frames"]["ok"]
        assert fastpath.compile_layers(model, fast) == (2 if compiled else 0)
        cfg, batcher = OptimConfig(micro_batch_size=2, seed=0), fast.batcher(0, 64)
        longest = max(sum(len(data[i]) for i in row) for row in batcher.rows(data, 0, 0)[:2])
        assert batcher.batch(data, cfg, 0)["input_ids"].shape[1] == (64 if compiled else longest) < 64 + compiled
        out = []
        for i in range(3):
            batch = batcher.batch(data, cfg, i)
            del batch["attention_mask"]  # rows told apart by their position ids alone, as varlen kernels take them
            o = fast.objective()(model, batch)
            o.loss.backward()
            out.append(float(o.loss.detach()))
        losses.append(out)
        assert (counters["frames"]["ok"] > frames) == compiled
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


def masked_examples(lengths: tuple[int, ...], seed: int) -> list:
    """Random token ids of these lengths, the first third of each a masked prompt."""
    from llamabrew.data.encode import IGNORE, Encoded

    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, 400, (n,), generator=gen).tolist()
        out.append(Encoded(ids, [IGNORE] * (n // 3) + ids[n // 3:]))
    return out
