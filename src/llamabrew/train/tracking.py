"""Experiment trackers people already use, fed from the same records as ``loss.jsonl``: TensorBoard event files
(``RUN/tensorboard/``) and Weights & Biases (``wandb`` extra; ``WANDB_MODE=offline`` works without an account).

`train.loop.fit` opens the trackers a recipe names (``optim.log_to``) and hands each one every record it appends
to the loss log; nothing else in the loop knows they exist. Train records become ``train/<name>``, held-out
ones (``val_*``) ``val/<name>``, so TensorBoard and wandb draw the two losses side by side.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import yaml

from llamabrew.extras import require

TRACKERS = ("tensorboard", "wandb")
TENSORBOARD_DIR = "tensorboard"


class Tracker(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The record's numbers by tracker tag: ``loss`` → ``train/loss``, ``val_loss`` → ``val/loss``."""
    out = {}
    for key, value in record.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        out[f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}"] = float(value)
    return out


def check_trackers(kinds: Sequence[str], what: str = "--log-to") -> None:
    """Fail now, in one line naming the extra, if a tracker's package is missing (not after the model loaded)."""
    for kind in kinds:
        require(kind, f"{what} {kind}")


def wait_past_event_files(folder: Path) -> None:
    """TensorBoard reads a folder's event files in name order, and a name is ``events.out.tfevents.SECOND.HOST.PID``:
    a run resumed in the same second as the killed run's file (a pipeline picks up at once) could sort before it,
    and its purge would then drop the killed run's steps before the checkpoint. Waiting for the next second (at most
    one) makes the new file sort last."""
    seconds = [int(part) for p in folder.glob("events.out.tfevents.*")
               if (part := p.name.split(".")[3]).isdigit()] if folder.is_dir() else []
    if seconds and (wait := max(seconds) + 1 - time.time()) > 0:
        time.sleep(wait)


class TensorBoardTracker:
    """Event files TensorBoard reads. A resumed run purges the events the killed run wrote after its checkpoint,
    as the loss log drops those lines, so the curves never show a step twice."""

    def __init__(self, run_dir: Path, start_step: int) -> None:
        require("tensorboard", "--log-to tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        if start_step:
            wait_past_event_files(run_dir / TENSORBOARD_DIR)
        self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=start_step + 1 if start_step else None)

    def log(self, record: dict[str, Any]) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, record["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """One wandb run per llamabrew run, its id derived from the run directory so a resumed run continues it."""

    def __init__(self, run_dir: Path, start_step: int) -> None:
        wandb = require("wandb", "--log-to wandb")
        recipe_file = run_dir / "recipe.yaml"
        config = yaml.safe_load(recipe_file.read_text(encoding="utf-8")) if recipe_file.is_file() else {}
        run_id = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "llamabrew"), name=run_dir.name, id=run_id,
                              dir=str(run_dir), config=config, resume="allow", reinit="create_new")

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(scalars(record), step=record["step"])

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """Every tracker a run asked for, as one (none: does nothing)."""

    def __init__(self, kinds: Sequence[str], run_dir: Path, start_step: int = 0) -> None:
        check_trackers(kinds)
        makers = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker}
        self.trackers: list[Tracker] = [makers[k](Path(run_dir), start_step) for k in dict.fromkeys(kinds)]

    def log(self, record: dict[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.log(record)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
