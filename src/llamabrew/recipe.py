"""The typed recipe that YAML files and CLI flags both fill, and that every stage reads.

A resolved recipe is written next to every output (``recipe.yaml``) so a run can be repeated exactly:
``llamabrew train runs/x/recipe.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llamabrew.errors import InputError, LlamabrewError
from llamabrew.io import atomic_write_text

R = TypeVar("R", bound=BaseModel)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelConfig(Section):
    base: str | None = Field(None, description="Hugging Face hub id or local model directory")
    trust_remote_code: bool = Field(False, description="run model code shipped with the checkpoint (off: safer)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    quantize_4bit: bool = Field(False, description="QLoRA: load the base in 4-bit (needs CUDA + bitsandbytes)")


class DataConfig(Section):
    train_files: list[Path] = Field(default_factory=list, description="Alpaca / ShareGPT / messages JSON(L)")
    val_files: list[Path] = Field(default_factory=list, description="held-out files; else a split of train")
    val_fraction: float = Field(0.05, ge=0, lt=1)
    val_max: int = Field(500, ge=0, description="at most this many examples in the automatic split")
    template: str = Field("auto", description="auto, alpaca, alpaca_short, vicuna or chatml")
    cutoff_len: int = Field(512, gt=8)
    overlong: Literal["truncate", "drop"] = "truncate"
    train_on_inputs: bool = False
    drop_duplicates: bool = False


class LoraConfig(Section):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class OptimConfig(Section):
    """The optimisation loop shared by fine-tuning and pretraining."""

    epochs: float = Field(3, gt=0)
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps")
    micro_batch_size: int = Field(4, gt=0)
    grad_accum: int | None = Field(None, gt=0, description="micro-batches per optimizer step (default: 8, fewer "
                                   "for small data; see llamabrew.train.defaults)")
    learning_rate: float | None = Field(None, gt=0, description="peak learning rate (default: from the model's "
                                        "width; see llamabrew.train.defaults)")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine floor as a fraction of the peak lr")
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    eval_every: int = Field(0, ge=0, description="steps between validation passes (0: once per epoch)")
    save_every: int = Field(0, ge=0, description="steps between checkpoints (0: once per epoch)")
    keep_checkpoints: int = Field(2, gt=0)
    log_every: int = Field(1, gt=0)
    max_minutes: float | None = Field(None, gt=0, description="stop cleanly and save when the time is up")
    seed: int = 42
    threads: int | None = Field(None, gt=0, description="CPU threads (default: free cores)")


class PretrainOptimConfig(OptimConfig):
    """Pretraining defaults: many passes (knowledge needs exposures), a small model's learning rate."""

    epochs: float = Field(40, gt=0)
    learning_rate: float | None = Field(1e-3, gt=0)
    micro_batch_size: int = Field(4, gt=0, description="windows of up to seq_len tokens per step")
    grad_accum: int | None = Field(1, gt=0)
    warmup_ratio: float = Field(0.02, ge=0, lt=1)
    weight_decay: float = Field(0.1, ge=0)
    max_minutes: float | None = Field(4.0, gt=0, description="time budget; the model is sized to fit it")


class Recipe(Section):
    """Fine-tuning: base model + instruction data → adapter (or full model)."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    method: Literal["lora", "full"] = "lora"
    lora: LoraConfig = LoraConfig()
    optim: OptimConfig = OptimConfig()
    out: Path = Path("runs/sft")
    resume: bool = False


class PretrainRecipe(Section):
    """Pretraining a small LLaMA-architecture base from scratch on raw text."""

    corpus: list[Path] = Field(default_factory=list, description="txt or JSONL ('text' field) files")
    out: Path = Path("runs/base")
    params: int | None = Field(None, gt=0, description="model size; default: compute-optimal for the budget")
    vocab_size: int = Field(4096, ge=300)
    seq_len: int = Field(256, gt=8)
    pack: bool = Field(True, description="pack consecutive documents whole into seq_len windows (corpus order)")
    val_fraction: float = Field(0.02, ge=0, lt=1)
    optim: PretrainOptimConfig = PretrainOptimConfig()
    resume: bool = False


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, file: Path | None = None) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        if tree.get(p) is None:  # absent, or an empty YAML section (`optim:` with every key commented out)
            tree[p] = {}
        elif not isinstance(tree[p], dict):
            raise InputError(f"must be a mapping to set '{dotted}', got {type(tree[p]).__name__}",
                             file=file, field=p)
        tree = tree[p]
    tree[leaf] = value


def load_recipe(
    cls: type[R], path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> R:
    """Build a recipe from a YAML file (optional) with dotted-key overrides (``"optim.learning_rate"``) on top."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise InputError("recipe file not found", file=p)
        try:
            tree = yaml.safe_load(p.read_bytes().decode("utf-8")) or {}
        except UnicodeDecodeError as e:
            raise InputError(f"not valid UTF-8 (byte {e.start})", file=p) from None
        except yaml.YAMLError as e:
            line = getattr(getattr(e, "problem_mark", None), "line", None)
            raise InputError(f"invalid YAML: {getattr(e, 'problem', e)}", file=p,
                             line=None if line is None else line + 1) from None
        if not isinstance(tree, dict):
            raise InputError("a recipe must be a mapping", file=p)
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(tree, key, value, None if path is None else Path(path))
    try:
        return cls.model_validate(tree)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        raise InputError(err["msg"], file=path, field=field) from None


def save_recipe(recipe: BaseModel, out_dir: str | Path) -> Path:
    """Write the resolved recipe beside a run's outputs."""
    path = Path(out_dir) / "recipe.yaml"
    data = recipe.model_dump(mode="json")
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
    return path


def read_saved_recipe(run_dir: str | Path) -> Recipe | None:
    """The recipe a run was trained with, or None for a plain model directory."""
    path = Path(run_dir) / "recipe.yaml"
    if not path.is_file():
        return None
    try:
        return load_recipe(Recipe, path)
    except LlamabrewError:
        return None
