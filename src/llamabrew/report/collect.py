"""Everything the report shows, read from a pipeline's run directory (``pipeline.json`` and each stage's outputs)
or from a single run directory (its recipe, loss log, summary and ``reports/*.json``). Nothing is recomputed
except the data statistics, which re-read the training files with the run's own tokenizer and template."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llamabrew.errors import LlamabrewError
from llamabrew.io import read_jsonl
from llamabrew.run import Run

log = logging.getLogger(__name__)
STATE = "pipeline.json"  # llamabrew.pipeline.state writes it; the report reads it without importing the runner
MAX_EXAMPLES = 50_000  # token lengths of at most this many examples (the counts cover them all)


@dataclass
class DataFacts:
    files: list[str]
    records: int
    duplicates: int | None = None
    truncated: int = 0
    dropped: int = 0
    lengths: list[int] = field(default_factory=list)  # tokens per example as rendered for training
    cutoff: int | None = None
    unit: str = "tokens"
    note: str = ""


@dataclass
class RunFacts:
    name: str
    path: Path
    summary: dict[str, Any] | None
    loss: list[dict[str, Any]]
    data: DataFacts | None


@dataclass
class ReportData:
    title: str
    source: Path
    recipe_name: str
    recipe_text: str
    stages: list[dict[str, Any]] = field(default_factory=list)  # name, kind, status, elapsed_s, costs
    data_stages: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    runs: list[RunFacts] = field(default_factory=list)
    evals: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    judges: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    exports: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    serve: list[str] = field(default_factory=list)


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


def data_facts(run: Run) -> DataFacts | None:
    """Counts, duplicates, drops and token lengths of what a run trained on, as its recipe read it."""
    from llamabrew.recipe import PretrainRecipe

    recipe = run.recipe()
    if recipe is None:
        return None
    try:
        if isinstance(recipe, PretrainRecipe):
            return _corpus_facts(run, recipe)
        return _example_facts(run, recipe)
    except (LlamabrewError, OSError, ValueError) as e:
        files = [str(f) for f in getattr(getattr(recipe, "data", None), "train_files", [])]
        return DataFacts(files, 0, note=f"data not readable now: {str(e).splitlines()[0]}")


def _corpus_facts(run: Run, recipe: Any) -> DataFacts:
    from transformers import AutoTokenizer

    from llamabrew.train.pretrain import read_corpus

    docs = read_corpus(list(recipe.corpus)).docs
    tokenizer = AutoTokenizer.from_pretrained(run.path)
    lengths = [len(ids) for ids in tokenizer(docs[:MAX_EXAMPLES], add_special_tokens=True)["input_ids"]]
    return DataFacts([str(p) for p in recipe.corpus], len(docs), lengths=lengths,
                     note=f"documents, laid end to end into training windows of {recipe.seq_len} tokens")


def _example_facts(run: Run, recipe: Any) -> DataFacts:
    from llamabrew.data.formats import find_duplicates, load_examples, read_records

    files = [str(f) for f in recipe.data.train_files]
    if recipe.objective != "sft":  # pairs or prompts: counted, not rendered
        n = sum(1 for f in recipe.data.train_files for _ in read_records(f))
        return DataFacts(files, n, note=f"{recipe.objective} records")
    from transformers import AutoTokenizer

    from llamabrew.data.encode import encode_examples, response_spans
    from llamabrew.run import trained_template

    examples = [ex for f in recipe.data.train_files for ex in load_examples(f)]
    tokenizer = AutoTokenizer.from_pretrained(run.path)
    template = trained_template(run.path, tokenizer)
    sample = examples[:MAX_EXAMPLES]
    texts = [response_spans(template, tokenizer, ex)[0] for ex in sample]
    lengths = [len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]  # + EOS
    _, encoded = encode_examples(sample, tokenizer, template, recipe.data.cutoff_len, recipe.data.overlong,
                                 recipe.data.train_on_inputs)
    return DataFacts(files, len(examples), len(find_duplicates(examples)), encoded.truncated,
                     encoded.dropped + encoded.no_target, lengths, recipe.data.cutoff_len,
                     note="" if len(examples) <= MAX_EXAMPLES else f"lengths of the first {MAX_EXAMPLES}")


def run_facts(name: str, path: Path) -> RunFacts:
    run = Run(path)
    summary = run.summary()
    return RunFacts(name, path, asdict(summary) if summary else None, read_jsonl(run.loss_log), data_facts(run))


def collect(source: str | Path) -> ReportData:
    """What `write_report` shows: a pipeline's run directory or one run directory."""
    source = Path(source)
    if (source / STATE).is_file():
        return _from_pipeline(source)
    if Run.is_run(source):
        return _from_run(source)
    raise LlamabrewError(f"{source}: neither a pipeline's run directory (no {STATE}) nor a run directory")


def _from_pipeline(folder: Path) -> ReportData:
    state = json.loads((folder / STATE).read_text(encoding="utf-8"))
    file = Path(state.get("file") or "")
    text = _text(file) if file.name else ""
    data = ReportData(f"pipeline {state.get('name', folder.name)}", folder, str(file) if text else
                      str(folder / "pipeline.yaml"), text or _text(folder / "pipeline.yaml"))
    for name in state.get("order", list(state["stages"])):
        rec = state["stages"].get(name)
        if rec is None:
            data.stages.append({"name": name, "kind": "", "status": "not run"})
            continue
        kind, result = rec["kind"], rec.get("result") or {}
        row = {"name": name, "kind": kind, "status": rec["status"], "elapsed_s": rec.get("elapsed_s"),
               "device_hours": None, "cost_usd": None, "teacher_usd": None}
        if kind in ("train", "pretrain") and rec["status"] == "done":
            path = Path(next(iter(rec["outputs"].values())))
            facts = run_facts(name, path)
            data.runs.append(facts)
            row |= {k: (facts.summary or {}).get(k) for k in ("device_hours", "cost_usd")}
        usage = result.get("usage") if isinstance(result.get("usage"), dict) else None
        if usage:
            row["teacher_usd"] = usage.get("cost_usd")
        data.stages.append(row)
        if rec["status"] != "done":
            continue
        if kind in ("world", "generate", "translate", "curate", "convert"):
            data.data_stages.append((name, kind, result))
        elif kind == "eval":
            data.evals.append((name, result))
        elif kind == "judge":
            data.judges.append((name, result))
        elif kind == "export":
            data.exports.append((name, result))
        elif kind == "serve":
            data.serve.append(result.get("command", ""))
    return data


def _from_run(folder: Path) -> ReportData:
    run = Run(folder)
    facts = run_facts(folder.name, folder)
    data = ReportData(f"run {folder.name}", folder, str(run.recipe_path), _text(run.recipe_path), runs=[facts])
    s = facts.summary or {}
    data.stages.append({"name": folder.name, "kind": s.get("kind", ""), "status": "done" if s else "no summary",
                        "elapsed_s": s.get("elapsed_s"), "device_hours": s.get("device_hours"),
                        "cost_usd": s.get("cost_usd"), "teacher_usd": None})
    for stage, bucket in (("eval", data.evals), ("judge", data.judges), ("export", data.exports)):
        if (report := run.read_report(stage)) is not None:
            bucket.append((stage, report))
    return data
