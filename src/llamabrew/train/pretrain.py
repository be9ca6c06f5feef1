"""Pretrain a small LLaMA-architecture base from scratch on raw text, sized for the corpus and the time given.

Sizing rule: knowledge needs many exposures (Allen-Zhu & Li, "Physics of Language Models" 3.1/3.3), so the number
of passes over the corpus is fixed (``optim.epochs``) and the time budget is spent on model size: the largest model
on the shape ladder whose measured speed on this machine covers those passes in ``optim.max_minutes``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from llamabrew.data.batching import Batcher, PaddedBatcher, to_device
from llamabrew.data.encode import Encoded
from llamabrew.data.formats import read_records
from llamabrew.data.streams import Order, StreamBatcher
from llamabrew.data.templates import BUILTIN
from llamabrew.errors import InputError, LlamabrewError
from llamabrew.io import atomic_write_text
from llamabrew.models import pick_device, pick_dtype, set_threads
from llamabrew.recipe import PretrainRecipe, save_recipe
from llamabrew.run import Run, RunSummary
from llamabrew.train import untrained
from llamabrew.train.checkpoint import list_checkpoints
from llamabrew.train.cost import budget_seconds, run_cost
from llamabrew.train.distributed import launched
from llamabrew.train.loop import autocast_for, fit, steps_per_epoch
from llamabrew.train.objective import CausalLM
from llamabrew.train.plan import format_duration
from llamabrew.train.tokenizer import train_bpe_tokenizer
from llamabrew.train.tracking import check_trackers

# (hidden size, layers): a ladder of LLaMA shapes from ~0.1M to ~100M parameters (plus embeddings).
SHAPES = [(64, 2), (96, 3), (128, 4), (160, 4), (192, 6), (256, 6), (320, 8), (384, 8), (512, 10), (640, 12),
          (768, 12), (1024, 16)]
log = logging.getLogger(__name__)
# A base pretrained here is tuned in Alpaca's layout with the answer on the "### Response:" line, so an answer's
# first word is the token running text has (" Name"), not a line's first word ("Name": other tokens, rarely seen in
# the corpus). Measured on the orchard world (answers open with the asked-about name): 66% held-out with the
# answer on its own line, 89% inline, same base (benchmarks/RESULTS.md).
BASE_TEMPLATE = BUILTIN["alpaca_inline"]
TIME_MARGIN = 0.9  # plan for 90% of --max-minutes: validation, saving and start-up need the rest


@dataclass
class PretrainPlan:
    hidden: int
    layers: int
    params: int
    corpus_tokens: int
    documents: int
    epochs: float
    steps: int
    seconds_per_step: float

    @property
    def expected_seconds(self) -> float:
        return self.steps * self.seconds_per_step


@dataclass
class Corpus:
    """The documents, and whether they are the lines of running text (a .txt without blank lines), whose order
    carries meaning, rather than separate documents (paragraphs, JSONL records), whose order does not."""

    docs: list[str]
    lines_of_text: bool

    @property
    def order(self) -> Order:
        return "corpus" if self.lines_of_text else "shuffle"

    @property
    def texts(self) -> list[str]:
        """The documents as pretraining reads them: lines of text as running text (`running_text`), separate
        documents as they are."""
        return [running_text(d) for d in self.docs] if self.lines_of_text else self.docs


def read_corpus(paths: list[Path]) -> Corpus:
    """Documents from .txt files (see `split_documents`) or JSONL files (a 'text' field a line)."""
    if not paths:
        raise LlamabrewError("no corpus: pass --corpus FILE")
    docs: list[str] = []
    lines = True
    for path in paths:
        if str(path).endswith((".jsonl", ".json")):
            for rec, line, index in read_records(path):
                if not isinstance(rec.get("text"), str):
                    raise InputError("expected a string", file=path, line=line, record=index, field="text")
                docs.append(rec["text"])
            lines = False
            continue
        if not Path(path).is_file():
            raise InputError("no such file", file=path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"not valid UTF-8 (byte {e.start})", file=path) from None
        docs.extend(split_documents(text))
        lines = lines and not has_paragraphs(text)
    if not docs:
        raise InputError("corpus is empty", file=paths[0])
    return Corpus(docs, lines)


def has_paragraphs(text: str) -> bool:
    return bool(re.search(r"\n[ \t]*\n", text.strip()))


def split_documents(text: str) -> list[str]:
    """Paragraphs when the text has blank lines between them; otherwise one document per line (a corpus of
    one fact or one sentence a line is common, and reading it as one document would leave nothing to hold out)."""
    parts = re.split(r"\n[ \t]*\n", text) if has_paragraphs(text) else text.splitlines()
    return [p.strip() for p in parts if p.strip()]


def llama_config(hidden: int, layers: int, tokenizer: Any, seq_len: int) -> Any:
    from transformers import LlamaConfig

    heads = max(2, hidden // 32)
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=int(hidden * 8 / 3) // 16 * 16,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=max(seq_len, 2048), tie_word_embeddings=True, rope_theta=10000.0,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def count_params(cfg: Any) -> int:
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        return sum(p.numel() for p in LlamaForCausalLM(cfg).parameters())


def running_text(line: str) -> str:
    """A line of a text as the middle of running text: with a space in front, so its first word is the same
    tokens as that word inside a sentence (SentencePiece's dummy prefix). Byte-level BPE splits "Ann" and " Ann"
    into other tokens; a name that starts most of its person's lines was then a stranger in a question ("Where
    does Ann live?"): on the observatory world, held-out people named mid-line in at most one corpus line scored
    20%, those named so in three or more 95% (benchmarks/RESULTS.md). Lines only: a paragraph starts with a new
    person, and read so, that first name taught the base that a name after a text's start is someone new (tuned
    answers then began with a stranger's name: voyage 94.3% → 17.1%)."""
    return line if line.startswith(" ") else " " + line


def encode_corpus(docs: list[str], tokenizer: Any, seq_len: int) -> list[Encoded]:
    """Each document as ``BOS text EOS`` (a longer one split into ``seq_len`` pieces, for unpacked batches).
    No documents (an empty validation split) gives none."""
    out: list[Encoded] = []
    for ids in tokenizer(docs, add_special_tokens=True)["input_ids"] if docs else []:
        ids = [*ids, tokenizer.eos_token_id]
        out += [Encoded(ids[i : i + seq_len], ids[i : i + seq_len]) for i in range(0, len(ids), seq_len)
                if len(ids[i : i + seq_len]) > 1]
    return out


def corpus_batcher(recipe: PretrainRecipe, pad_id: int, order: Order) -> Batcher:
    """Packed (default): the documents as one stream in ``seq_len`` windows, laid out anew every epoch
    (`llamabrew.data.streams`); unpacked: one document per row, padded."""
    return StreamBatcher(pad_id, recipe.seq_len, order) if recipe.pack else PaddedBatcher(pad_id)


def measure_seconds_per_step(cfg: Any, train: list[Encoded], recipe: PretrainRecipe, batcher: Batcher,
                             device: torch.device, dtype: torch.dtype) -> float:
    """Time one optimizer step of a fresh model of this shape on a real micro-batch."""
    from transformers import LlamaForCausalLM

    rng = torch.get_rng_state()
    model = LlamaForCausalLM(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = to_device(batcher.batch(train, recipe.optim, 0), device)
    objective = CausalLM()
    times = []
    for _ in range(6):  # the first step pays one-time set-up costs; it is not counted
        t0 = time.monotonic()
        with autocast_for(device, dtype):
            loss = objective(model, batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.monotonic() - t0)
    torch.set_rng_state(rng)
    return sorted(times[1:])[2] * recipe.optim.grad_accum  # median: robust to a busy machine


def plan_model(train: list[Encoded], tokenizer: Any, recipe: PretrainRecipe, batcher: Batcher,
               device: torch.device, dtype: torch.dtype = torch.float32) -> PretrainPlan:
    """Choose the shape (or honour --params) and the number of steps that fit the time budget."""
    optim = recipe.optim
    budget = min((optim.max_minutes or 60.0) * 60, budget_seconds(optim) or math.inf) * TIME_MARGIN  # time or $
    per_epoch = steps_per_epoch(train, optim, batcher)
    wanted_steps = optim.max_steps or math.ceil(optim.epochs * per_epoch)
    candidates = [(h, n, llama_config(h, n, tokenizer, recipe.seq_len)) for h, n in SHAPES]
    if recipe.params:
        candidates = [min(candidates, key=lambda c: abs(math.log(count_params(c[2]) / recipe.params)))]
    chosen = None
    for hidden, layers, cfg in candidates:
        sps = measure_seconds_per_step(cfg, train, recipe, batcher, device, dtype)
        log.info(f"  size probe: hidden {hidden}, {layers} layers → {sps * 1000:.0f} ms/step", extra={"style": "dim"})
        if chosen is not None and sps * wanted_steps > budget:
            break
        chosen = (hidden, layers, cfg, sps)
    assert chosen is not None
    hidden, layers, cfg, sps = chosen
    steps = max(1, min(wanted_steps, int(budget / sps)))
    return PretrainPlan(hidden, layers, count_params(cfg), sum(len(e) for e in train), len(train),
                        steps / per_epoch, steps, sps)


def run(recipe: PretrainRecipe) -> Path:
    """Pretrain and save a standard HF model directory (config, safetensors, tokenizer) to ``recipe.out``."""
    out, run_dir = Path(recipe.out), Run(recipe.out)
    if launched().world > 1:
        raise LlamabrewError("pretrain runs in one process (it sizes its model to one device's measured speed): "
                             "launch it without torchrun / accelerate")
    budget_seconds(recipe.optim)  # a budget without a price fails now
    check_trackers(recipe.optim.log_to)  # so does a tracker whose extra is missing
    from transformers import AutoTokenizer, LlamaForCausalLM
    if list_checkpoints(run_dir.checkpoints) and not recipe.resume:
        raise LlamabrewError(f"{out} already holds checkpoints: pass --resume to continue, or choose another --out")
    threads = set_threads(recipe.optim.threads)
    corpus = read_corpus(recipe.corpus)
    docs = corpus.texts
    if recipe.resume and (out / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(out)
    else:
        tokenizer = train_bpe_tokenizer(docs, recipe.vocab_size)
        tokenizer.chat_template = BASE_TEMPLATE.jinja  # what `--template auto` tunes the base with
        tokenizer.save_pretrained(out)
    order = list(range(len(docs)))
    random.Random(recipe.optim.seed).shuffle(order)
    n_val = min(200, int(len(docs) * recipe.val_fraction))
    held = set(order[:n_val])  # a random validation sample; training keeps the corpus's own order
    val = encode_corpus([docs[i] for i in sorted(held)], tokenizer, recipe.seq_len)
    train = encode_corpus([d for i, d in enumerate(docs) if i not in held], tokenizer, recipe.seq_len)
    batcher = corpus_batcher(recipe, tokenizer.pad_token_id, corpus.order)
    device = pick_device()
    dtype = pick_dtype(recipe.optim.precision, device)
    plan = plan_model(train, tokenizer, recipe, batcher, device, dtype)
    layout = (f"windows of {recipe.seq_len} tokens, "
              + ("lines read as running text, packed whole, fixed windows and re-laid runs in turn"
                 if corpus.order == "corpus" else "documents reshuffled into a new stream each epoch")
              if recipe.pack else "one document per row")
    log.info(
        f"plan pretraining: LLaMA {plan.params / 1e6:.2f}M parameters (hidden {plan.hidden}, "
        f"{plan.layers} layers) on {device.type} ({threads} threads) · corpus {len(docs)} documents, "
        f"{plan.corpus_tokens:,} tokens, vocab {len(tokenizer)}, {layout} · {plan.steps} steps = "
        f"{plan.epochs:.1f} epochs{', bf16 autocast' if dtype == torch.bfloat16 else ''} · expected time "
        f"{format_duration(plan.expected_seconds)}")
    if plan.epochs < recipe.optim.epochs * 0.99:
        log.warning(f"the time budget covers {plan.epochs:.1f} of the {recipe.optim.epochs:g} epochs asked for even "
                    "at the smallest size; raise --max-minutes for better recall")
    torch.manual_seed(recipe.optim.seed)
    model = LlamaForCausalLM(llama_config(plan.hidden, plan.layers, tokenizer, recipe.seq_len)).to(device)
    optim = recipe.optim.model_copy(update={"max_steps": plan.steps})
    out.mkdir(parents=True, exist_ok=True)
    save_recipe(recipe, out)
    atomic_write_text(out / "pretrain_plan.json", json.dumps(asdict(plan), indent=2))
    result = fit(model, train, val, optim, out, batcher=batcher, device=device, dtype=dtype,
                 resume=recipe.resume, description="pretraining")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    untrained.record(out, model.config.vocab_size, (e.input_ids for e in train))
    run_dir.write_summary(RunSummary("pretrain", "full", result.steps, result.train_loss, result.val_loss,
                                     result.stopped_early, result.elapsed_s, len(train), len(val), plan.params,
                                     plan.params, None, *run_cost(recipe.optim, result.elapsed_s)))
    return out
