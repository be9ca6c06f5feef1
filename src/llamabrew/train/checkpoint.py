"""Checkpoints that survive SIGKILL: written into a temp folder, then renamed; resume restores everything.

A checkpoint holds the trainable weights, whole (safetensors), the optimizer and scheduler states and the RNG (a
tensor-only ``state.pt`` read back with ``weights_only=True``) and the loop counters (``progress.json``). Data order
is a pure function of (seed, epoch), so the step counter is all the loop needs to find its place again.

Nothing in it depends on how many processes trained: the weights are whole (FSDP gathers its shards before a
save) and the optimizer state is keyed by parameter name, as torch.distributed.checkpoint's full state dicts are,
not by position. So a run saved by 2 ranks resumes on 1 or 8, under DDP or FSDP; a checkpoint written before
this (optimizer state by position) still loads in one process or under DDP.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from llamabrew.errors import LlamabrewError
from llamabrew.io import atomic_dir

_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class LoopProgress:
    step: int = 0
    tokens: int = 0
    elapsed_s: float = 0.0


@dataclass
class Checkpoint:
    """What a checkpoint folder holds, in memory."""

    weights: dict[str, torch.Tensor]  # trainable parameters by name, whole
    optimizer: dict[str, Any]  # `optimizer_state_by_name` (older checkpoints: torch's by-position state dict)
    scheduler: dict[str, Any]
    progress: LoopProgress
    rng: dict[str, Any] = field(default_factory=dict)  # "rng_cpu", "rng_cuda"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _names_in_optimizer_order(model: torch.nn.Module, optimizer: Any) -> list[str]:
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


def optimizer_state_by_name(model: torch.nn.Module, optimizer: Any) -> dict[str, Any]:
    """``optimizer.state_dict()`` with parameter names where torch puts positions (the layout of
    torch.distributed.checkpoint's full optimizer state dict), so it loads whatever the parameter order."""
    return optimizer_state_names(model, optimizer, optimizer.state_dict())


def _by_position(state: dict[str, Any]) -> bool:
    return all(isinstance(k, int) for k in state["state"]) and all(
        isinstance(i, int) for g in state["param_groups"] for i in g["params"])


def optimizer_state_names(model: torch.nn.Module, optimizer: Any, state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state dict keyed by parameter name (a by-name one passes through)."""
    if not _by_position(state):
        return state
    names = _names_in_optimizer_order(model, optimizer)
    return {"state": {names[i]: s for i, s in state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}


def optimizer_state_by_position(model: torch.nn.Module, optimizer: Any, state: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `optimizer_state_by_name`, for ``optimizer.load_state_dict``; a by-position state (an older
    checkpoint) passes through."""
    if _by_position(state):
        return state
    position = {n: i for i, n in enumerate(_names_in_optimizer_order(model, optimizer))}
    try:
        return {"state": {position[n]: s for n, s in state["state"].items()},
                "param_groups": [{**g, "params": [position[n] for n in g["params"]]} for g in state["param_groups"]]}
    except KeyError as e:
        raise LlamabrewError(f"checkpoint's optimizer state names parameter {e} the model does not train "
                             "(was the recipe changed?)") from None


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"rng_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["rng_cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_checkpoint(ckpt_root: Path, ckpt: Checkpoint, keep: int) -> Path:
    path = ckpt_root / f"step-{ckpt.progress.step:07d}"
    with atomic_dir(path) as tmp:
        save_file(ckpt.weights, str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": ckpt.optimizer, "scheduler": ckpt.scheduler, **ckpt.rng}, tmp / "state.pt")
        (tmp / "progress.json").write_text(json.dumps(asdict(ckpt.progress)))
    for old in list_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temp folders of an interrupted save are ignored)."""
    if not ckpt_root.is_dir():
        return []
    found = [p for p in ckpt_root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))  # type: ignore[union-attr]


def read_checkpoint(path: Path) -> Checkpoint:
    try:
        weights = load_file(str(path / "trainable.safetensors"))
        state = torch.load(path / "state.pt", weights_only=True)
        progress = LoopProgress(**json.loads((path / "progress.json").read_text()))
    except Exception as e:
        raise LlamabrewError(f"{path}: checkpoint is unreadable ({e}); delete it to resume from an earlier one") from e
    rng = {k: v for k, v in state.items() if k.startswith("rng_")}
    return Checkpoint(weights, state["optimizer"], state["scheduler"], progress, rng)


def check_weights(path: Path, model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = set(n for n, p in params.items() if p.requires_grad) - set(weights)
    if missing or set(weights) - set(params):
        raise LlamabrewError(f"{path}: checkpoint does not match the model (was the recipe changed?)")


def restore(ckpt: Checkpoint, model: torch.nn.Module, optimizer: Any, scheduler: Any, path: Path) -> LoopProgress:
    """Put a checkpoint back into a model whose parameters are whole on every process (one process, DDP)."""
    check_weights(path, model, ckpt.weights)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in ckpt.weights.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(optimizer_state_by_position(model, optimizer, ckpt.optimizer))
    restore_rest(ckpt, scheduler)
    return ckpt.progress


def restore_rest(ckpt: Checkpoint, scheduler: Any) -> None:
    """The scheduler and RNG states (the loop reseeds each micro-batch, so the RNG matters only to callers)."""
    scheduler.load_state_dict(ckpt.scheduler)
    if "rng_cpu" in ckpt.rng:
        torch.set_rng_state(ckpt.rng["rng_cpu"])
    if "rng_cuda" in ckpt.rng and torch.cuda.is_available() and len(ckpt.rng["rng_cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(ckpt.rng["rng_cuda"])
