"""The typed recipe that YAML files and CLI flags both fill, and that every stage reads.

A resolved recipe is written next to every output (``recipe.yaml``) so a run can be repeated exactly:
``llamabrew train runs/x/recipe.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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
    adapter: str | None = Field(None, description="start from this LoRA adapter (a run directory, e.g. the SFT "
                                "run DPO improves on); the base defaults to the adapter's")


class DataConfig(Section):
    train_files: list[Path] = Field(default_factory=list, description="Alpaca / ShareGPT / messages JSON(L)")
    val_files: list[Path] = Field(default_factory=list, description="held-out files; else a split of train")
    val_fraction: float = Field(0.05, ge=0, lt=1, description="share of the data held out when no val_files")
    val_max: int = Field(500, ge=0, description="at most this many examples in the automatic split")
    template: str = Field("auto", description="auto, alpaca, alpaca_short, vicuna or chatml")
    cutoff_len: int = Field(512, gt=8, description="max tokens per example")
    overlong: Literal["truncate", "drop"] = Field("truncate", description="examples over the cutoff: truncate "
                                                 "or drop")
    train_on_inputs: bool = Field(False, description="also learn the prompt tokens")
    drop_duplicates: bool = Field(False, description="remove exact duplicate examples")
    packing: bool | Literal["auto"] = Field("auto", description="several examples per row (up to cutoff_len "
                                            "tokens), each with its own positions and attention; off keeps one "
                                            "padded example per row; auto: on CUDA, off on a CPU (as before)")


class LoraConfig(Section):
    r: int = Field(16, gt=0, description="LoRA rank")
    alpha: int | None = Field(None, gt=0, description="LoRA alpha (scale = alpha / r; default: twice the rank)")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout")
    target_modules: list[str] | Literal["all-linear", "auto"] = Field(
        "auto", description="modules the adapter trains: all-linear, a list of names, or auto: all-linear, but the "
        "attention projections only on a base llamabrew pretrained (see llamabrew.train.defaults)")
    use_dora: bool = Field(False, description="DoRA: learn each weight's magnitude apart from its direction "
                           "(PEFT's use_dora; slower steps)")
    use_rslora: bool = Field(False, description="rsLoRA: scale by alpha/sqrt(r) instead of alpha/r, so higher "
                             "ranks keep learning (PEFT's use_rslora)")
    train_untrained_tokens: bool = Field(True, description="also train the embeddings of tokens the base never "
                                         "read in pretraining (recorded by llamabrew pretrain; see "
                                         "llamabrew.train.untrained)")

    @model_validator(mode="after")
    def _alpha_follows_rank(self) -> LoraConfig:
        if self.alpha is None:
            self.alpha = 2 * self.r
        return self


class OptimConfig(Section):
    """The optimisation loop shared by fine-tuning and pretraining."""

    epochs: float = Field(3, gt=0, description="passes over the data")
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps")
    micro_batch_size: int = Field(4, gt=0, description="examples per forward pass")
    grad_accum: int | None = Field(None, gt=0, description="micro-batches per optimizer step (default: 8, fewer "
                                   "for small data; see llamabrew.train.defaults)")
    learning_rate: float | None = Field(None, gt=0, description="peak learning rate (default: from the model's "
                                        "width; see llamabrew.train.defaults)")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine floor as a fraction of the peak lr")
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto, fp32, bf16 or fp16")
    eval_every: int = Field(0, ge=0, description="steps between validation passes (0: once per epoch)")
    save_every: int = Field(0, ge=0, description="steps between checkpoints (0: once per epoch)")
    keep_checkpoints: int = Field(2, gt=0)
    log_every: int = Field(1, gt=0)
    max_minutes: float | None = Field(None, gt=0, description="stop cleanly and save when the time is up")
    seed: int = Field(42, description="seed for data order, init and dropout")
    threads: int | None = Field(None, gt=0, description="CPU threads (default: free cores)")
    loss_chunk_tokens: int = Field(0, ge=0, description="compute the loss this many target tokens at a time, "
                                   "never the whole fp32 logits (large vocabularies); 0: all at once")
    optimizer: Literal["auto", "adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw"] = Field(
        "auto", description="adamw (torch), or bitsandbytes' adamw_8bit / paged_adamw_8bit / paged_adamw; auto: "
        "paged_adamw_8bit with a 4-bit base on CUDA, else adamw")
    price_per_hour: float | None = Field(None, ge=0, description="what an hour of this machine costs in USD "
                                         "(default: $LLAMABREW_USD_PER_HOUR); shown in the plan and the summary")
    budget_usd: float | None = Field(None, gt=0, description="stop cleanly, with a checkpoint, once the time spent "
                                     "costs this much at price_per_hour (resumed runs count what came before)")
    parallel: Literal["auto", "ddp", "fsdp"] = Field(
        "auto", description="under torchrun / accelerate launch with several ranks: ddp (a whole model per device) "
        "or fsdp (weights, gradients and optimizer state sharded; full fine-tuning); auto: fsdp for --method "
        "full, ddp for LoRA")
    log_to: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=list, description="also log to tensorboard (event files in RUN/tensorboard) or wandb "
        "(the wandb extra; WANDB_MODE=offline needs no account); repeatable")


Switch = Literal["auto", "on", "off"]


class SpeedConfig(Section):
    """How a step runs, not what it computes: each "auto" is decided per device when the run starts
    (llamabrew.train.fastpath), printed in the plan and recorded in the run's summary."""

    attention: Literal["auto", "flash", "sdpa", "flex", "eager"] = Field(
        "auto", description="attention kernel: flash (varlen FlashAttention-2, packed rows by position ids), "
        "sdpa, flex or eager; auto: flash on CUDA where flash-attn is installed, else sdpa")
    loss: Literal["auto", "plain", "chunked", "liger"] = Field(
        "auto", description="cross-entropy: plain, chunked (optim.loss_chunk_tokens at a time, never the whole "
        "fp32 logits) or liger (fused linear cross-entropy, CUDA + liger-kernel); auto: liger where installed on "
        "CUDA, chunked on CUDA for large vocabularies, else plain")
    liger_kernels: Switch = Field("auto", description="liger-kernel's RMSNorm/RoPE/SwiGLU; auto: on CUDA where "
                                  "installed and the architecture is supported")
    gradient_checkpointing: Switch = Field("auto", description="recompute activations in backward; auto: only "
                                           "when the memory estimate says the card needs it (never on a CPU)")
    compile: Switch = Field("auto", description="torch.compile each decoder layer; auto: on CUDA for bf16 "
                            "LoRA/full (not 4-bit), off on a CPU")


