"""The fast path: how a step runs on this device, chosen once when a run starts, each part switchable.

Every "auto" in the recipe's ``speed`` section (and ``data.packing``, ``optim.optimizer``) is decided here from
the device, the packages installed and the model's shape, by `choose` — a pure function, so the choice for every
device/package combination is tested on a CPU (tests/train/test_fastpath.py). On a CPU "auto" keeps the behaviour
llamabrew had before the fast path existed (padded rows, sdpa, plain loss, no checkpointing, no compile, torch
AdamW); on CUDA it packs rows with per-example position ids, uses varlen FlashAttention-2 where flash-attn is
installed, liger-kernel's fused linear cross-entropy and RMSNorm/RoPE/SwiGLU where installed (else a chunked
loss for large vocabularies), bf16, compiles each decoder layer of a bf16 model, recomputes activations in as
few decoder layers as the memory estimate says the card needs (none where it all fits), and gives a 4-bit base
bitsandbytes' paged 8-bit AdamW.

None of this changes what is computed (tests: packed == padded, chunked == plain, position ids == block mask),
except the 8-bit optimizer's rounding, which is why the optimizer and packing (which sets the steps and the
data order) are written into the saved recipe, and a resumed run keeps them whatever machine it resumes on.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from llamabrew.data.batching import Batcher, PackedBatcher, PaddedBatcher
from llamabrew.errors import LlamabrewError
from llamabrew.extras import require
from llamabrew.recipe import Recipe, read_saved_recipe
from llamabrew.train.defaults import lora_targets
from llamabrew.train.memory import GIB, ModelShape, TrainSetup, estimate_memory, layers_to_checkpoint
from llamabrew.train.objective import CausalLM

log = logging.getLogger(__name__)

OPTIONAL = ("flash_attn", "liger_kernel", "bitsandbytes")
# Architectures liger-kernel patches (its MODEL_TYPE_TO_APPLY_LIGER_FN, the LLaMA-like ones llamabrew trains).
LIGER_MODEL_TYPES = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "phi3",
                               "granite", "olmo2"})
LARGE_VOCAB = 64_000  # from here on the fp32 logits dominate a step's memory: chunk them on CUDA
DEFAULT_CHUNK_TOKENS = 1024  # target tokens per chunk when the chunked loss is chosen without a size
MEMORY_HEADROOM = 0.9  # checkpoint when the estimate passes this share of the card
ATTENTION = {"flash": "flash_attention_2", "sdpa": "sdpa", "flex": "flex_attention", "eager": "eager"}


@dataclass(frozen=True)
class Environment:
    """What the choices depend on besides the recipe."""

    device: str  # cuda | cpu | mps
    installed: frozenset[str] = frozenset()  # of OPTIONAL
    card_gib: float | None = None  # memory of the device (CUDA)
    bf16: bool = False  # the step runs under bf16 (or fp16) autocast


def environment(device: torch.device, dtype: torch.dtype) -> Environment:
    installed = frozenset(m for m in OPTIONAL if importlib.util.find_spec(m) is not None)
    card = torch.cuda.get_device_properties(device).total_memory / GIB if device.type == "cuda" else None
    return Environment(device.type, installed, card, dtype in (torch.bfloat16, torch.float16))


@dataclass(frozen=True)
class FastPath:
    """The decided set-up of a run (no "auto" left), with the reason for each automatic choice."""

    packing: bool
    attention: str  # transformers' attn_implementation
    loss: str  # plain | chunked | liger
    chunk_tokens: int
    liger_kernels: bool
    gradient_checkpointing: bool
    compile: bool
    optimizer: str
    reasons: tuple[str, ...] = field(default=(), compare=False)
    checkpointed_layers: int | None = None  # with checkpointing: the first this many decoder layers (None: all)

    def describe(self) -> str:
        """The plan's line: what runs, in a few words."""
        parts = ["packed" if self.packing else "padded", self.attention.replace("_attention_2", "-attn2"),
                 f"{self.loss} loss" + (f" ({self.chunk_tokens} tokens a chunk)" if self.loss == "chunked" else "")]
        parts += ["liger kernels"] * self.liger_kernels
        if self.gradient_checkpointing:
            parts.append("checkpointing" + (f" {self.checkpointed_layers} layers" if self.checkpointed_layers else ""))
        parts += ["compiled"] * self.compile + [self.optimizer]
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "reasons"}

    def batcher(self, pad_id: int, row_len: int) -> Batcher:
        if not self.packing:
            return PaddedBatcher(pad_id)
        # flash / flex / eager-free kernels find the examples from where position ids restart: no mask to build;
        # compiled layers see one row width (no recompiles)
        return PackedBatcher(pad_id, row_len, block_mask=self.attention in ("sdpa", "eager"), fixed_width=self.compile)

    def objective(self) -> CausalLM:
        return CausalLM(self.chunk_tokens, fused=self.loss == "liger")


