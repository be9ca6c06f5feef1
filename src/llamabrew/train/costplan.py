"""`llamabrew plan`: what a run would take on each listed card — time, dollars, memory per GPU, whether it fits —
before anything is rented or downloaded.

From the base's config.json (a local directory or the Hugging Face cache; ``--params 7B`` plans a model you do
not have), the data's token counts after the cutoff and after packing or padding (tokenized with the base's own
tokenizer when it is here, else estimated and labelled so), and a throughput per card: this CPU's measured on
the spot (a one-layer training step of the model's width), every GPU's estimated from its peak bf16 FLOP/s and
an assumed MFU (train/cards.py says where each assumption comes from). Memory comes from train/memory.py.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from llamabrew.data.batching import first_fit_decreasing
from llamabrew.errors import InputError, LlamabrewError
from llamabrew.recipe import Recipe
from llamabrew.train.cards import CARDS, CHECKPOINT_COST, MULTI_GPU_EFFICIENCY, PRICES_AS_OF, card_mfu
from llamabrew.train.defaults import lora_targets
from llamabrew.train.fastpath import MEMORY_HEADROOM
from llamabrew.train.memory import (
    GIB,
    ModelShape,
    TrainSetup,
    estimate_memory,
    flops_per_token,
    layers_to_checkpoint,
    parse_params,
    shape_for_params,
)

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4.0  # English text in a BPE vocabulary, for data whose base tokenizer is not here
TEMPLATE_TOKENS = 40  # an Alpaca prompt's own words ("Below is an instruction ... ### Response:") in tokens
PROBE_TOKENS = 256  # tokens of the CPU's timed probe step
PROBE_MAX_WIDTH = 1024  # the probe layer's width at most (a 7B layer would take minutes on 2 cores)


@dataclass
class DataTokens:
    lengths: list[int]  # tokens of each training example after the cutoff
    source: str  # how they were counted


@dataclass
class CardPlan:
    card: str
    label: str
    usd_per_hour: float | None
    tokens_per_s: float | None  # real (non-padding) tokens a second, all GPUs together
    throughput_source: str  # "measured ..." or "estimate ..."
    seconds: float | None
    cost_usd: float | None
    memory_gib: float  # per GPU
    capacity_gib: float
    fits: bool
    checkpointing: bool
    note: str = ""


@dataclass
class CostPlan:
    model: str
    params: int
    shape: ModelShape
    data: DataTokens
    epochs: float
    tokens: int  # real tokens over the whole run
    computed_tokens: int  # with the padding each card's batches compute (packed: rows; padded: to the longest)
    gpus: int
    sharding: str
    cards: list[CardPlan] = field(default_factory=list)

    @property
    def cheapest(self) -> CardPlan | None:
        """The listed GPU that fits at the lowest cost."""
        fitting = [c for c in self.cards if c.card != "cpu" and c.fits and c.cost_usd is not None]
        return min(fitting, key=lambda c: c.cost_usd or 0.0, default=None)


def find_local(base: str, filename: str) -> Path | None:
    """``filename`` of a local model directory, or of a hub model already in the Hugging Face cache."""
    if Path(base).is_dir():
        path = Path(base) / filename
        return path if path.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(base, filename)
    except Exception:  # not a valid repo id, no cache
        return None
    return Path(hit) if isinstance(hit, str) else None


def model_shape(recipe: Recipe, params: str | None) -> tuple[ModelShape, str]:
    if params:
        try:
            n = parse_params(params)
        except ValueError as e:
            raise InputError(str(e), field="--params") from None
        return shape_for_params(n), f"--params {params} (LLaMA-family shape)"
    base = recipe.model.base
    if not base:
        raise LlamabrewError("no model to plan: pass --base (a local directory or a hub id in the cache) or "
                             "--params, e.g. --params 7B")
    config = find_local(base, "config.json")
    if config is None:
        raise LlamabrewError(f"cannot read config.json of '{base}' (not a local directory, not in the Hugging Face "
                             "cache): pass --params, e.g. --params 7B")
    try:
        return ModelShape.from_config(json.loads(config.read_text())), base
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"not a causal LM config this planner reads: {e}", file=config) from None


def data_tokens(recipe: Recipe) -> DataTokens:
    """Token counts of the training split, with the base's tokenizer when it is here."""
    from llamabrew.train.sft import load_training_data, split_validation

    examples, _ = split_validation(load_training_data(recipe), recipe)
    cutoff = recipe.data.cutoff_len
    tok_file = find_local(recipe.model.base, "tokenizer_config.json") if recipe.model.base else None
    if tok_file is not None:
        from llamabrew.data.encode import encode_examples
        from llamabrew.data.templates import get_template
        from llamabrew.models import load_tokenizer

        tokenizer = load_tokenizer(str(tok_file.parent), recipe.model.trust_remote_code)
        template = get_template(recipe.data.template, tokenizer)
        encoded, _ = encode_examples(examples, tokenizer, template, cutoff, recipe.data.overlong,
                                     recipe.data.train_on_inputs)
        return DataTokens([len(e) for e in encoded], f"tokenized with {recipe.model.base}'s tokenizer")
    lengths = []
    for ex in examples:
        n = TEMPLATE_TOKENS + math.ceil(sum(len(m.text()) for m in ex.messages) / CHARS_PER_TOKEN)
        if n <= cutoff or recipe.data.overlong == "truncate":
            lengths.append(min(n, cutoff))
    return DataTokens(lengths, f"estimate: {CHARS_PER_TOKEN:g} characters a token (no tokenizer of the base here)")