class PretrainOptimConfig(OptimConfig):
    """Pretraining defaults: many passes (knowledge needs exposures), a small model's learning rate."""

    epochs: float = Field(40, gt=0, description="passes over the corpus")
    learning_rate: float | None = Field(1e-3, gt=0, description="peak learning rate")
    micro_batch_size: int = Field(4, gt=0, description="windows of up to seq_len tokens per step")
    grad_accum: int | None = Field(1, gt=0)
    warmup_ratio: float = Field(0.02, ge=0, lt=1)
    weight_decay: float = Field(0.1, ge=0)
    max_minutes: float | None = Field(4.0, gt=0, description="time budget; the model is sized to fit it")


class PreferenceConfig(Section):
    """DPO and its variants (``objective: dpo``)."""

    beta: float = Field(0.1, gt=0, description="DPO's beta: how far the policy may move from the reference")
    loss: Literal["sigmoid", "ipo", "hinge", "simpo"] = Field("sigmoid", description="sigmoid (DPO), ipo, "
                                                               "hinge, or simpo (SimPO: no reference model)")
    simpo_gamma: float = Field(0.5, ge=0, description="SimPO's target margin")
    nll_weight: float = Field(0.0, ge=0, description="add this times the chosen answer's NLL (RPO; keeps "
                              "DPO from pushing both answers down)")


