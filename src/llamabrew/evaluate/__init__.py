"""Evaluate a model (or base + adapter) on held-out instruction data: `llamabrew.evaluate.run(...)`."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from llamabrew.data.formats import Example, load_examples
from llamabrew.errors import LlamabrewError
from llamabrew.evaluate.scores import EvalReport, contains_match, exact_match, normalize, score
from llamabrew.models import set_threads
from llamabrew.progress import progress_bar
from llamabrew.serve.engines import TorchEngine, open_torch_engine

__all__ = ["EvalReport", "EvalResult", "contains_match", "exact_match", "normalize", "run", "score_engine"]


@dataclass
class EvalResult:
    tuned: EvalReport
    base: EvalReport | None = None  # with compare=True: the base model alone, same template and data


def score_engine(engine: TorchEngine, data: str | Path | list[Example], max_new_tokens: int = 64,
                 batch_size: int = 16, limit: int | None = None, label: str = "evaluating") -> EvalReport:
    examples = (data if isinstance(data, list) else load_examples(data))[:limit]
    with progress_bar(transient=True) as bar:
        task = bar.add_task(label, total=len(examples), unit="ex", info="")
        return score(engine, examples, max_new_tokens, batch_size, advance=lambda k: bar.advance(task, k))


def run(
    model: str,
    data: str | Path,
    adapter: str | None = None,
    compare: bool = False,
    template: str | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    limit: int | None = None,
    threads: int | None = None,
) -> EvalResult:
    """Score ``model`` (a hub id, model dir or run dir) with optional ``adapter``; ``compare`` adds base alone."""
    set_threads(threads)
    examples = load_examples(data)  # bad data fails before a model is loaded
    engine = open_torch_engine(model, adapter=adapter, template=template)
    disable = getattr(engine.model, "disable_adapter", None)
    if compare and disable is None:  # before scoring: don't make the user wait for a whole evaluation first
        raise LlamabrewError("--compare needs an adapter (a run directory or --adapter)")
    tuned = score_engine(engine, examples, max_new_tokens, batch_size, limit, "evaluating")
    base = None
    if compare:
        ctx = disable() if callable(disable) else contextlib.nullcontext()
        with ctx:
            base = score_engine(engine, examples, max_new_tokens, batch_size, limit, "evaluating base")
    return EvalResult(tuned, base)
