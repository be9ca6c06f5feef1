"""A model's shape, its training FLOPs per token and its peak memory per device, from config.json alone.

The planner (`llamabrew plan`) prices a run on cards it has never seen, and the fast path decides whether a card
needs gradient checkpointing before the first step; both need the same arithmetic, written down once here. The
memory figures are estimates of what the fast path allocates (bf16 weights on CUDA, fp32 on a CPU, LoRA adapters
in fp32, flash/SDPA attention with no ``seq²`` scores kept), not measurements: a GPU run must check them
(benchmarks/train_throughput.py prints both).

On several GPUs (`train.distributed`): **ddp** replicates everything, and DDP's all-reduce buckets hold a second
copy of the gradients, so a device needs as much as one GPU alone and more; only the batch is split. **fsdp**
(FSDP2, ZeRO-3) divides weights, gradients and optimizer state by the devices and gathers a shard unit (a decoder
layer) whole while it computes: the unit at work and the one prefetched (weights) and one unit's gradients before
they are reduce-scattered; the root unit (embeddings, final norm, head) stays whole from its forward to its
backward.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any

GIB = 1024**3


@dataclass(frozen=True)
class ModelShape:
    """What the arithmetic needs of a decoder-only transformer (LLaMA family: GQA attention, SwiGLU MLP)."""

    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    tied: bool = False
    model_type: str = "llama"

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        """From a transformers config object or the dict of a config.json."""
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        hidden = int(get("hidden_size"))
        heads = int(get("num_attention_heads") or 1)
        return cls(hidden, int(get("num_hidden_layers")), int(get("intermediate_size") or 4 * hidden),
                   int(get("vocab_size")), heads, int(get("num_key_value_heads") or heads),
                   bool(get("tie_word_embeddings", False)), str(get("model_type") or "llama"))

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection in one layer, by its usual module name."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def layer_linear_params(self) -> int:
        return sum(a * b for a, b in self.linear_shapes().values())

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def params(self) -> int:
        norms = self.layers * 2 * self.hidden + self.hidden
        return self.layers * self.layer_linear_params + self.embedding_params + norms


# Known shapes a `--params 7B` override stands for (nearest by size, then layers scaled to the count asked).
KNOWN_SHAPES: dict[str, ModelShape] = {
    "1B": ModelShape(2048, 16, 8192, 128256, 32, 8, True),  # Llama-3.2-1B
    "3B": ModelShape(3072, 28, 8192, 128256, 24, 8, True),  # Llama-3.2-3B
    "7B": ModelShape(4096, 32, 11008, 32000, 32, 32),  # LLaMA-7B (the seeds' base)
    "8B": ModelShape(4096, 32, 14336, 128256, 32, 8),  # Llama-3.1-8B
    "13B": ModelShape(5120, 40, 13824, 32000, 40, 40),  # LLaMA-13B
    "70B": ModelShape(8192, 80, 28672, 128256, 64, 8),  # Llama-3.1-70B
}


def parse_params(text: str) -> int:
    """"7B", "135M", "6.7e9" → a parameter count."""
    m = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kKmMbBtT]?)\s*", text)
    if not m:
        raise ValueError(f"'{text}' is not a parameter count (e.g. 7B, 135M, 6.7e9)")
    scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def shape_for_params(n: int) -> ModelShape:
    """A LLaMA-family shape of about ``n`` parameters: the known shape nearest in size (exact for the names in
    KNOWN_SHAPES), its depth scaled so the count comes out near ``n``."""
    nearest = min(KNOWN_SHAPES.values(), key=lambda s: abs(math.log(s.params / n)))
    per_layer = nearest.layer_linear_params + 2 * nearest.hidden
    layers = max(1, round((n - nearest.embedding_params) / per_layer))
    return nearest if abs(nearest.params / n - 1) < 0.05 else replace(nearest, layers=layers)


def lora_params(shape: ModelShape, r: int, targets: list[str] | str) -> int:
    """Trainable values of a LoRA adapter: r × (in + out) for each targeted projection of each layer."""
    chosen = shape.linear_shapes() if targets == "all-linear" else {
        k: v for k, v in shape.linear_shapes().items() if k in targets}
    return shape.layers * sum(r * (a + b) for a, b in chosen.values())


def flops_per_token(shape: ModelShape, method: str, context: float) -> float:
    """Model FLOPs of one trained token (the MFU convention: recomputation not counted): forward = 2 × the matmul
    parameters + causal attention over ``context`` tokens; LoRA adds the backward's input gradients (2×
    forward, no weight gradients of the base), a full fine-tune the weight gradients too (3×)."""
    matmul = shape.layers * shape.layer_linear_params + shape.vocab * shape.hidden
    forward = 2 * matmul + 2 * shape.layers * context * shape.hidden
    return forward * (3 if method == "full" else 2)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device, by what holds them."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    overhead: float
    gathered: float = 0.0  # FSDP: whole units gathered from their shards

    @property
    def total(self) -> float:
        return (self.weights + self.gradients + self.optimizer + self.activations + self.logits + self.overhead
                + self.gathered)

    @property
    def total_gib(self) -> float:
        return self.total / GIB


@dataclass(frozen=True)
class TrainSetup:
    """What memory depends on besides the model's shape."""

    method: str = "lora"  # lora | full
    quantize_4bit: bool = False
    lora_r: int = 16
    lora_targets: list[str] | str = "all-linear"
    tokens_per_micro_batch: int = 2048  # the widest micro-batch: rows × row length
    checkpointing: bool = False
    loss: str = "chunked"  # plain | chunked | liger
    optimizer: str = "adamw"  # adamw | adamw_8bit | paged_adamw_8bit | paged_adamw
    device: str = "cuda"  # cuda: bf16 weights; cpu: fp32 weights (as llamabrew loads them there)
    gpus: int = 1
    sharding: str = "ddp"  # ddp: every GPU holds everything; fsdp: weights, gradients, optimizer sharded
    checkpointed_layers: int | None = None  # with checkpointing: how many decoder layers recompute (None: all)


