"""The objective seam of `fit`: CausalLM is the old loss, a custom objective is called and logged, and a packed
run learns and resumes exactly after SIGKILL."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file
from test_resume import kill_after_checkpoint, losses, train_args
from test_resume import write_data as write_sums
from test_sft import recipe as sft_recipe

from llamabrew import train as train_api
from llamabrew.data.batching import PackedBatcher, PaddedBatcher, collate
from llamabrew.data.encode import IGNORE, Encoded, encode_examples
from llamabrew.data.formats import load_examples
from llamabrew.data.templates import get_template
from llamabrew.recipe import OptimConfig
from llamabrew.train.loop import FitResult, fit
from llamabrew.train.loss import loss_sum
from llamabrew.train.objective import CausalLM, ObjectiveOutput


def tiny(tiny_model_dir: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)


def sums_encoded(tmp_path: Path, tokenizer, cutoff: int = 64) -> list[Encoded]:
    examples = load_examples(write_sums(tmp_path / "sums.json"))
    encoded, _ = encode_examples(examples, tokenizer, get_template("alpaca_short", tokenizer), cutoff)
    return encoded


def test_causal_lm_is_the_summed_cross_entropy_of_the_target_tokens(tiny_model_dir: Path) -> None:
    model = tiny(tiny_model_dir).eval()
    batch = collate([Encoded([5, 6, 7, 8, 9], [IGNORE, IGNORE, 7, 8, 9]), Encoded([5, 9, 4], [IGNORE, 9, 4])], 0)
    with torch.no_grad():
        out = CausalLM()(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        by_hand = sum(F.cross_entropy(logits[r, t - 1], batch["labels"][r, t], reduction="sum")
                      for r, t in [(0, 2), (0, 3), (0, 4), (1, 1), (1, 2)])
        assert out.targets == 5 and out.metrics == {}
        assert float(out.loss) == pytest.approx(float(by_hand), abs=1e-4)
        assert float(loss_sum(model, batch)) == float(out.loss)  # the old name still answers


class Counting:
    """CausalLM that counts its calls and reports them as a metric."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        self.calls += 1
        out = CausalLM()(model, batch)
        return ObjectiveOutput(out.loss, out.targets, {"calls": float(self.calls)})


def test_a_custom_objective_is_called_for_training_and_validation_and_its_metric_logged(
        tmp_path: Path, tiny_model_dir: Path, tiny_tokenizer) -> None:
    data = sums_encoded(tmp_path, tiny_tokenizer)
    train, val = data[:40], data[40:]
    cfg = OptimConfig(max_steps=3, micro_batch_size=4, grad_accum=2, learning_rate=1e-3, eval_every=3, seed=1)
    objective = Counting()
    fit(tiny(tiny_model_dir), train, val, cfg, tmp_path / "run", pad_id=tiny_tokenizer.pad_token_id,
        device=torch.device("cpu"), objective=objective)
    log = losses(tmp_path / "run")
    assert [r["calls"] for r in log] == [1.5, 3.5, 5.5]  # the mean over each step's two micro-batches
    assert "val_loss" in log[-1]
    assert objective.calls == 6 + 2  # and validation (8 examples, 2 micro-batches) goes through it too


