"""A run directory and the one place that knows its layout.

Every stage reads and writes a run through `Run`: the resolved recipe, the weights (a PEFT adapter or a whole
model) and the tokenizer with the chat template it was trained on, the loss log, one summary schema for every
kind of run, the reports of later stages (eval, export, judge) as JSON, and the GGUF cache::

    RUN/
      recipe.yaml                  resolved recipe: repeats the run exactly
      adapter_config.json, adapter_model.safetensors    (LoRA)  | config.json, model.safetensors (full, pretrain)
      tokenizer.json, tokenizer_config.json, chat_template.jinja
      loss.jsonl, loss.png, checkpoints/
      train_summary.json           `RunSummary`
      reports/<stage>.json         eval, export, judge, ...
      gguf/model-<quant>.gguf      exports, reused by chat and serve

A directory written before `Run` existed still opens: a summary missing newer fields reads them as None.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from llamabrew.errors import LlamabrewError
from llamabrew.io import atomic_write_text

RECIPE = "recipe.yaml"
SUMMARY = "train_summary.json"
LOSS_LOG = "loss.jsonl"
LOSS_PLOT = "loss.png"
CHECKPOINTS = "checkpoints"
REPORTS = "reports"
GGUF_DIR = "gguf"
ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class RunSummary:
    """How a training run ended, the same fields for sft, pretrain and the preference runs.

    ``kind`` is the stage ("sft", "pretrain", "reward", "dpo", "grpo"), ``method`` how weights were trained
    ("lora", "full"). Counts are examples for fine-tuning and windows for pretraining."""

    kind: str
    method: str
    steps: int
    train_loss: float | None
    val_loss: float | None
    stopped_early: bool
    elapsed_s: float
    train_examples: int = 0
    val_examples: int = 0
    params: int | None = None
    trainable_params: int | None = None
    metrics: dict[str, float] | None = None  # the objective's own final figures (reward accuracy, margins, ...)
    device_hours: float | None = None  # wall time × devices
    cost_usd: float | None = None  # device-hours × the machine's price, when it was given
    fast_path: dict[str, Any] | None = None  # how steps ran (llamabrew.train.fastpath): packing, kernels, ...

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSummary:
        """Read this or an older schema (pretrain and sft summaries once had different fields)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("kind", "pretrain" if "params" in data and "train_examples" not in data else "sft")
        values.setdefault("method", "full" if values["kind"] == "pretrain" else "lora")
        for name in ("steps", "train_loss", "val_loss", "stopped_early", "elapsed_s"):
            values.setdefault(name, None if name.endswith("loss") else 0)
        return cls(**values)


class Run:
    """A run directory. ``Run(path)`` names one (it need not exist yet); `Run.open` wants an existing run."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def open(cls, path: str | Path) -> Run:
        run = cls(path)
        if not run.exists():
            raise LlamabrewError(f"{path}: not a run directory (no {RECIPE} or {ADAPTER_CONFIG})")
        return run

    @staticmethod
    def is_run(path: str | Path) -> bool:
        """A directory llamabrew trained (or a PEFT adapter directory from elsewhere)."""
        p = Path(path)
        return p.is_dir() and ((p / RECIPE).is_file() or (p / ADAPTER_CONFIG).is_file())

    def exists(self) -> bool:
        return self.is_run(self.path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # ---- layout ----
    @property
    def recipe_path(self) -> Path:
        return self.path / RECIPE

    @property
    def loss_log(self) -> Path:
        return self.path / LOSS_LOG

    @property
    def loss_plot(self) -> Path:
        return self.path / LOSS_PLOT

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    def report_path(self, stage: str) -> Path:
        if not stage.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"report name {stage!r}: letters, digits, '-' and '_' only")
        return self.path / REPORTS / f"{stage}.json"

    def gguf_path(self, quant: str) -> Path:
        return self.path / GGUF_DIR / f"model-{quant}.gguf"

    # ---- what the run holds ----
    @property
    def is_adapter(self) -> bool:
        return (self.path / ADAPTER_CONFIG).is_file()

    def base(self) -> str | None:
        """The base model an adapter was trained on (None for a whole model)."""
        from llamabrew.models import adapter_base

        return adapter_base(self.path) if self.is_adapter else None

    def recipe(self) -> Any:
        """The saved fine-tuning `Recipe` or `PretrainRecipe`, or None (a plain or foreign directory)."""
        from llamabrew.recipe import PretrainRecipe, Recipe, load_recipe

        if not self.recipe_path.is_file():
            return None
        for cls in (Recipe, PretrainRecipe):
            try:
                return load_recipe(cls, self.recipe_path)
            except LlamabrewError:
                continue
        return None

    def template_name(self) -> str:
        """The chat template the run was trained with ("auto": its tokenizer's own)."""
        recipe = self.recipe()
        data = getattr(recipe, "data", None)
        return getattr(data, "template", None) or "auto"

    def summary(self) -> RunSummary | None:
        path = self.path / SUMMARY
        if not path.is_file():
            return None
        return RunSummary.from_dict(json.loads(path.read_text(encoding="utf-8")))

    def write_summary(self, summary: RunSummary) -> Path:
        path = self.path / SUMMARY
        atomic_write_text(path, json.dumps(asdict(summary), indent=2, default=str))
        return path

    def save_report(self, stage: str, report: dict[str, Any]) -> Path:
        """A later stage's result, kept with the run (read back by the report page and the pipeline)."""
        path = self.report_path(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(report, indent=2, default=str))
        return path

    def read_report(self, stage: str) -> dict[str, Any] | None:
        path = self.report_path(stage)
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def trained_template(model_or_run: str | Path, tokenizer: Any, override: str | None = None) -> Any:
    """The `Template` a model or run answers in: ``override`` if given ("auto": the tokenizer's own), else the
    run's recipe, else the tokenizer's own. The one lookup behind chat, eval, export and serve."""
    from llamabrew.data.templates import get_template

    if override:
        return get_template(override, tokenizer)
    run = Run(model_or_run)
    return get_template(run.template_name() if run.exists() else "auto", tokenizer)
