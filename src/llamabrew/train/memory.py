"""What one device holds to train a model under DDP or FSDP: the arithmetic a multi-GPU plan needs.

Per device, in bytes, the weights, their gradients and AdamW's two moments (torch keeps them in the parameter's
dtype), as `train.distributed` trains:

- **ddp** replicates everything, and DDP's all-reduce buckets hold a second copy of the gradients: the same
  figure on 1 device or 64. Only the batch is split.
- **fsdp** (FSDP2, ZeRO-3) divides weights, gradients and optimizer state by the devices, and gathers a shard
  unit whole while it computes: the unit at work and the one prefetched (weights), and one unit's gradients
  before they are reduce-scattered. The root unit (embeddings, final norm, output head: what is outside the
  decoder layers) stays whole from its forward to its backward.

Activations are not counted: they depend on the batch, the sequence length and checkpointing, and the plan
measures them on the machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llamabrew.train.distributed import shard_units

GIB = 1024**3


@dataclass(frozen=True)
class DeviceMemory:
    """Bytes on one device."""

    weights: float
    gradients: float
    optimizer: float
    gathered: float = 0.0  # FSDP: whole units gathered from their shards

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.gathered


def training_memory(params: int, trainable: int, devices: int = 1, strategy: str = "ddp", *,
                    weight_bytes: float = 2.0, trainable_bytes: float = 4.0, unit_params: int = 0,
                    root_params: int = 0) -> DeviceMemory:
    """Per-device memory to train ``trainable`` of ``params`` parameters on ``devices`` under ``strategy``
    ("ddp" or "fsdp"; one device: "ddp" counts it without buckets).

    ``weight_bytes``: per frozen weight (2 for bf16, about 0.56 for 4-bit NF4 with its scales);
    ``trainable_bytes``: per trained weight, its gradient and each AdamW moment (4 for fp32 LoRA weights, 2 for
    bf16 full fine-tuning). ``unit_params``: the largest FSDP shard unit (a decoder layer); ``root_params``: what
    lies outside the units (embeddings, head). Under FSDP every weight is trained (full fine-tuning)."""
    if devices < 1 or strategy not in ("ddp", "fsdp"):
        raise ValueError(f"training_memory: devices ≥ 1 and strategy ddp or fsdp, not {devices}, {strategy!r}")
    frozen = params - trainable
    weights = frozen * weight_bytes + trainable * trainable_bytes
    gradients = trainable * trainable_bytes
    optimizer = 2 * trainable * trainable_bytes
    if strategy == "ddp" or devices == 1:
        buckets = gradients if devices > 1 else 0.0
        return DeviceMemory(weights, gradients + buckets, optimizer)
    gathered = (2 * unit_params + unit_params + 2 * root_params) * trainable_bytes  # see the module docstring
    return DeviceMemory(weights / devices, gradients / devices, optimizer / devices, gathered)


def model_memory(model: torch.nn.Module, devices: int, strategy: str, *, weight_bytes: float = 2.0,
                 trainable_bytes: float = 4.0) -> DeviceMemory:
    """`training_memory` of a model as built (it may live on the meta device: only shapes are read); shard units
    as `train.distributed` makes them."""
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    units = [sum(p.numel() for p in unit.parameters()) for unit in shard_units(model)]
    return training_memory(params, trainable, devices, strategy, weight_bytes=weight_bytes,
                           trainable_bytes=trainable_bytes, unit_params=max(units, default=params),
                           root_params=params - sum(units))