def _switch(value: str, auto: bool) -> bool:
    return auto if value == "auto" else value == "on"


def choose(recipe: Recipe, env: Environment, shape: ModelShape) -> FastPath:
    """Decide every "auto" of ``recipe`` for ``env`` and a model of ``shape``; an explicit choice the machine cannot
    honour is one clear error."""
    speed, cuda, have = recipe.speed, env.device == "cuda", env.installed
    quant = recipe.model.quantize_4bit
    reasons: list[str] = []
    packing = cuda if recipe.data.packing == "auto" else bool(recipe.data.packing)
    if recipe.data.packing == "auto":
        reasons.append(f"packing {'on (CUDA)' if cuda else 'off (not CUDA)'}")

    if speed.attention == "auto":
        flash = cuda and env.bf16 and "flash_attn" in have
        attention = "flash_attention_2" if flash else "sdpa"
        reasons.append("flash-attn varlen" if flash else "sdpa" + (" (flash-attn not installed)" if cuda else ""))
    else:
        if speed.attention == "flash" and not (cuda and "flash_attn" in have):
            raise LlamabrewError("speed.attention=flash needs CUDA and the flash-attn package (pip install "
                                 "flash-attn); use auto, sdpa or flex")
        attention = ATTENTION[speed.attention]

    chunk = recipe.optim.loss_chunk_tokens
    if speed.loss == "auto":
        if cuda and "liger_kernel" in have:
            loss = "liger"
        elif chunk or (cuda and shape.vocab >= LARGE_VOCAB):
            loss = "chunked"
        else:
            loss = "plain"
        reasons.append(f"{loss} loss" + (f" (vocabulary {shape.vocab:,})" if loss == "chunked" and not chunk else ""))
    else:
        if speed.loss == "liger" and not cuda:
            raise LlamabrewError("speed.loss=liger needs CUDA (liger-kernel's Triton kernels); use chunked")
        if speed.loss == "liger":
            require("gpu", "speed.loss=liger", "liger_kernel")
        loss = speed.loss
    chunk = (chunk or DEFAULT_CHUNK_TOKENS) if loss == "chunked" else 0

    liger_ok = cuda and "liger_kernel" in have and shape.model_type in LIGER_MODEL_TYPES
    if speed.liger_kernels == "on" and not liger_ok:
        raise LlamabrewError(f"speed.liger_kernels=on needs CUDA, the gpu extra's liger-kernel and an architecture "
                             f"it patches (not {shape.model_type})")
    liger = _switch(speed.liger_kernels, liger_ok)

    optimizer = recipe.optim.optimizer
    if optimizer == "auto":
        optimizer = "paged_adamw_8bit" if cuda and quant and "bitsandbytes" in have else "adamw"
        reasons.append(f"{optimizer}" + (" (4-bit base)" if optimizer != "adamw" else ""))
    elif optimizer != "adamw" and not cuda:
        raise LlamabrewError(f"optim.optimizer={optimizer} needs CUDA (bitsandbytes); use adamw on a CPU")

    checkpointing, some = _switch(speed.gradient_checkpointing, False), None
    if speed.gradient_checkpointing == "auto" and cuda and env.card_gib:
        setup = _setup(recipe, packing, loss, optimizer, checkpointing=False)
        need = estimate_memory(shape, setup).total_gib
        layers = layers_to_checkpoint(shape, setup, MEMORY_HEADROOM * env.card_gib)
        checkpointing, some = layers > 0, (layers if 0 < layers < shape.layers else None)
        which = "off" if not layers else ("on" if some is None else f"on for {layers} of {shape.layers} layers")
        reasons.append(f"checkpointing {which} (estimate {need:.1f} GiB of {env.card_gib:.0f} without)")
    compile_ = _switch(speed.compile, cuda and env.bf16 and not quant)
    return FastPath(packing, attention, loss, chunk, liger, checkpointing, compile_, optimizer, tuple(reasons),
                    checkpointed_layers=some)


