"""GRPO on tiny models: the rewards (match, a user's function, a reward-model run), the objective's math on cases
checked by hand, a measured rise of held-out accuracy from an under-trained SFT adapter, and an exact resume
after SIGKILL."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llamabrew.data.formats import Message
from llamabrew.data.preference import Prompt
from llamabrew.errors import LlamabrewError
from llamabrew.train.grpo import GRPO, PromptBatcher, completion_mask, group_advantages, grpo_loss
from llamabrew.train.rewards import load_reward


def prompt(text: str, reference: str | None = None, **row: object) -> Prompt:
    return Prompt((Message("user", text),), reference, {"prompt": text, **row}, "p.jsonl:1")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---- rewards ----

def reward_length(prompt: str, completion: str, row: dict) -> float:
    """A user's reward, imported as ``train.test_grpo:reward_length``: short answers, plus the row's bonus."""
    return -len(completion) + row.get("bonus", 0)


def reward_text(prompt: str, completion: str, row: dict) -> str:
    return "high"


def test_match_rewards_score_against_the_reference():
    ps = [prompt("Colour of the sky?", "Blue"), prompt("Capital of Oskenland?", "Brellin")]
    assert load_reward("exact", ps)(ps, ["blue.", "It is Brellin"]) == [1.0, 0.0]
    assert load_reward("contains", ps)(ps, ["Deep BLUE!", "It is Brellin."]) == [1.0, 1.0]
    assert load_reward("contains", ps)(ps, ["green", ""]) == [0.0, 0.0]
    assert load_reward("exact", ps)(ps, ["  BLUE  ", "brellin!"]) == [1.0, 1.0]  # normalised as eval scores


def test_a_prompt_without_a_reference_stops_before_training(tmp_path: Path, tiny_model_dir: Path):
    from llamabrew import train
    from llamabrew.recipe import DataConfig, ModelConfig, Recipe

    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "a?", "reference": "a"}, {"prompt": "b?"}])
    recipe = Recipe(model=ModelConfig(base=str(tiny_model_dir)), method="grpo", out=tmp_path / "run",
                    data=DataConfig(train_files=[data], val_fraction=0))
    with pytest.raises(LlamabrewError, match=rf"^{data}:2: field 'reference': missing \(--reward contains"):
        train.run(recipe)
    assert not (tmp_path / "run" / "loss.jsonl").exists()


def test_a_function_reward_is_imported_and_checked():
    ps = [prompt("Say hi.", bonus=10), prompt("Say hello.")]
    assert load_reward("train.test_grpo:reward_length", ps)(ps, ["hi", "hello"]) == [8.0, -5.0]
    for spec, message in [("no_such_module_xyz:fn", "cannot import no_such_module_xyz: ModuleNotFoundError"),
                          ("train.test_grpo:nope", "train.test_grpo has no function nope"),
                          ("nothing", "expected exact, contains, module:function or a reward-model run")]:
        with pytest.raises(LlamabrewError, match=message) as e:
            load_reward(spec, ps)
        assert "\n" not in str(e.value)
    with pytest.raises(LlamabrewError, match=r"returned 'high' for p.jsonl:1: expected a finite number"):
        load_reward("train.test_grpo:reward_text", ps)(ps, ["hi", "hello"])


def test_a_reward_model_run_scores_chosen_like_answers_higher(tiny_model_dir: Path, tmp_path: Path):
    from train.test_align import tiny_pairs

    from llamabrew import train
    from llamabrew.recipe import DataConfig, ModelConfig, OptimConfig, Recipe

    rm = train.run(Recipe(model=ModelConfig(base=str(tiny_model_dir)), method="reward", out=tmp_path / "rm",
                          data=DataConfig(train_files=[write_jsonl(tmp_path / "pairs.jsonl", tiny_pairs(40))],
                                          val_fraction=0),
                          optim=OptimConfig(epochs=3, seed=3, threads=1)))
    reward = load_reward(str(rm.out), [])
    held_out = tiny_pairs(60)[40:]
    ps = [prompt(r["prompt"]) for r in held_out]
    chosen, rejected = reward(ps, [r["chosen"] for r in held_out]), reward(ps, [r["rejected"] for r in held_out])
    assert sum(c > r for c, r in zip(chosen, rejected, strict=True)) >= 18  # of 20 held-out pairs
    with pytest.raises(LlamabrewError, match="not a reward-model run"):
        load_reward(str(tiny_model_dir), [])


# ---- the objective's math ----

def test_advantages_and_the_completion_mask_by_hand():
    std = math.sqrt((4 * 0.5**2) / 3)  # unbiased std of [1, 0, 0, 1] around its mean 0.5
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]]))
    expected = 0.5 / (std + 1e-4)
    assert adv[0].tolist() == pytest.approx([expected, -expected, -expected, expected], abs=1e-6)
    assert expected == pytest.approx(0.8659, abs=1e-4)
    assert adv[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # a tied group teaches nothing
    eos = 2
    mask = completion_mask(torch.tensor([[5, eos, 7, eos], [5, 6, 7, 8], [eos, eos, eos, eos]]), eos)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]  # EOS ends it and is trained on


def test_prompt_batches_are_left_padded_and_repeatable():
    from llamabrew.recipe import OptimConfig
    from llamabrew.train.grpo import EncodedPrompt

    prompts = [EncodedPrompt([1, 5, 6, 7][: 2 + i % 3], i) for i in range(7)]
    batcher, cfg = PromptBatcher(pad_id=0), OptimConfig(micro_batch_size=3, seed=5)
    b = batcher.batch(prompts, cfg, 4)
    assert torch.equal(b["input_ids"], batcher.batch(prompts, cfg, 4)["input_ids"])  # a pure function of index
    for row, mask, i in zip(b["input_ids"], b["attention_mask"], b["index"], strict=True):
        n = len(prompts[int(i)])
        assert row[-n:].tolist() == prompts[int(i)].input_ids and mask.tolist() == [0] * (len(row) - n) + [1] * n
    assert batcher.micro_batches_per_epoch(prompts, cfg) == 3
    evals = batcher.eval_batches(prompts, cfg)
    assert [int(i) for e in evals for i in e["index"]] == list(range(7)) and all("greedy" in e for e in evals)


class FixedRewards:
    """The rewards of each group, whatever was sampled."""

    def __init__(self, *values: float) -> None:
        self.values = values

    def __call__(self, prompts, completions):
        return [self.values[i % len(self.values)] for i in range(len(completions))]


@pytest.fixture
def lora(tiny_model_dir: Path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    return model.train(), AutoTokenizer.from_pretrained(tiny_model_dir)


def grpo_step(model, tok, rewards: FixedRewards, kl_coef: float = 0.0):
    """One micro-batch of one prompt, four completions (the same ones for a given seed), and the loss's gradients."""
    from llamabrew.data.templates import get_template
    from llamabrew.train.grpo import collate_prompts, encode_prompts

    ps = [prompt("Tell me a story about a fox.")]
    batch = collate_prompts(encode_prompts(ps, tok, get_template("alpaca_short")), tok.pad_token_id)
    torch.manual_seed(1)
    objective = GRPO(ps, rewards, tok, group_size=4, kl_coef=kl_coef, max_completion_tokens=6)
    model.zero_grad()
    out = objective(model, batch)
    out.loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    return out, grads