class GRPOConfig(Section):
    """Online RL with group-relative advantages (``objective: grpo``)."""

    reward: str = Field("contains", description="exact or contains (against each prompt's reference), "
                        "module:function (called with prompt, completion, row), or a reward-model run directory")
    group_size: int = Field(4, ge=2, description="completions sampled per prompt")
    kl_coef: float = Field(0.04, ge=0, description="weight of the KL penalty to the starting model")
    max_completion_tokens: int = Field(32, gt=0, description="longest sampled completion")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the completions")


OBJECTIVE_METHODS = ("dpo", "reward", "grpo")  # `--method dpo` = LoRA with objective dpo


class Recipe(Section):
    """Fine-tuning: base model + instruction data → adapter (or full model)."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    method: Literal["lora", "full", "dpo", "reward", "grpo"] = Field(
        "lora", description="lora (an adapter) or full (every weight); dpo, reward or grpo: LoRA with that "
        "objective (preference pairs for dpo/reward, prompts for grpo)")
    objective: Literal["sft", "dpo", "reward", "grpo"] = Field(
        "sft", description="what training minimises: sft = next-token cross-entropy on the responses; dpo = "
        "preference pairs; reward = a reward model on pairs; grpo = sampled completions and a reward")
    preference: PreferenceConfig = PreferenceConfig()
    grpo: GRPOConfig = GRPOConfig()
    lora: LoraConfig = LoraConfig()
    optim: OptimConfig = OptimConfig()
    speed: SpeedConfig = SpeedConfig()
    out: Path = Field(Path("runs/sft"), description="run directory (adapter, loss log, checkpoints)")
    resume: bool = Field(False, description="continue from the last checkpoint in out")

    @model_validator(mode="after")
    def _objective_from_method(self) -> Recipe:
        """``method: dpo`` (the CLI's ``--method dpo``) means LoRA trained with the dpo objective."""
        if self.method in OBJECTIVE_METHODS:
            self.objective, self.method = self.method, "lora"  # type: ignore[assignment]
        return self


class PretrainRecipe(Section):
    """Pretraining a small LLaMA-architecture base from scratch on raw text."""

    corpus: list[Path] = Field(default_factory=list, description="txt or JSONL ('text' field) files")
    out: Path = Field(Path("runs/base"), description="output model directory")
    params: int | None = Field(None, gt=0, description="model size; default: compute-optimal for the budget")
    vocab_size: int = Field(4096, ge=300, description="BPE vocabulary size")
    seq_len: int = Field(256, gt=8, description="tokens per training window")
    pack: bool = Field(True, description="pack consecutive documents whole into seq_len windows (corpus order)")
    val_fraction: float = Field(0.02, ge=0, lt=1)
    optim: PretrainOptimConfig = PretrainOptimConfig()
    resume: bool = Field(False, description="continue from the last checkpoint in out")


class EvalRecipe(Section):
    """`llamabrew eval`: one model's greedy answers on held-out data, scored."""

    model: str | None = Field(None, description="run dir, model dir, hub id, .gguf file or openai:URL[#MODEL]")
    adapter: str | None = Field(None, description="PEFT adapter / run directory on top of model")
    data: Path | None = Field(None, description="JSONL/JSON of instruction → expected output")
    compare: bool = Field(False, description="also score the base alone (adapter disabled), side by side")
    template: str | None = Field(None, description="override the template (default: the trained one)")
    max_new_tokens: int = Field(64, gt=0, description="answer length limit")
    batch_size: int = Field(16, gt=0, description="prompts generated together (torch)")
    limit: int | None = Field(None, gt=0, description="score only the first N examples")
    threads: int | None = Field(None, gt=0, description="CPU threads (default: free cores)")


class ExportRecipe(Section):
    """`llamabrew export`: verified GGUF files (and an Ollama Modelfile) of a run or model."""

    model: str | None = Field(None, description="run directory, model directory or hub id")
    quants: list[str] = Field(["q8_0"], description="f16, q8_0, q4_0 or q4_k_m; several share one load")
    out: Path | None = Field(None, description="model.gguf (several quants: model-<quant>.gguf)")
    verify: bool = Field(True, description="compare the GGUF with torch in llama.cpp")
    eval_file: Path | None = Field(None, description="also score each GGUF on this eval JSONL")
    eval_limit: int = Field(50, gt=0, description="examples of eval_file to score")
    max_new_tokens: int = Field(64, gt=0, description="answer length limit when scoring")
    adapter_only: bool = Field(False, description="only the LoRA adapter, as a GGUF adapter")
    base: str | None = Field(None, description="base model (default: the adapter's)")
    template: str | None = Field(None, description="chat template (default: the one the run was trained with)")
    modelfile: bool = Field(True, description="write an Ollama Modelfile")
    threads: int | None = Field(None, gt=0, description="CPU threads (default: free cores)")
    trust_remote_code: bool = Field(False, description="run the model's own code")


class ServeRecipe(Section):
    """`llamabrew serve`: what is served and how; the API key is never part of a recipe (flag or env only)."""

    model: str | None = Field(None, description="run directory, model directory, hub id or .gguf file")
    adapters: dict[str, str] = Field(default_factory=dict, description="NAME: DIR of more adapters of the base")
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0: your whole network)")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    name: str | None = Field(None, description="model name of model (default: its folder name)")
    template: str | None = Field(None, description="override the chat template (default: the trained one)")
    engine: Literal["auto", "torch", "llamacpp", "vllm"] = Field(
        "auto", description="auto (.gguf → llamacpp, else torch), torch, llamacpp (a run is exported on the fly) "
        "or vllm (vLLM's own server as a child process: the vllm extra, CUDA)")
    start_timeout: float = Field(900, gt=0, description="seconds to wait for vLLM to answer (--engine vllm)")
    quant: str = Field("q8_0", description="quant type when exporting a run for engine llamacpp")
    ctx: int | None = Field(None, gt=0, description="llama.cpp context length (default: the model's)")
    threads: int | None = Field(None, gt=0, description="CPU threads (default: free cores)")
    max_tokens: int = Field(512, ge=1, description="answer length limit when a request sets none")
    max_body_kb: int = Field(1024, ge=1, description="largest request body accepted")
    parallel: int | None = Field(None, ge=1, le=64, description="llama.cpp: requests generated together, each "
                                 "in its own KV-cache slot (default: from --ctx and free memory, at most 8)")
    prompt_cache: bool = Field(True, description="llama.cpp: a conversation's next turn reuses the KV cache of "
                               "the turns its slot already read")
    max_queue: int = Field(256, ge=1, description="requests allowed to wait for a slot; more get 429")
    cors_origins: list[str] = Field(default_factory=list, description="let web pages from these origins call "
                                    "the API")


def field_of(cls: type[BaseModel], dotted: str) -> Any:
    """The pydantic ``FieldInfo`` of a dotted recipe key (``"optim.learning_rate"``): its type, default and
    description, which CLI flags reuse so a field is declared once."""
    model: Any = cls
    *parents, leaf = dotted.split(".")
    for name in parents:
        model = model.model_fields[name].annotation
    return model.model_fields[leaf]


def parse_set(items: list[str] | None, cls: type[BaseModel] | None = None) -> dict[str, Any]:
    """``["optim.weight_decay=0.1", "data.template=chatml"]`` → dotted overrides; values read as YAML scalars
    (numbers, true/false, null, [lists]). With ``cls``, an unknown key is one clear error."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"--set {item}: expected KEY=VALUE, e.g. --set optim.weight_decay=0.1")
        if cls is not None:
            try:
                field_of(cls, key)
            except (KeyError, AttributeError):
                raise InputError(f"--set {item}: no such recipe field '{key}'") from None
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key] = raw
    return out


def set_dotted(tree: dict[str, Any], dotted: str, value: Any, file: Path | None = None) -> None:
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
            set_dotted(tree, key, value, None if path is None else Path(path))
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