CUDA_OVERHEAD = 0.5 * GIB  # cuBLAS workspaces and allocator fragmentation (the CUDA context itself is not counted)
CPU_OVERHEAD = 0.5 * GIB  # the Python process with torch and transformers loaded
LOSS_CHUNK = 1024  # tokens whose logits the chunked / fused losses hold at once
NF4_BYTES = 0.5 * (1 + 0.127 / 4)  # 4 bits a weight + double-quantized absmax constants (QLoRA paper: 0.127 bits)


def estimate_memory(shape: ModelShape, setup: TrainSetup) -> MemoryEstimate:
    """Peak bytes per device of a training step (see the module docstring for what is assumed)."""
    cuda = setup.device == "cuda"
    dense = 2 if cuda else 4  # bytes a weight / activation: bf16 on CUDA, fp32 on a CPU
    linear = shape.layers * shape.layer_linear_params
    other = shape.params - linear
    if setup.quantize_4bit:
        weights = linear * NF4_BYTES + other * 2
    else:
        weights = shape.params * dense
    if setup.method == "full":
        trainable, grad_bytes = shape.params, dense
        state_bytes = 2 if "8bit" in setup.optimizer else 2 * dense
    else:
        trainable = lora_params(shape, setup.lora_r, setup.lora_targets)
        weights += trainable * 4  # adapters train in fp32
        grad_bytes, state_bytes = 4, (2 if "8bit" in setup.optimizer else 8)
    gradients, optimizer = trainable * grad_bytes, trainable * state_bytes
    gathered = 0.0
    if setup.gpus > 1 and setup.sharding == "fsdp":
        weights, gradients, optimizer = weights / setup.gpus, gradients / setup.gpus, optimizer / setup.gpus
        unit = shape.layer_linear_params + 2 * shape.hidden  # one decoder layer
        root = shape.params - shape.layers * unit
        gathered = (3 * unit + 2 * root) * grad_bytes  # see the module docstring
    elif setup.gpus > 1:
        gradients *= 2  # DDP's buckets
    tokens = setup.tokens_per_micro_batch
    h, i = shape.hidden, shape.intermediate
    per_layer_token = dense * (10 * h + 4 * i)  # norms, q/k/v/o inputs and outputs, residuals, the SwiGLU MLP
    if setup.method == "lora":  # LoRA keeps a dropout copy of each targeted projection's input
        per_layer_token += dense * sum(a for k, (a, _) in shape.linear_shapes().items()
                                       if setup.lora_targets == "all-linear" or k in setup.lora_targets)
    if setup.checkpointing:  # a recomputed layer keeps its input; one layer's activations alive while recomputed
        k = shape.layers if setup.checkpointed_layers is None else max(0, min(setup.checkpointed_layers, shape.layers))
        activations = tokens * (k * dense * h + (shape.layers - k + 1) * per_layer_token)
    else:
        activations = tokens * shape.layers * per_layer_token
    logit_tokens = tokens if setup.loss == "plain" else min(tokens, LOSS_CHUNK)
    logits = logit_tokens * shape.vocab * (dense + 4 + 4)  # logits, their fp32 copy, the gradient
    return MemoryEstimate(weights, gradients, optimizer, activations, logits, CUDA_OVERHEAD if cuda else CPU_OVERHEAD,
                          gathered)


def layers_to_checkpoint(shape: ModelShape, setup: TrainSetup, budget_gib: float) -> int:
    """The fewest decoder layers to recompute for the estimate to fit ``budget_gib``: 0 when all fits, every layer
    when even that does not. Each recomputed layer costs its forward again (measured on an H200: recomputing all
    32 layers of a 7B cost 1.84x), so recomputing only what memory needs keeps the rest of the speed."""
    if estimate_memory(shape, replace(setup, checkpointing=False)).total_gib <= budget_gib:
        return 0
    for k in range(1, shape.layers + 1):
        if estimate_memory(shape, replace(setup, checkpointing=True, checkpointed_layers=k)).total_gib <= budget_gib:
            return k
    return shape.layers