def test_the_loss_by_hand():
    """−A per completion token in value, −A·∇log π in gradient; the k3 KL is 0 where π = ref."""
    logps = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -0.2, -0.3], [-3.0, -1.0, -1.0], [-0.7, -0.7, -0.7]],
                         requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]])  # 2, 3, 1 and 3 completion tokens
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]])).view(-1)
    loss, kl = grpo_loss(logps, adv, mask)
    assert float(loss.detach()) == pytest.approx(-(a * 2 - a * 3 - a * 1 + a * 3), abs=1e-5) and not kl.any()
    loss.backward()
    assert torch.allclose(logps.grad, -adv[:, None] * mask)
    same, kl = grpo_loss(logps, adv, mask, ref_logps=logps.detach(), kl_coef=0.5)
    assert float(same.detach()) == pytest.approx(float(loss.detach()), abs=1e-6) and float(kl.abs().max()) == 0.0
    ref = logps.detach() + 0.3  # the reference likes every token more: KL = e^0.3 − 0.3 − 1 per token
    penalised, kl = grpo_loss(logps, adv, mask, ref_logps=ref, kl_coef=0.5)
    assert kl[0, 0] == pytest.approx(math.exp(0.3) - 1.3, abs=1e-6)
    assert float(penalised.detach()) == pytest.approx(float(loss.detach()) + 0.5 * (math.exp(0.3) - 1.3) * 9, abs=1e-5)


