"""Training: `llamabrew.train.run(recipe)` fine-tunes (LoRA or full); `llamabrew.train.pretrain(recipe)` pretrains
a small base from scratch. Both share one loop (`train.loop.fit`) with exact, SIGKILL-safe resume."""

from llamabrew.train.pretrain import run as pretrain
from llamabrew.train.sft import TrainResult, run

__all__ = ["TrainResult", "pretrain", "run"]
