"""Checkpoints that survive SIGKILL: written into a temp folder, then renamed; resume restores everything.

A checkpoint holds the trainable weights (safetensors), the optimizer, scheduler and RNG states (a tensor-only
``state.pt`` read back with ``weights_only=True``) and the loop counters (``progress.json``). Data order is a pure
function of (seed, epoch), so the step counter is all the loop needs to find its place again.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
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


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    ckpt_root: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any, progress: LoopProgress, keep: int
) -> Path:
    path = ckpt_root / f"step-{progress.step:07d}"
    with atomic_dir(path) as tmp:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "rng_cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        torch.save(state, tmp / "state.pt")
        (tmp / "progress.json").write_text(json.dumps(asdict(progress)))
    for old in list_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temp folders of an interrupted save are ignored)."""
    if not ckpt_root.is_dir():
        return []
    found = [p for p in ckpt_root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))  # type: ignore[union-attr]


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> LoopProgress:
    try:
        weights = load_file(str(path / "trainable.safetensors"))
        state = torch.load(path / "state.pt", weights_only=True)
        progress = LoopProgress(**json.loads((path / "progress.json").read_text()))
    except Exception as e:
        raise LlamabrewError(f"{path}: checkpoint is unreadable ({e}); delete it to resume from an earlier one") from e
    params = dict(model.named_parameters())
    missing = set(n for n, p in params.items() if p.requires_grad) - set(weights)
    if missing or set(weights) - set(params):
        raise LlamabrewError(f"{path}: checkpoint does not match the model (was the recipe changed?)")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng_cpu"])
    if "rng_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return progress
