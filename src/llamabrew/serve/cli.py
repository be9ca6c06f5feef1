"""`llamabrew serve`: the command over the server runtime (`server`) and its ASGI app (`api`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from llamabrew.cli_common import Flags, console, friendly_errors, is_local, recipe_flags
from llamabrew.errors import LlamabrewError
from llamabrew.extras import require
from llamabrew.recipe import ServeRecipe, load_recipe
from llamabrew.serve.server import parse_adapters
from llamabrew.serve.vllm import vllm_command

Opt = typer.Option
SERVE_FLAGS: Flags = {
    "host": "host", "port": "port", "name": "name", "template": "template", "engine": "engine", "quant": "quant",
    "ctx": "ctx", "threads": "threads", "max_tokens": "max_tokens", "max_body_kb": "max_body_kb",
    "max_queue": "max_queue", "parallel": "parallel", "prompt_cache": "prompt_cache",
    "cors_origin": ("cors_origins", "--cors-origin"), "start_timeout": "start_timeout",
}


@friendly_errors
@recipe_flags(ServeRecipe, SERVE_FLAGS)
def serve(
    model_or_run: Annotated[str | None, typer.Argument(help="run directory, model directory, hub id or .gguf "
                                                            "file")] = None,
    adapter: Annotated[list[str] | None, Opt(help="NAME=DIR: another adapter of the same base, answered as "
                                                  "model NAME (repeatable)")] = None,
    api_key: Annotated[str | None, Opt(envvar="LLAMABREW_API_KEY", show_default=False,
                                       help="require 'Authorization: Bearer KEY' on /v1")] = None,
    recipe: Annotated[Path | None, Opt(help="serve recipe YAML (a `serve:` section's fields); flags override it")
                      ] = None,
    print_vllm_command: Annotated[bool, Opt("--print-vllm-command",
                                            help="print the equivalent `vllm serve` line and exit")] = False,
    *, overrides: dict[str, Any],
) -> None:
    """Serve models over an OpenAI-compatible API with a web chat page at /."""
    adapters = parse_adapters(adapter)
    r = load_recipe(ServeRecipe, recipe, {"model": model_or_run, **overrides})
    if r.model is None:
        raise LlamabrewError("name the run, model directory or .gguf file to serve")
    adapters = {**r.adapters, **adapters}
    if print_vllm_command:
        line, notes = vllm_command(r.model, adapters, r.name)
        for note in notes:
            console.print(f"[yellow]note:[/] {note}", highlight=False)
        print(line)
        return
    if r.engine == "vllm":
        raise typer.Exit(_serve_vllm(r, adapters, api_key))
    require("serve", "llamabrew serve")  # before loading a model for minutes
    import uvicorn

    from llamabrew.models import set_threads
    from llamabrew.serve.api import create_app
    from llamabrew.serve.registry import open_registry

    set_threads(r.threads)
    registry = open_registry(r.model, adapters, name=r.name, template=r.template, ctx=r.ctx, threads=r.threads,
                             engine=r.engine, quant=r.quant, parallel=r.parallel, prompt_cache=r.prompt_cache)
    app = create_app(registry, api_key, max_body=r.max_body_kb * 1024, max_queue=r.max_queue,
                     default_max_tokens=r.max_tokens, cors_origins=r.cors_origins or None)
    host, port = r.host, r.port
    url = f"http://{'localhost' if is_local(host) else host}:{port}"
    console.print(f"[bold]llamabrew serve[/]: {', '.join(registry.names)}\n  chat page  {url}/\n  OpenAI API "
                  f"{url}/v1{'  (API key required)' if api_key else ''}", highlight=False)
    for line in registry.describe_slots():
        console.print(f"  {line}", highlight=False)
    if r.parallel and not any(getattr(m.engine, "runner", None) for m in registry.models.values()):
        console.print("[yellow]note:[/] --parallel applies to llama.cpp (a .gguf or --engine llamacpp); the torch "
                      "engine serves one request at a time", highlight=False)
    if not is_local(host) and not api_key:
        console.print("[yellow]warning:[/] listening beyond this machine without --api-key: anyone who can "
                      "reach it can use it", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=3, server_header=False)


def _serve_vllm(r: ServeRecipe, adapters: dict[str, str], api_key: str | None) -> int:
    """vLLM's OpenAI server as a child process, with llamabrew's names and the trained template."""
    from llamabrew.serve.vllm import serve_vllm

    assert r.model is not None
    ignored = [flag for flag, value in (("--template", r.template), ("--ctx", r.ctx), ("--threads", r.threads))
               if value is not None]
    if ignored:
        console.print(f"[yellow]warning:[/] {', '.join(ignored)} not used by vLLM (it serves the trained template "
                      "and sizes its own context)", highlight=False)

    def ready(url: str, ids: list[str]) -> None:
        console.print(f"[bold]llamabrew serve[/] (vLLM): {', '.join(ids)}\n  OpenAI API {url}/v1"
                      f"{'  (API key required)' if api_key else ''}", highlight=False)
        if not is_local(r.host) and not api_key:
            console.print("[yellow]warning:[/] listening beyond this machine without --api-key: anyone who can "
                          "reach it can use it", highlight=False)

    return serve_vllm(r.model, adapters, name=r.name, host=r.host, port=r.port, api_key=api_key,
                      start_timeout_s=r.start_timeout, on_ready=ready)
