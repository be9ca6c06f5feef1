"""Training on several processes: `llamabrew train` under ``torchrun`` or ``accelerate launch``, unchanged.

The launchers start one process per device and tell each its place in ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; `processes` joins their process group (gloo on CPU, nccl on CUDA) for the length of a run. The
loop (`train.loop.fit`) then asks a `DataParallel` for what differs from one process:

- **which micro-batches**: a step is still the recipe's ``grad_accum`` micro-batches, the very ones one process
  would train on (a pure function of seed, epoch and index); rank r of W computes a contiguous block of
  ceil(grad_accum / W) of them (`Ranks.share`), so the global batch, the steps and the schedule do not depend on
  how many ranks there are, and a run resumes on any number of them. Slots past the step's end are computed at
  weight 0, so every rank runs as many forward and backward passes (FSDP's collectives need that).
- **how gradients meet**: ``ddp`` (torch's DistributedDataParallel: a whole model per device, gradients
  all-reduced once per step: ``no_sync`` until the last micro-batch) or ``fsdp`` (FSDP2, ``fully_shard`` per
  decoder layer: weights, gradients and optimizer state split across ranks; gradients are reduce-scattered every
  micro-batch, which keeps them sharded, the memory FSDP is chosen for). The step's summed loss, target count
  and tokens are all-reduced, so every target weighs the same as in one process.
- **who writes**: rank 0 alone writes the loss log, checkpoints, plot, weights and summary. Checkpoints hold
  whole tensors keyed by name (`train.checkpoint`): FSDP gathers them on save and scatters them on load.

The model and its objective run as one module (`ObjectiveModule`): DDP's and FSDP's hooks bracket a module's
forward, and objectives call the model several times or in parts (DPO's reference pass, the chunked loss's
decoder then head), so the whole objective is that forward.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llamabrew.data.batching import Batch
from llamabrew.errors import LlamabrewError
from llamabrew.train.checkpoint import (
    Checkpoint,
    LoopProgress,
    check_weights,
    list_checkpoints,
    optimizer_state_by_name,
    optimizer_state_names,
    read_checkpoint,
    restore,
    restore_rest,
    rng_state,
    save_checkpoint,
    trainable_state,
)
from llamabrew.train.objective import Objective, ObjectiveOutput, objective_sums

log = logging.getLogger(__name__)

STRATEGIES = ("single", "ddp", "fsdp")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the launcher's: ``rank`` of ``world``, ``local_rank`` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, first: int, count: int) -> list[int | None]:
        """This rank's micro-batches of the step made of ``first`` .. ``first + count - 1`` (None: a slot past
        the step's end, computed at weight 0)."""
        per = math.ceil(count / self.world)
        return [first + j if j < count else None for j in range(self.rank * per, (self.rank + 1) * per)]


def launched() -> Ranks:
    """The ranks the launcher set (torchrun and accelerate launch both export RANK, WORLD_SIZE, LOCAL_RANK); one
    process when there is none."""
    env = os.environ
    try:
        world, rank = int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise LlamabrewError(f"the launcher's RANK / WORLD_SIZE / LOCAL_RANK are not numbers ({e})") from None
    if world < 1 or not 0 <= rank < world:
        raise LlamabrewError(f"the launcher's RANK={rank} is not within WORLD_SIZE={world}")
    return Ranks(rank, world, local)


