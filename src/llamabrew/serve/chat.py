"""Terminal chat: streamed tokens, multi-turn history, tokens/s; ``--prompt`` answers once and exits."""

from __future__ import annotations

import sys
from typing import TextIO

from llamabrew.engines import Engine, Sampling
from llamabrew.progress import terminal as console

HELP = "commands: /reset clears the history, /exit (or Ctrl-D) quits"


def answer(engine: Engine, messages: list[dict[str, str]], sampling: Sampling, out: TextIO | None = None) -> str:
    """Stream one answer to ``out`` (default: the current stdout) and return it; speed goes to stderr."""
    out = out or sys.stdout
    pieces = []
    for piece in engine.stream(messages, sampling):
        out.write(piece)
        out.flush()
        pieces.append(piece)
    out.write("\n")
    out.flush()
    s = engine.last
    console.print(f"[dim]{s.completion_tokens} tokens · {s.tokens_per_second:.1f} tok/s · "
                  f"finish: {s.finish_reason}[/]", highlight=False)
    return "".join(pieces).strip()


def chat_loop(engine: Engine, sampling: Sampling, system: str | None = None, prompt: str | None = None) -> None:
    """Interactive multi-turn chat on the terminal, or a single answer when ``prompt`` is given."""
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    if prompt is not None:
        answer(engine, [*history, {"role": "user", "content": prompt}], sampling)
        return
    console.print(f"[bold]llamabrew chat[/] ({engine.name}, template {engine.template.name}) · {HELP}")
    while True:
        try:
            text = input("\nyou> ")
        except EOFError:
            break
        text = text.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history = history[:1] if system else []
            console.print("[dim]history cleared[/]")
            continue
        history.append({"role": "user", "content": text})
        sys.stdout.write("bot> ")
        reply = answer(engine, history, sampling)
        history.append({"role": "assistant", "content": reply})
