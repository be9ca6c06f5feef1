"""`llamabrew merge` and `llamabrew export`: typer commands for the main app (``app.command()(export)``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from llamabrew.cli_common import Flags, console, friendly_errors, recipe_flags
from llamabrew.recipe import ExportRecipe, load_recipe

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


EXPORT_FLAGS: Flags = {
    "quant": ("quants", "--quant", "-q"), "out": ("out", "--out", "-o"), "verify": "verify",
    "eval_file": ("eval_file", "--eval"), "eval_limit": "eval_limit",
    "adapter_only": ("adapter_only", "--adapter-only"), "base": "base", "template": "template",
    "modelfile": "modelfile", "threads": "threads", "trust_remote_code": ("trust_remote_code", "--trust-remote-code"),
}


@friendly_errors
@recipe_flags(ExportRecipe, EXPORT_FLAGS)
def export(
    model_or_run: Annotated[str | None, typer.Argument(help="run directory, model directory or hub id")] = None,
    recipe: Annotated[Path | None, Opt(help="export recipe YAML (an `export:` section's fields); flags "
                                            "override it")] = None,
    *, overrides: dict[str, Any],
) -> None:
    """Export to GGUF for llama.cpp / Ollama, verified against the torch model (on by default)."""
    from llamabrew.errors import LlamabrewError
    from llamabrew.export import export_adapter, export_recipe

    r = load_recipe(ExportRecipe, recipe, {"model": model_or_run, **overrides})
    if r.model is None:
        raise LlamabrewError("name the run or model directory to export")
    if r.adapter_only:
        if r.out is None or r.out.suffix != ".gguf":
            raise LlamabrewError("--adapter-only needs --out ADAPTER.gguf")
        path, check = export_adapter(r.model, r.out, base=r.base, verify=r.verify, threads=r.threads)
        if check:
            console.print(check.summary(), highlight=False)
        console.print(
            f"wrote LoRA adapter [bold]{path}[/] ({path.stat().st_size / 2**20:.1f} MiB); "
            f"use: llama-cli -m BASE.gguf --lora {path.name}",
            highlight=False,
        )
        return
    report = export_recipe(r)
    console.print(f"[bold]exported[/] {report.source} (template {report.template})", highlight=False)
    for line in report.lines():
        console.print(line, highlight=False, soft_wrap=True)
    files = [r.modelfile.path for r in report.results if r.modelfile]
    if files:
        console.print(f"Ollama: ollama create my-model -f {files[0]}", highlight=False)
