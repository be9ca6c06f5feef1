"""The stage kinds a pipeline knows: for each, the recipe section its command takes, where it writes by default
(the stage's own folder), which of its fields name input files, and the outputs later stages may refer to."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from llamabrew.recipe import EvalRecipe, ExportRecipe, PretrainRecipe, Recipe, ServeRecipe
from llamabrew.stage_recipes import (
    ConvertRecipe,
    CurateRecipe,
    GenerateRecipe,
    JudgeRecipe,
    TranslateRecipe,
    WorldRecipe,
)

Outputs = Callable[[Any, Path], dict[str, Path]]  # (section, stage folder) → outputs, the default first


@dataclass(frozen=True)
class Kind:
    section: type[BaseModel]
    outputs: Outputs
    out_key: str | None = None  # the field saying where the stage writes; the stage's folder when unset
    out_name: str | None = None  # a file in the stage's folder rather than the folder itself
    files: tuple[str, ...] = ()  # fields naming input files that must exist (or be an earlier stage's output)
    models: tuple[str, ...] = ()  # fields naming a model or answers: checked when clearly a local path
    volatile: tuple[str, ...] = ()  # fields that do not change what the stage makes (left out of its hash)
    compute: bool = False  # trains on this machine: priced per hour


def export_paths(section: ExportRecipe, folder: Path) -> dict[str, Path]:
    """Where `export_gguf` writes each quant (its own rule: one file, or ``<stem>-<quant>.gguf`` for several)."""
    out = Path(section.out) if section.out else folder / "model.gguf"
    if out.suffix != ".gguf":
        return {q: out / f"model-{q}.gguf" for q in section.quants}
    if len(section.quants) == 1:
        return {section.quants[0]: out}
    return {q: out.with_name(f"{out.stem}-{q}.gguf") for q in section.quants}


def _world(r: WorldRecipe, _: Path) -> dict[str, Path]:
    out = Path(r.out or ".")
    files = {"train": "train.json", "held_out": "held_out.jsonl", "questions": "questions.jsonl",
             "corpus": "corpus.txt", "facts": "facts.json", **({"pairs": "pairs.jsonl"} if r.sign_off else {})}
    return {name: out / file for name, file in files.items()}


def _judge(r: JudgeRecipe, _: Path) -> dict[str, Path]:
    return {"summary": Path(r.out or ".") / "summary.json", **({"pairs": Path(r.pairs)} if r.pairs else {})}


KINDS: dict[str, Kind] = {
    "world": Kind(WorldRecipe, _world, "out"),
    "generate": Kind(GenerateRecipe, lambda r, _: {"out": Path(r.out)}, "out", "generated.jsonl",
                     files=("seeds",)),
    "translate": Kind(TranslateRecipe, lambda r, _: {"out": Path(r.out)}, "out", "translated.jsonl",
                      files=("input",)),
    "curate": Kind(CurateRecipe, lambda r, _: {n: Path(r.out_dir) / f"{n}.jsonl" for n in ("train", "val")}
                   | {"report": Path(r.out_dir) / "report.json"}, "out_dir", files=("inputs",)),
    "convert": Kind(ConvertRecipe, lambda r, _: {"out": Path(r.out)}, "out", "converted.jsonl", files=("input",)),
    "pretrain": Kind(PretrainRecipe, lambda r, _: {"model": Path(r.out)}, "out", files=("corpus",),
                     volatile=("resume", "optim.log_to"), compute=True),
    "train": Kind(Recipe, lambda r, _: {"run": Path(r.out)}, "out",
                  files=("data.train_files", "data.val_files"), models=("model.base", "model.adapter"),
                  volatile=("resume", "optim.log_to"), compute=True),
    "eval": Kind(EvalRecipe, lambda _, d: {"report": d / "eval.json", "answers": d / "answers.jsonl"},
                 files=("data",), models=("model", "adapter")),
    "judge": Kind(JudgeRecipe, _judge, "out", files=("questions",), models=("a", "b")),
    "export": Kind(ExportRecipe, export_paths, "out", "model.gguf", files=("eval_file",), models=("model", "base")),
    "serve": Kind(ServeRecipe, lambda r, _: {}, models=("model",)),
}