def test_the_objective_reports_its_group_and_a_tied_group_gives_no_gradient(lora):
    model, tok = lora
    out, grads = grpo_step(model, tok, FixedRewards(1.0, 0.0, 0.0, 1.0))
    assert out.targets == round(out.metrics["completion_length"] * 4) and out.targets >= 4
    assert out.metrics["reward"] == 0.5 and out.metrics["reward_std"] == pytest.approx(math.sqrt(1 / 3))
    assert out.metrics["tied_groups"] == 0.0 and "kl" not in out.metrics  # no reference pass without a KL
    assert any(g.abs().sum() > 0 for g in grads)
    tied, tied_grads = grpo_step(model, tok, FixedRewards(1.0))
    assert tied.metrics["tied_groups"] == 1.0 and float(tied.loss.detach()) == 0.0
    assert all(g.abs().max() == 0 for g in tied_grads)


def test_kl_is_zero_where_the_policy_is_its_reference(lora):
    model, tok = lora  # a fresh LoRA (B = 0): the policy is the base, which is the reference
    without, g0 = grpo_step(model, tok, FixedRewards(1.0, 0.0, 0.0, 1.0))
    with_kl, g1 = grpo_step(model, tok, FixedRewards(1.0, 0.0, 0.0, 1.0), kl_coef=0.5)
    assert with_kl.metrics["kl"] == pytest.approx(0.0, abs=1e-6)
    assert float(with_kl.loss) == pytest.approx(float(without.loss), abs=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g0, g1, strict=True))  # KL's gradient is 0 there too
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    moved, _ = grpo_step(model, tok, FixedRewards(1.0, 0.0, 0.0, 1.0), kl_coef=0.5)
    assert moved.metrics["kl"] > 1e-3


# ---- the measured effect ----

COLOURS = {"ball": "red", "leaf": "green", "sky": "blue", "sun": "yellow"}  # what GRPO must find
KNOWN = {"rose": "red", "grass": "green", "sea": "blue", "lemon": "yellow"}  # what the base already knows


def colour_rows(objects: dict[str, str], numbers: range) -> list[dict]:
    return [{"prompt": f"{n}. What colour is the {o}?", "reference": c} for n in numbers for o, c in objects.items()]


def as_sft(rows: list[dict]) -> list[dict]:
    return [{"instruction": r["prompt"], "output": r["reference"]} for r in rows]


