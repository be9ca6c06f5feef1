"""`llamabrew merge` and `llamabrew export`: typer commands for the main app (``app.command()(export)``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llamabrew.cli_common import console, friendly_errors

Opt = typer.Option


@friendly_errors
def merge(
    adapter: Annotated[
        list[Path], Opt("--adapter", "-a", help="LoRA adapter / run directory; repeat to stack")
    ],
    out: Annotated[Path, Opt("--out", "-o", help="output directory (standard HF model, safetensors)")],
    base: Annotated[str | None, Opt(help="base model (default: the one the adapter was trained on)")] = None,
    weight: Annotated[
        list[float] | None, Opt("--weight", "-w", help="strength per --adapter (default 1.0)")
    ] = None,
    dtype: Annotated[str, Opt(help="auto (the base's), float32, bfloat16 or float16")] = "auto",
    trust_remote_code: Annotated[bool, Opt("--trust-remote-code", help="run the model's own code")] = False,
) -> None:
    """Merge one or several LoRA adapters into the base model (in full precision, also after QLoRA)."""
    from llamabrew.export import merge as merge_stage

    report = merge_stage(
        adapter, out, base=base, weights=weight, dtype=dtype, trust_remote_code=trust_remote_code
    )
    for note in report.notes:
        console.print(f"[dim]{note}[/]", highlight=False)
    stacked = ", ".join(f"{a} x{w:g}" for a, w in zip(report.adapters, report.weights, strict=True))
    console.print(
        f"merged {stacked} into {report.base} -> [bold]{report.out}[/] ({report.dtype})", highlight=False
    )


@friendly_errors
def export(
    model_or_run: Annotated[str, typer.Argument(help="run directory, model directory or hub id")],
    quant: Annotated[
        list[str] | None, Opt("--quant", "-q", help="f16, q8_0, q4_0 or q4_k_m; repeat for several")
    ] = None,
    out: Annotated[
        Path | None, Opt("--out", "-o", help="model.gguf (several quants: model-<quant>.gguf)")
    ] = None,
    verify: Annotated[
        bool, Opt("--verify/--no-verify", help="compare the GGUF with torch in llama.cpp")
    ] = True,
    eval_file: Annotated[Path | None, Opt("--eval", help="also score each GGUF on this eval JSONL")] = None,
    eval_limit: Annotated[int, Opt(help="examples of --eval to score")] = 50,
    adapter_only: Annotated[
        bool, Opt("--adapter-only", help="only the LoRA adapter, as a GGUF adapter")
    ] = False,
    base: Annotated[str | None, Opt(help="base model (default: the adapter's)")] = None,
    template: Annotated[
        str | None, Opt(help="chat template (default: the one the run was trained with)")
    ] = None,
    modelfile: Annotated[bool, Opt("--modelfile/--no-modelfile", help="write an Ollama Modelfile")] = True,
    threads: Annotated[int | None, Opt(help="CPU threads (default: free cores)")] = None,
    trust_remote_code: Annotated[bool, Opt("--trust-remote-code", help="run the model's own code")] = False,
) -> None:
    """Export to GGUF for llama.cpp / Ollama, verified against the torch model (on by default)."""
    from llamabrew.errors import LlamabrewError
    from llamabrew.export import export_adapter, export_gguf

    if adapter_only:
        if out is None or out.suffix != ".gguf":
            raise LlamabrewError("--adapter-only needs --out ADAPTER.gguf")
        path, check = export_adapter(model_or_run, out, base=base, verify=verify, threads=threads)
        if check:
            console.print(check.summary(), highlight=False)
        console.print(
            f"wrote LoRA adapter [bold]{path}[/] ({path.stat().st_size / 2**20:.1f} MiB); "
            f"use: llama-cli -m BASE.gguf --lora {path.name}",
            highlight=False,
        )
        return
    report = export_gguf(
        model_or_run,
        quant or ["q8_0"],
        out,
        verify=verify,
        eval_file=eval_file,
        base=base,
        template=template,
        threads=threads,
        modelfile=modelfile,
        eval_limit=eval_limit,
        trust_remote_code=trust_remote_code,
    )
    console.print(f"[bold]exported[/] {report.source} (template {report.template})", highlight=False)
    for line in report.lines():
        console.print(line, highlight=False, soft_wrap=True)
    files = [r.modelfile.path for r in report.results if r.modelfile]
    if files:
        console.print(f"Ollama: ollama create my-model -f {files[0]}", highlight=False)
