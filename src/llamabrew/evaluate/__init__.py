"""Evaluate a model on held-out instruction data: `llamabrew.evaluate.run(...)`.

One scoring path for every caller (``llamabrew eval``, export's ``--eval``, quickstart): an engine (a run, a
model directory, a GGUF or an OpenAI-compatible server) → answers (`answers.generate_answers`, cached with
their sampling settings) → scorers (`scores.SCORERS`) → an `EvalReport`, saved with the run.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamabrew.data.formats import Example, load_examples
from llamabrew.engines import Engine, describe, open_engine
from llamabrew.errors import LlamabrewError
from llamabrew.evaluate.answers import generate_answers, greedy
from llamabrew.evaluate.scores import (
    SCORERS,
    EvalReport,
    contains_match,
    exact_match,
    held_out_loss,
    normalize,
    prompts_of,
    score_answers,
)
from llamabrew.models import set_threads
from llamabrew.progress import progress_bar
from llamabrew.recipe import EvalRecipe
from llamabrew.run import Run

__all__ = ["SCORERS", "EvalReport", "EvalResult", "contains_match", "exact_match", "generate_answers", "normalize",
           "run", "run_recipe", "score_engine"]


@dataclass
class EvalResult:
    tuned: EvalReport
    base: EvalReport | None = None  # with compare=True: the base model alone, same template and data

    def as_dict(self) -> dict[str, Any]:
        report = self.tuned.as_dict()
        if self.base is not None:
            report["base"] = self.base.as_dict()
        return report


def score_engine(engine: Engine, data: str | Path | list[Example], max_new_tokens: int = 64,
                 batch_size: int = 16, limit: int | None = None, label: str = "evaluating",
                 cache: str | Path | None = None, loss: bool = True) -> EvalReport:
    """Greedy answers of ``engine`` on ``data``, scored; with ``loss``, a torch engine's held-out loss too."""
    examples = (data if isinstance(data, list) else load_examples(data))[:limit]
    with progress_bar(transient=True) as bar:
        task = bar.add_task(label, total=len(examples), unit="ex", info="")
        answers = generate_answers(engine, prompts_of(examples), greedy(max_new_tokens), cache=cache,
                                   batch_size=batch_size, advance=lambda k: bar.advance(task, k))
    report = score_answers(examples, answers, describe(engine))
    if loss and hasattr(engine, "model") and hasattr(engine, "tokenizer"):
        report.with_loss(held_out_loss(engine, examples))  # type: ignore[arg-type]
    return report


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
    save: bool = True,
) -> EvalResult:
    """Score ``model`` (hub id, model dir, run dir, ``.gguf`` file or ``openai:URL[#MODEL]``), with an optional
    ``adapter``; ``compare`` adds the base alone. The report is saved in a run directory (``reports/eval.json``)."""
    set_threads(threads)
    examples = load_examples(data)  # bad data fails before a model is loaded
    engine = open_engine(model, adapter=adapter, template=template, threads=threads)
    disable = getattr(getattr(engine, "model", None), "disable_adapter", None)
    if compare and disable is None:  # before scoring: don't make the user wait for a whole evaluation first
        raise LlamabrewError("--compare needs an adapter (a run directory or --adapter)")
    tuned = score_engine(engine, examples, max_new_tokens, batch_size, limit, "evaluating")
    base = None
    if compare:
        ctx = disable() if callable(disable) else contextlib.nullcontext()
        with ctx:
            base = score_engine(engine, examples, max_new_tokens, batch_size, limit, "evaluating base")
            base.engine += " (adapter disabled)"
    result = EvalResult(tuned, base)
    target = Run(adapter or model)
    if save and target.exists():
        target.save_report("eval", {"data": str(data), "max_new_tokens": max_new_tokens, **result.as_dict()})
    return result


def run_recipe(recipe: EvalRecipe) -> EvalResult:
    """`llamabrew eval` (and a pipeline's eval stage): `run` with the settings of an `EvalRecipe`."""
    model = recipe.model or recipe.adapter
    if model is None:
        raise LlamabrewError("pass --base (a run or model directory, a .gguf file or openai:URL) and/or --adapter")
    if recipe.data is None:
        raise LlamabrewError("pass --data (held-out instruction → expected output)")
    return run(model, recipe.data, adapter=recipe.adapter if recipe.model else None, compare=recipe.compare,
               template=recipe.template, max_new_tokens=recipe.max_new_tokens, batch_size=recipe.batch_size,
               limit=recipe.limit, threads=recipe.threads)