def computed_per_epoch(lengths: list[int], micro: int, packing: bool, row_len: int, seed: int) -> int:
    """Tokens one epoch's micro-batches compute, padding included: packed rows padded to the micro-batch's
    longest row (first-fit-decreasing as PackedBatcher packs them), or padded examples to their longest."""
    if packing:
        loads = [sum(lengths[i] for i in row) for row in first_fit_decreasing(lengths, row_len)]
    else:
        order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
        loads = [lengths[i] for i in order]
    return sum(len(loads[k:k + micro]) * max(loads[k:k + micro]) for k in range(0, len(loads), micro))


def cpu_flops_per_second(shape: ModelShape, dtype: torch.dtype) -> tuple[float, str]:
    """This CPU's training FLOP/s, measured on the spot: forward + backward of one full-trained layer of the
    model's width (at most PROBE_MAX_WIDTH), its vocabulary capped at 32K, on PROBE_TOKENS tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from llamabrew.train.loop import autocast_for

    width = min(shape.hidden, PROBE_MAX_WIDTH)
    heads = shape.heads if width == shape.hidden else max(1, width // 64)
    probe = replace(shape, hidden=width, layers=1, heads=heads, kv_heads=heads, vocab=min(shape.vocab, 32000),
                    intermediate=max(1, round(shape.intermediate * width / shape.hidden)))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=width, intermediate_size=probe.intermediate, num_hidden_layers=1,
                                         num_attention_heads=heads, num_key_value_heads=heads,
                                         vocab_size=probe.vocab, max_position_embeddings=PROBE_TOKENS))
    ids = torch.randint(0, probe.vocab, (1, PROBE_TOKENS))

    def step() -> float:
        t0 = time.perf_counter()
        with autocast_for(torch.device("cpu"), dtype):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return time.perf_counter() - t0

    step()  # first calls pay set-up costs
    seconds = min(step() for _ in range(2))
    rate = flops_per_token(probe, "full", PROBE_TOKENS) * PROBE_TOKENS / seconds
    return rate, f"measured: this CPU, {torch.get_num_threads()} threads, one layer at width {width}"


def ram_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 16.0


def plan_costs(recipe: Recipe, *, params: str | None = None, gpus: int = 1, sharding: str = "ddp",
               gpu: str | None = None, price: float | None = None, cards: list[str] | None = None) -> CostPlan:
    """The plan for ``recipe`` on each card of ``cards`` (default: every listed GPU and this CPU); ``price``
    replaces the hourly price of ``gpu``."""
    from llamabrew.models import pick_dtype

    if gpu is not None and gpu not in CARDS and gpu != "cpu":
        raise InputError(f"unknown card '{gpu}': one of {', '.join([*CARDS, 'cpu'])}", field="--gpu")
    if gpus < 1:
        raise InputError("must be at least 1", field="--gpus")
    if sharding not in ("ddp", "fsdp"):
        raise InputError("ddp (weights on every GPU) or fsdp (sharded)", field="--sharding")
    shape, source = model_shape(recipe, params)
    data = data_tokens(recipe)
    if not data.lengths:
        raise LlamabrewError("no training examples left after applying the cutoff")
    cfg, method, quant = recipe.optim, recipe.method, recipe.model.quantize_4bit
    targets = lora_targets(recipe.lora, recipe.model.base)
    context = sum(n * n for n in data.lengths) / sum(data.lengths)
    flops = flops_per_token(shape, method, context)
    epochs = cfg.epochs
    plan = CostPlan(source, shape.params, shape, data, epochs, round(sum(data.lengths) * epochs), 0, gpus, sharding)
    for name in cards or [*CARDS, "cpu"]:
        on_cpu = name == "cpu"
        packing = (not on_cpu) if recipe.data.packing == "auto" else bool(recipe.data.packing)
        computed = round(computed_per_epoch(data.lengths, cfg.micro_batch_size, packing, recipe.data.cutoff_len,
                                            cfg.seed) * epochs)
        plan.computed_tokens = max(plan.computed_tokens, computed)
        widest = cfg.micro_batch_size * (recipe.data.cutoff_len if packing else max(data.lengths))
        loss = "chunked" if not on_cpu or cfg.loss_chunk_tokens else "plain"
        setup = TrainSetup(method, quant, recipe.lora.r, targets, widest, False, loss,
                           "paged_adamw_8bit" if quant else "adamw", "cpu" if on_cpu else "cuda",
                           1 if on_cpu else gpus, sharding)
        forced = recipe.speed.gradient_checkpointing
        if on_cpu:
            plan.cards.append(_cpu_plan(recipe, shape, setup, flops, computed, plan.tokens,
                                        price if gpu == "cpu" else cfg.price_per_hour, pick_dtype(cfg.precision,
                                                                                                  torch.device("cpu"))))
            continue
        card = CARDS[name]
        if forced == "auto":  # as the fast path decides: recompute the fewest layers that make it fit
            recomputed = layers_to_checkpoint(shape, setup, MEMORY_HEADROOM * card.memory_gib)
        else:
            recomputed = shape.layers if forced == "on" else 0
        checkpointing = recomputed > 0
        memory = estimate_memory(shape, replace(setup, checkpointing=checkpointing, checkpointed_layers=recomputed))
        mfu, measured = card_mfu(name, method, quant)
        slowdown = 1 + CHECKPOINT_COST[method] * recomputed / shape.layers  # the recomputed forwards
        seconds = computed * flops * slowdown / (card.bf16_tflops * 1e12 * mfu * gpus * _efficiency(gpus))
        usd = price if (gpu == name and price is not None) else card.usd_per_hour
        plan.cards.append(CardPlan(
            name, card.label, usd, plan.tokens / seconds,
            f"{'measured' if measured else 'estimate'}: {mfu:.0%} MFU of {card.bf16_tflops:g} TFLOP/s",
            seconds, usd * gpus * seconds / 3600, memory.total_gib, card.memory_gib,
            memory.total_gib <= card.memory_gib, checkpointing))
    return plan


def _efficiency(gpus: int) -> float:
    return 1.0 if gpus == 1 else MULTI_GPU_EFFICIENCY


def _cpu_plan(recipe: Recipe, shape: ModelShape, setup: TrainSetup, flops: float, computed: int, tokens: int,
              price: float | None, dtype: torch.dtype) -> CardPlan:
    memory = estimate_memory(shape, setup).total_gib
    capacity = ram_gib()
    if recipe.model.quantize_4bit:
        return CardPlan("cpu", "this machine (CPU)", price, None, "n/a: 4-bit loading needs CUDA", None, None, memory,
                        capacity, False, False, "QLoRA needs a CUDA GPU")
    rate, source = cpu_flops_per_second(shape, dtype)
    seconds = computed * flops / rate
    return CardPlan("cpu", "this machine (CPU)", price, tokens / seconds, source, seconds,
                    None if price is None else price * seconds / 3600, memory, capacity, memory <= capacity, False)


def describe_prices() -> str:
    return (f"GPU prices: typical on-demand $/GPU-hour as of {PRICES_AS_OF} (assumptions; --gpu CARD "
            "--price-per-hour X to use yours)")