@contextlib.contextmanager
def processes() -> Iterator[Ranks]:
    """Join the launcher's process group for the length of a run (one device per rank: ``cuda:LOCAL_RANK``), and
    leave it after; other ranks than 0 log errors only (rank 0 speaks for all). One process: nothing to join."""
    import torch.distributed as dist

    ranks = launched()
    if ranks.world == 1 or dist.is_initialized():
        yield ranks
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(ranks.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    if not ranks.main:
        logging.getLogger("llamabrew").setLevel(logging.ERROR)
    try:
        yield ranks
        dist.barrier()  # rank 0 may still be writing the run: the launcher returns once it is done
    finally:
        dist.destroy_process_group()


def choose_strategy(method: str, parallel: str, world: int) -> str:
    """``single`` for one process; else the recipe's ``optim.parallel``, where auto is fsdp for full fine-tuning
    (its weights, gradients and AdamW state are what outgrows a device) and ddp for LoRA (a few MB to sync)."""
    if world == 1:
        return "single"
    strategy = parallel if parallel != "auto" else ("fsdp" if method == "full" else "ddp")
    if strategy == "fsdp" and method != "full":
        raise LlamabrewError("optim.parallel fsdp shards full fine-tuning (--method full); LoRA and QLoRA train "
                             "with ddp (their trainable weights are a few MB)")
    return strategy


def micro_seed(seed: int, index: int) -> int:
    """The RNG seed of the ``index``-th micro-batch: dropout masks and sampled completions depend on the
    micro-batch alone, not on which rank computes it or what ran before (so a run resumes exactly on any number
    of ranks)."""
    return (seed * 1_000_003 + index) % (1 << 63)


def shard_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules FSDP shards one by one: the decoder layers (a Hugging Face model's ``_no_split_modules``)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


class ObjectiveModule(torch.nn.Module):
    """A model with its objective as the forward: what DDP and FSDP wrap (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, objective: Objective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: Batch) -> tuple[torch.Tensor, ObjectiveOutput]:
        out = self.objective(self.model, batch)
        return out.loss, out  # the loss as a plain output: FSDP hooks the tensors it finds for the backward


PREFIX = "model."  # ObjectiveModule's name for the model in state dicts


class DataParallel:
    """A model set up to train on the launcher's ranks with ``strategy`` single, ddp or fsdp (see the module
    docstring); call it with a micro-batch for the objective's `ObjectiveOutput`."""

    def __init__(self, model: torch.nn.Module, objective: Objective, device: torch.device,
                 strategy: str = "single", ranks: Ranks | None = None) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
        self.model, self.objective, self.strategy = model, objective, strategy
        self.ranks = ranks or (launched() if strategy != "single" else Ranks())
        self.device = device
        inner = ObjectiveModule(model, objective)
        self.root: torch.nn.Module = inner
        if strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index if device.index is not None else torch.cuda.current_device()] \
                if device.type == "cuda" else None
            # buffers (rotary tables) never change: no broadcast before each forward
            self.root = DistributedDataParallel(inner, device_ids=ids, broadcast_buffers=False)
        elif strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for unit in shard_units(model):  # moved to the device a layer at a time, then split
                fully_shard(unit)
            fully_shard(inner)

    def __call__(self, batch: Batch) -> ObjectiveOutput:
        loss, out = self.root(batch)
        out.loss = loss
        return out

    # ---- a step ----
    def accumulating(self, last: bool) -> contextlib.AbstractContextManager[Any]:
        """Around a micro-batch's forward and backward: DDP all-reduces only on the step's last one."""
        if self.strategy == "ddp" and not last:
            return self.root.no_sync()  # type: ignore[operator]
        return contextlib.nullcontext()

    def sum(self, *values: float) -> list[float]:
        """``values`` summed over the ranks (float64)."""
        if self.ranks.world == 1:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        """Whether any rank says so (all ranks must stop at the same step)."""
        return bool(self.sum(float(flag))[0]) if self.ranks.world > 1 else flag

    def unscale(self, parameters: Sequence[torch.nn.Parameter], targets: float) -> None:
        """Gradients of summed losses → of the step's mean over its targets (DDP and FSDP average over ranks:
        times the world size to undo it)."""
        for p in parameters:
            if p.grad is not None:
                p.grad.div_(max(1, targets) / self.ranks.world)

    def evaluate(self, batches: Sequence[Batch]) -> tuple[float, dict[str, float]]:
        """Target-weighted mean loss and metrics over ``batches``, each rank taking every world-th one (slots
        past the end repeat the first at weight 0): the same figures one process computes."""
        w, n = self.ranks.world, len(batches)
        picks = range(self.ranks.rank, math.ceil(n / w) * w, w)
        mine = [batches[i if i < n else 0] for i in picks]
        was_training = self.model.training
        self.model.eval()
        total, targets, sums = objective_sums(self, mine, self.device, [int(i < n) for i in picks])
        self.model.train(was_training)
        names = list(sums)
        total, targets, *values = self.sum(total, targets, *(sums[k] for k in names))
        return total / max(targets, 1), {k: v / max(targets, 1) for k, v in zip(names, values, strict=True)}

    # ---- checkpoints ----
    def _from_main(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (rank 0 reads the run: other machines need no copy of it)."""
        if self.ranks.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def latest_checkpoint(self, root: Path) -> Path | None:
        found = list_checkpoints(root) if self.ranks.main else []
        return self._from_main(found[-1] if found else None)

    def load(self, path: Path, optimizer: Any, scheduler: Any) -> LoopProgress:
        if self.strategy != "fsdp":
            ckpt = self._from_main(read_checkpoint(path) if self.ranks.main else None)
            return restore(ckpt, self.model, optimizer, scheduler, path)
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        ckpt = read_checkpoint(path) if self.ranks.main else None
        if ckpt is not None:
            check_weights(path, self.model, ckpt.weights)
        rest = self._from_main(None if ckpt is None else Checkpoint({}, {}, ckpt.scheduler, ckpt.progress, ckpt.rng))
        opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
        weights = {} if ckpt is None else {PREFIX + k: v for k, v in ckpt.weights.items()}
        optim = {} if ckpt is None else _prefixed(optimizer_state_names(self.model, optimizer, ckpt.optimizer))
        set_model_state_dict(self.root, weights, options=opts)
        set_optimizer_state_dict(self.root, optimizer, optim, options=opts)
        restore_rest(rest, scheduler)
        return rest.progress

    def _whole_state(self, optimizer: Any | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """FSDP's shards gathered: the trainable weights (and the optimizer state) by name, on rank 0."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = {k.removeprefix(PREFIX): v for k, v in get_model_state_dict(self.root, options=opts).items()}
        optim = get_optimizer_state_dict(self.root, optimizer, options=opts) if optimizer is not None else {}
        return weights, _prefixed(optim, remove=True) if optim else {}

    def save(self, root: Path, optimizer: Any, scheduler: Any, progress: LoopProgress, keep: int) -> None:
        """A checkpoint of whole tensors, written by rank 0 (under FSDP every rank takes part in gathering it)."""
        if self.strategy == "fsdp":
            weights, optim = self._whole_state(optimizer)
            trained = {n for n, p in self.model.named_parameters() if p.requires_grad}
            weights = {k: v for k, v in weights.items() if k in trained}
        elif self.ranks.main:
            weights, optim = trainable_state(self.model), optimizer_state_by_name(self.model, optimizer)
        else:
            return
        if self.ranks.main:
            save_checkpoint(root, Checkpoint(weights, optim, scheduler.state_dict(), progress, rng_state()), keep)

    def save_pretrained(self, out: Path, save: Any | None = None) -> None:
        """The trained model as a standard Hugging Face (or PEFT) directory, written by rank 0: ``save(out)``, or
        under FSDP the gathered weights through ``save_pretrained``."""
        if self.strategy == "fsdp":
            weights, _ = self._whole_state(None)
            if self.ranks.main:
                self.model.save_pretrained(out, state_dict=weights, safe_serialization=True)  # type: ignore[operator]
        elif self.ranks.main:
            (save or (lambda path: self.model.save_pretrained(path, safe_serialization=True)))(out)  # type: ignore[operator]


def _prefixed(optim: dict[str, Any], remove: bool = False) -> dict[str, Any]:
    """A by-name optimizer state with parameter names as ObjectiveModule's (or, ``remove``, the model's)."""
    def name(n: str) -> str:
        return n.removeprefix(PREFIX) if remove else PREFIX + n

    return {"state": {name(n): s for n, s in optim["state"].items()},
            "param_groups": [{**g, "params": [name(n) for n in g["params"]]} for g in optim["param_groups"]]}
