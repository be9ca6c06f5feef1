"""The `llamabrew` command: a thin layer that turns flags into recipes and calls the stages' entry points."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from llamabrew.cli_common import console, friendly_errors
from llamabrew.recipe import PretrainRecipe, Recipe, load_recipe


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


@app.command()
@friendly_errors
def train(
    recipe: Annotated[Path | None, typer.Argument(help="recipe YAML; flags override its values")] = None,
    base: Annotated[str | None, Opt(help="base model: hub id or local directory")] = None,
    data: Annotated[list[Path] | None, Opt(help="training data: Alpaca JSON/JSONL, ShareGPT or messages")] = None,
    val_data: Annotated[list[Path] | None, Opt(help="held-out data (default: a split of --data)")] = None,
    out: Annotated[Path | None, Opt(help="output directory (adapter, loss log, checkpoints)")] = None,
    template: Annotated[str | None, Opt(help="auto, alpaca, alpaca_short, vicuna or chatml")] = None,
    method: Annotated[str | None, Opt(help="lora (default) or full")] = None,
    epochs: Annotated[float | None, Opt(help="passes over the data")] = None,
    max_steps: Annotated[int | None, Opt(help="stop after this many optimizer steps")] = None,
    lr: Annotated[float | None, Opt(help="peak learning rate (warmup, then cosine)")] = None,
    micro_batch_size: Annotated[int | None, Opt(help="examples per forward pass")] = None,
    grad_accum: Annotated[int | None, Opt(help="micro-batches per optimizer step")] = None,
    cutoff_len: Annotated[int | None, Opt(help="max tokens per example")] = None,
    overlong: Annotated[str | None, Opt(help="examples over the cutoff: truncate or drop")] = None,
    train_on_inputs: Annotated[bool | None, Opt("--train-on-inputs/--no-train-on-inputs",
                                                help="also learn the prompt tokens")] = None,
    drop_duplicates: Annotated[bool | None, Opt("--drop-duplicates", help="remove exact duplicates")] = None,
    lora_r: Annotated[int | None, Opt(help="LoRA rank")] = None,
    lora_alpha: Annotated[int | None, Opt(help="LoRA alpha")] = None,
    lora_dropout: Annotated[float | None, Opt(help="LoRA dropout")] = None,
    qlora: Annotated[bool | None, Opt("--qlora", help="4-bit base (CUDA + bitsandbytes)")] = None,
    val_fraction: Annotated[float | None, Opt(help="share of --data held out when no --val-data")] = None,
    eval_every: Annotated[int | None, Opt(help="steps between validation passes (0: each epoch)")] = None,
    save_every: Annotated[int | None, Opt(help="steps between checkpoints (0: each epoch)")] = None,
    max_minutes: Annotated[float | None, Opt(help="stop cleanly and save when the time is up")] = None,
    precision: Annotated[str | None, Opt(help="auto, fp32, bf16 or fp16")] = None,
    seed: Annotated[int | None, Opt(help="seed for data order, init and dropout")] = None,
    threads: Annotated[int | None, Opt(help="CPU threads (default: free cores)")] = None,
    resume: Annotated[bool, Opt("--resume", help="continue from the last checkpoint in --out")] = False,
    trust_remote_code: Annotated[bool | None, Opt("--trust-remote-code", help="run the model's own code")] = None,
) -> None:
    """Fine-tune a causal LM (LoRA by default) on instruction data."""
    from llamabrew import train as train_stage

    r = load_recipe(Recipe, recipe, {
        "model.base": base, "model.trust_remote_code": trust_remote_code, "model.quantize_4bit": qlora,
        "data.train_files": data, "data.val_files": val_data, "data.template": template,
        "data.cutoff_len": cutoff_len, "data.overlong": overlong, "data.train_on_inputs": train_on_inputs,
        "data.drop_duplicates": drop_duplicates, "data.val_fraction": val_fraction, "method": method,
        "lora.r": lora_r, "lora.alpha": lora_alpha, "lora.dropout": lora_dropout, "optim.epochs": epochs,
        "optim.max_steps": max_steps, "optim.learning_rate": lr, "optim.micro_batch_size": micro_batch_size,
        "optim.grad_accum": grad_accum, "optim.eval_every": eval_every, "optim.save_every": save_every,
        "optim.max_minutes": max_minutes, "optim.precision": precision, "optim.seed": seed,
        "optim.threads": threads, "out": out, "resume": resume or None,
    })
    result = train_stage.run(r)
    console.print(f"[green]done[/]: {result.steps} steps, train loss {result.train_loss:.4f}"
                  + (f", validation loss {result.val_loss:.4f}" if result.val_loss is not None else "")
                  + f" · adapter, loss.jsonl, loss.png in {result.out}", highlight=False)


@app.command()
@friendly_errors
def pretrain(
    recipe: Annotated[Path | None, typer.Argument(help="pretraining recipe YAML; flags override it")] = None,
    corpus: Annotated[list[Path] | None, Opt(help="raw text: .txt (paragraphs) or .jsonl ('text')")] = None,
    out: Annotated[Path | None, Opt(help="output model directory")] = None,
    params: Annotated[int | None, Opt(help="model size (default: largest that fits the time)")] = None,
    max_minutes: Annotated[float | None, Opt(help="time budget; stops cleanly and saves")] = None,
    epochs: Annotated[float | None, Opt(help="passes over the corpus")] = None,
    lr: Annotated[float | None, Opt(help="peak learning rate")] = None,
    vocab_size: Annotated[int | None, Opt(help="BPE vocabulary size")] = None,
    seq_len: Annotated[int | None, Opt(help="tokens per training window")] = None,
    seed: Annotated[int | None, Opt(help="random seed")] = None,
    threads: Annotated[int | None, Opt(help="CPU threads (default: free cores)")] = None,
    resume: Annotated[bool, Opt("--resume", help="continue from the last checkpoint in --out")] = False,
) -> None:
    """Pretrain a small LLaMA-architecture base from scratch (tokenizer included)."""
    from llamabrew import train as train_stage

    r = load_recipe(PretrainRecipe, recipe, {
        "corpus": corpus, "out": out, "params": params, "optim.max_minutes": max_minutes, "optim.epochs": epochs,
        "optim.learning_rate": lr, "vocab_size": vocab_size, "seq_len": seq_len, "optim.seed": seed,
        "optim.threads": threads, "resume": resume or None,
    })
    path = train_stage.pretrain(r)
    console.print(f"[green]done[/]: base model in {path}", highlight=False)


@app.command("eval")
@friendly_errors
def eval_cmd(
    data: Annotated[Path, Opt(help="JSONL/JSON of instruction → expected output")],
    base: Annotated[str | None, Opt(help="model: hub id, model dir or run dir")] = None,
    adapter: Annotated[str | None, Opt(help="PEFT adapter / run directory")] = None,
    compare: Annotated[bool, Opt("--compare", help="also score the base alone, side by side")] = False,
    template: Annotated[str | None, Opt(help="override the template (default: the trained one)")] = None,
    max_new_tokens: Annotated[int, Opt(help="answer length limit")] = 64,
    batch_size: Annotated[int, Opt(help="prompts generated together")] = 16,
    limit: Annotated[int | None, Opt(help="score only the first N examples")] = None,
    as_json: Annotated[bool, Opt("--json", help="print one JSON object on stdout")] = False,
    samples: Annotated[Path | None, Opt(help="write every answer with its scores to this JSONL")] = None,
) -> None:
    """Held-out loss/perplexity, exact match and contains-match of generated answers."""
    from llamabrew import evaluate
    from llamabrew.errors import LlamabrewError
    from llamabrew.io import atomic_write_text

    model = base or adapter
    if model is None:
        raise LlamabrewError("pass --base (a model or run directory) and/or --adapter")
    result = evaluate.run(model, data, adapter=adapter if base else None, compare=compare, template=template,
                          max_new_tokens=max_new_tokens, batch_size=batch_size, limit=limit)
    if samples:
        atomic_write_text(samples, "".join(json.dumps(s) + "\n" for s in result.tuned.samples))
    report = result.tuned.as_dict()
    if result.base is not None:
        report["base"] = result.base.as_dict()
    if as_json:
        print(json.dumps(report))
        return
    from rich.table import Table

    table = Table(title=f"evaluation on {data} ({result.tuned.n} examples)")
    for col in ("model", "exact match", "contains", "loss", "perplexity"):
        table.add_column(col)
    rows = [("base", result.base)] if result.base else []
    for name, rep in [*rows, ("tuned" if result.base else "model", result.tuned)]:
        table.add_row(name, f"{rep.exact_match:.1%}", f"{rep.contains:.1%}", f"{rep.loss:.4f}",
                      f"{rep.perplexity:.2f}")
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
    from llamabrew.models import set_threads
    from llamabrew.serve.chat import chat_loop
    from llamabrew.serve.engines import Sampling, open_torch_engine, runs_on_llamacpp

    if runs_on_llamacpp(engine_name, model):
        from llamabrew.serve.llamacpp import open_llamacpp_engine

        engine = open_llamacpp_engine(model, threads=threads, ctx=ctx, quant=quant, template=template)
    else:
        set_threads(threads)
        engine = open_torch_engine(model, adapter=adapter, template=template)
    sampling = Sampling(max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed)
    chat_loop(engine, sampling, system=system, prompt=prompt)


@app.command()
@friendly_errors
def quickstart(
    out: Annotated[Path, Opt(help="where every artifact goes")] = Path("runs/quickstart"),
    entities: Annotated[int, Opt(help="made-up people in the synthetic world")] = 200,
    pretrain_minutes: Annotated[float, Opt(help="time budget for pretraining the toy base")] = 4.0,
    seed: Annotated[int, Opt(help="seed for the world and the runs")] = 0,
    gguf: Annotated[bool, Opt("--gguf/--no-gguf", help="also export verified GGUFs and chat through llama.cpp")] = True,
) -> None:
    """The whole job offline in minutes: world → pretrain → LoRA → evaluate → GGUF → chat."""
    from llamabrew.quickstart import run as run_quickstart

    run_quickstart(out, entities=entities, pretrain_minutes=pretrain_minutes, seed=seed, gguf=gguf)


def _register_stage_commands() -> None:
    """Commands that live beside their stage: `data ...`, `merge`, `export`, `serve`."""
    from llamabrew.data.cli import data_app
    from llamabrew.export.cli import export, merge
    from llamabrew.serve.server import serve

    app.add_typer(data_app, name="data")
    app.command()(merge)
    app.command()(export)
    app.command("serve")(serve)


_register_stage_commands()

if __name__ == "__main__":
    app()
