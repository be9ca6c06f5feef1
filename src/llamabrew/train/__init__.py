"""Training: `llamabrew.train.run(recipe)` fine-tunes (LoRA or full; SFT, DPO, reward models, GRPO);
`llamabrew.train.pretrain(recipe)` pretrains a small base from scratch. All share one loop (`train.loop.fit`)
with exact, SIGKILL-safe resume."""

from llamabrew.train.finetune import run
from llamabrew.train.pretrain import run as pretrain
from llamabrew.train.sft import TrainResult

__all__ = ["TrainResult", "pretrain", "run"]