def test_grpo_with_contains_raises_held_out_accuracy_of_an_under_trained_sft_adapter(tmp_path: Path):
    """A base that answers colour questions in the format but has never seen which colour the ball, leaf, sky and
    sun are (their colours were random in its training); an SFT adapter of 5 small steps on the true ones
    (under-trained: one colour for everything, 25%); GRPO with ``contains`` on the training prompts; greedy
    accuracy on held-out prompts (other numbers) before and after, scored by `llamabrew.evaluate`."""
    import random

    from tinymodels import CORPUS, build_tiny_model
    from transformers import AutoModelForCausalLM

    from llamabrew import evaluate, train
    from llamabrew.data.formats import load_examples
    from llamabrew.engines import open_engine
    from llamabrew.recipe import DataConfig, GRPOConfig, LoraConfig, ModelConfig, OptimConfig, Recipe
    from llamabrew.train.tokenizer import train_bpe_tokenizer

    seed = 2
    rows, held_out = colour_rows(COLOURS, range(24)), colour_rows(COLOURS, range(50, 60))
    texts = [f"### Instruction:\n{r['prompt']}\n\n### Response:\n{r['reference']}"
             for r in colour_rows(COLOURS | KNOWN, range(100))]
    base = build_tiny_model(tmp_path / "base", tokenizer=train_bpe_tokenizer(CORPUS + texts, vocab_size=400),
                            seed=seed)
    # A random LLaMA's output layer (std 0.02, width 32) caps any next-token probability that LoRA can reach
    # (about 0.4 here, where a real model's goes to 1); scaled up it behaves like a trained one.
    model = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        model.lm_head.weight.mul_(10)
    model.save_pretrained(base)
    rnd = random.Random(seed)
    shuffled = [{**r, "reference": rnd.choice(list(COLOURS.values()))} for r in rows]
    data = DataConfig(template="alpaca_short", val_fraction=0)

    def optim(steps: int, lr: float) -> OptimConfig:
        return OptimConfig(max_steps=steps, learning_rate=lr, micro_batch_size=8, grad_accum=1, threads=1,
                           seed=seed, eval_every=20)

    warm = write_jsonl(tmp_path / "warm.jsonl", as_sft(colour_rows(KNOWN, range(24)) + shuffled))
    train.run(Recipe(model=ModelConfig(base=str(base)), method="full", out=tmp_path / "warm",
                     data=data.model_copy(update={"train_files": [warm]}), optim=optim(60, 1e-2)))
    sft_data = write_jsonl(tmp_path / "sft.jsonl", as_sft(rows))
    sft = train.run(Recipe(model=ModelConfig(base=str(tmp_path / "warm")), lora=LoraConfig(dropout=0.0),
                           out=tmp_path / "sft", data=data.model_copy(update={"train_files": [sft_data]}),
                           optim=optim(5, 1e-3))).out
    examples = load_examples(write_jsonl(tmp_path / "held_out.jsonl", as_sft(held_out)))

    def accuracy(run: Path) -> float:  # greedy answers of the length GRPO samples (a word and EOS)
        return evaluate.score_engine(open_engine(str(run)), examples, max_new_tokens=2, loss=False).contains

    before = accuracy(sft)
    res = train.run(Recipe(model=ModelConfig(adapter=str(sft)), method="grpo", out=tmp_path / "grpo",
                           data=DataConfig(train_files=[write_jsonl(tmp_path / "prompts.jsonl", rows)],
                                           val_files=[write_jsonl(tmp_path / "val.jsonl", held_out)]),
                           grpo=GRPOConfig(reward="contains", group_size=8, kl_coef=0.1, max_completion_tokens=2),
                           optim=optim(100, 1e-2)))
    after = accuracy(res.out)
    log = [json.loads(line) for line in (res.out / "loss.jsonl").read_text().splitlines()]
    assert before <= 0.3, before
    assert after >= before + 0.2, (before, after)  # the bar; seeds 0–3 gave +0.72 to +0.95
    assert res.metrics["val_reward_greedy"] == pytest.approx(after, abs=0.05)  # the run's own held-out figure
    assert sum(r["reward"] for r in log[-10:]) / 10 > sum(r["reward"] for r in log[:10]) / 10 + 0.2
    assert all("kl" in r and "tied_groups" in r for r in log)
    from llamabrew.export import export_gguf  # a GRPO adapter ships like an SFT one: merged, exported, verified

    report = export_gguf(str(res.out), "f16", tmp_path / "grpo.gguf", verbose=False, modelfile=False)
    assert report.results[0].check.passed, report.results[0].check.summary()


# ---- exact resume ----

def test_sigkill_then_resume_reaches_the_same_weights_and_loss_log(tmp_path: Path, tiny_model_dir: Path):
    from export.conftest import make_lora_run
    from safetensors.torch import load_file
    from train.test_resume import kill_after_checkpoint

    sft = make_lora_run(tiny_model_dir, tmp_path / "sft", template="alpaca_short")
    rows = [{"prompt": f"Tell me a story about the {w} number {i}.", "reference": w}
            for i in range(6) for w in ("fox", "lake", "rain")]
    data, val = write_jsonl(tmp_path / "p.jsonl", rows[:15]), write_jsonl(tmp_path / "v.jsonl", rows[15:])

    def args(out: Path) -> list[str]:
        return [sys.executable, "-m", "llamabrew.cli", "train", "--method", "grpo", "--adapter", str(sft),
                "--data", str(data), "--val-data", str(val), "--out", str(out), "--reward", "contains",
                "--group-size", "4", "--kl-coef", "0.1", "--max-completion-tokens", "8", "--max-steps", "40",
                "--save-every", "4", "--eval-every", "10", "--micro-batch-size", "2", "--grad-accum", "2",
                "--lr", "1e-2", "--threads", "1", "--seed", "7"]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = subprocess.run(args(straight), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    kill_after_checkpoint(args(killed), killed, env, step=8)
    assert 8 <= max(json.loads(line)["step"] for line in (killed / "loss.jsonl").read_text().splitlines()) < 40
    resumed = subprocess.run([*args(killed), "--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr

    a, b = ([json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()] for out in (straight, killed))
    assert [r["step"] for r in a] == list(range(1, 41)) and a == b  # every figure, sampled rewards included
    assert any("val_reward_greedy" in r for r in a) and len({r["reward"] for r in a}) > 1
    wa, wb = (load_file(str(out / "adapter_model.safetensors")) for out in (straight, killed))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not any(".ref." in k for k in wa)  # only the trained adapter is saved