def _setup(recipe: Recipe, packing: bool, loss: str, optimizer: str, checkpointing: bool) -> TrainSetup:
    return TrainSetup(recipe.method, recipe.model.quantize_4bit, recipe.lora.r,
                      lora_targets(recipe.lora, recipe.model.base),
                      recipe.optim.micro_batch_size * recipe.data.cutoff_len, checkpointing, loss, optimizer)


def keep_resumed_choices(recipe: Recipe) -> Recipe:
    """A resumed run keeps the packing and optimizer its first part used (they set the steps, the data order and
    the optimizer's state), even on another machine whose "auto" would differ."""
    saved = read_saved_recipe(recipe.out) if recipe.resume else None
    if saved is None:
        return recipe
    recipe = recipe.model_copy(deep=True)
    if recipe.data.packing == "auto":
        recipe.data.packing = saved.data.packing
    if recipe.optim.optimizer == "auto":
        recipe.optim.optimizer = saved.optim.optimizer
    return recipe


def record(recipe: Recipe, fast: FastPath) -> Recipe:
    """The recipe to save: packing and the optimizer as decided (see `keep_resumed_choices`)."""
    recipe = recipe.model_copy(deep=True)
    recipe.data.packing, recipe.optim.optimizer = fast.packing, fast.optimizer  # type: ignore[assignment]
    return recipe


def prepare_base(model: Any, fast: FastPath) -> None:
    """What changes the base model before adapters go on: attention kernel, liger kernels, checkpointing."""
    if getattr(model.config, "_attn_implementation", None) != fast.attention:
        model.set_attn_implementation(fast.attention)
    if fast.liger_kernels:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                        fused_linear_cross_entropy=False)
    if fast.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False


def decoder_layers(model: Any) -> list[Any]:
    """The decoder layers of a Hugging Face causal LM, under a PEFT wrapper or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(base, getattr(base, "base_model_prefix", "model"), None)
    return list(getattr(body, "layers", None) or [])


def limit_checkpointing(model: Any, fast: FastPath) -> int:
    """With ``fast.checkpointed_layers``, only the first that many decoder layers recompute (the others keep their
    activations); call after the adapters go on (QLoRA's preparation turns checkpointing on for every layer).
    Returns how many layers recompute."""
    if not fast.gradient_checkpointing:
        return 0
    layers = decoder_layers(model)
    keep = len(layers) if fast.checkpointed_layers is None else fast.checkpointed_layers
    for layer in layers[keep:]:
        layer.gradient_checkpointing = False  # transformers' GradientCheckpointingLayer reads this per layer
    return sum(bool(getattr(layer, "gradient_checkpointing", False)) for layer in layers)


def compile_layers(model: Any, fast: FastPath) -> int:
    """torch.compile each decoder layer in place (torchtune's way: small graphs, one compile reused by every
    layer of the same shape); returns how many were compiled."""
    if not fast.compile:
        return 0
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile()
    return len(layers)


def bnb_optimizer(name: str, groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    """bitsandbytes' AdamW variants (QLoRA's paged optimizers): pages of state move to the CPU when the GPU runs
    short instead of failing with out-of-memory."""
    bnb = require("gpu", f"optim.optimizer={name}", "bitsandbytes")
    cls = {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
           "paged_adamw": bnb.optim.PagedAdamW32bit}[name]
    return cls(groups, lr=lr, betas=(0.9, 0.95))