def test_fit_with_packing_learns(tmp_path: Path, tiny_model_dir: Path, tiny_tokenizer) -> None:
    train = sums_encoded(tmp_path, tiny_tokenizer)
    batcher = PackedBatcher(tiny_tokenizer.pad_token_id, row_len=128)
    cfg = OptimConfig(max_steps=20, micro_batch_size=2, grad_accum=1, learning_rate=1e-2, warmup_ratio=0, seed=3)
    assert batcher.micro_batches_per_epoch(train, cfg) < PaddedBatcher(0).micro_batches_per_epoch(train, cfg)
    result = fit(tiny(tiny_model_dir), train, [], cfg, tmp_path / "run", device=torch.device("cpu"),
                 batcher=batcher)
    log = losses(tmp_path / "run")
    assert result.steps == 20 and len(log) == 20
    assert sum(r["loss"] for r in log[-3:]) / 3 < log[0]["loss"] - 1.0
    per_epoch = batcher.micro_batches_per_epoch(train, cfg)
    rows = [row for i in range(20) for row in batcher.rows(train, cfg.seed, i // per_epoch)[i % per_epoch * 2:][:2]]
    assert log[-1]["tokens"] == sum(len(train[j]) for row in rows for j in row)  # real tokens, not the padding


def test_packing_in_a_recipe_reaches_fit(tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> None:
    seen: list[dict] = []

    def fake_fit(*args: object, **kwargs: object) -> FitResult:
        seen.append(kwargs)
        return FitResult(0, None, None, False, 0.0)

    monkeypatch.setattr("llamabrew.train.sft.fit", fake_fit)
    r = sft_recipe(tiny_model_dir, write_sums(tmp_path / "sums.json"), tmp_path / "packed", max_steps=1)
    r.data.packing = True
    train_api.run(r)
    r.data.packing, r.out = False, tmp_path / "padded"
    train_api.run(r)
    packed, padded = seen
    assert isinstance(packed["batcher"], PackedBatcher) and packed["batcher"].row_len == r.data.cutoff_len
    assert isinstance(padded["batcher"], PaddedBatcher)
    assert isinstance(packed["objective"], CausalLM)


def test_a_packed_run_killed_and_resumed_ends_like_an_uninterrupted_one(tmp_path: Path,
                                                                        tiny_model_dir: Path) -> None:
    data = write_sums(tmp_path / "add.json")
    packed_recipe = tmp_path / "packed.yaml"
    packed_recipe.write_text(yaml.safe_dump({"data": {"packing": True, "cutoff_len": 128}}))

    def args(out: Path, *extra: str) -> list[str]:
        a = train_args(tiny_model_dir, data, out)
        return [*a[: a.index("train") + 1], str(packed_recipe), *a[a.index("train") + 1 :], *extra]

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(args(straight), check=True, env=env, capture_output=True)
    assert yaml.safe_load((straight / "recipe.yaml").read_text())["data"]["packing"] is True

    kill_after_checkpoint(args(killed), killed, env)
    assert 12 <= max(r["step"] for r in losses(killed)) < 60
    resumed = subprocess.run(args(killed, "--resume"), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr

    a, b = losses(straight), losses(killed)
    assert [r["step"] for r in b] == [r["step"] for r in a] == list(range(1, 61))
    assert [r["loss"] for r in b] == [r["loss"] for r in a]
    assert b[-1]["val_loss"] == a[-1]["val_loss"]
    wa = load_file(str(straight / "adapter_model.safetensors"))
    wb = load_file(str(killed / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _loss_and_grads(model: torch.nn.Module, objective, batch: dict) -> tuple[float, int, list[torch.Tensor]]:
    model.zero_grad()
    out = objective(model, batch)
    out.loss.backward()
    return float(out.loss), out.targets, [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("packed", [False, True])
def test_chunked_cross_entropy_is_the_same_loss_and_gradients(tiny_model_dir: Path, tiny_tokenizer, packed: bool):
    from llamabrew.data.batching import PackedBatcher, PaddedBatcher
    from llamabrew.recipe import OptimConfig

    model = tiny(tiny_model_dir)
    examples = [Encoded(list(range(3, 3 + n)), [IGNORE] * 3 + list(range(6, 3 + n))) for n in (9, 14, 6, 11)]
    batcher = PackedBatcher(0, 32) if packed else PaddedBatcher(0)
    batch = batcher.eval_batches(examples, OptimConfig(micro_batch_size=4))[0]
    plain = _loss_and_grads(model, CausalLM(), batch)
    chunked = _loss_and_grads(model, CausalLM(chunk_tokens=7), batch)  # 28 targets: 4 chunks, the last short
    assert chunked[1] == plain[1] == 28
    assert chunked[0] == pytest.approx(plain[0], rel=1e-5)
    assert len(chunked[2]) == len(plain[2])
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(chunked[2], plain[2], strict=True))


PEAK = """
import resource, sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
from llamabrew.train.objective import CausalLM
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=131072, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
ids = torch.randint(0, 131072, (1, 2049))
batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
CausalLM(int(sys.argv[1]))(model, batch).loss.backward()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_chunked_loss_peak_memory_stays_below_the_full_logits_for_a_128k_vocabulary(tmp_path: Path) -> None:
    """2048 targets × 131,072 tokens: the fp32 logits alone are 1 GiB. The chunked loss's whole step adds less
    than that to the process's peak; the plain one more (so the measurement can tell them apart)."""
    import sys

    script = tmp_path / "peak.py"
    script.write_text(PEAK)
    logits = 2048 * 131072 * 4

    def growth(chunk: int) -> int:
        done = subprocess.run([sys.executable, str(script), str(chunk)], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "2"}, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return int(done.stdout.strip().splitlines()[-1])

    assert growth(256) < 0.5 * logits
    assert growth(0) > logits
