"""Check an exported GGUF against the torch model it came from: same tokens, same next-token logits.

A GGUF can load and chat while being subtly wrong (a missed rotary permutation, a wrong pre-tokenizer, a lost
chat template). So every export feeds the same prompts, rendered with the trained template, to torch and to
llama.cpp and compares the logits at every position, and the token ids stock llama.cpp reads from the file alone
(`tokencheck`) with training's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llamabrew.data.encode import encode_text
from llamabrew.data.templates import Template
from llamabrew.errors import LlamabrewError
from llamabrew.export.tokencheck import KNOWN, TokenDiff, diff_tokens, llamacpp_rule_ids, stock_vocab
from llamabrew.gguf.vocab import space_prefix


@dataclass(frozen=True)
class Bound:
    """What an export must reach, judged the way llama.cpp's ``perplexity --kl-divergence`` judges a quant:
    ``max_mean_kl``, the mean KL divergence (nats) from torch's next-token distribution to the GGUF's over all
    positions, and ``min_top1``, the share of positions where both pick the same most likely token (near-ties
    within 1e-3 std agree). Single logits are not judged: on real, peaked logits the largest |difference| of a
    good q8_0 file is ordinary 8-bit noise (llama.cpp's own quantizer shows larger ones), so it is reported only.
    """

    max_mean_kl: float
    min_top1: float


# Export is refused beyond these; 4-bit types are reported only (their cost is expected, and shown with --eval).
# Calibrated on real weights (SmolLM2-135M-Instruct over 368 positions; `tests/export/test_real_quants.py` checks
# them each run): f16 mean KL 1e-5, top-1 100%; q8_0 0.0066, 95.1% (llama.cpp's own q8_0 from the same f16: 0.0072,
# 95.7%); q4_k_m 0.082, 87.5%; q4_0 0.55, 68%. The largest single |Δlogit| of that good q8_0 is 2.55 (llama.cpp's
# 2.26), which is why it is not judged. A broken conversion (a missed q/k permutation) gives top-1 near chance.
BOUNDS: dict[str, Bound] = {"f16": Bound(0.002, 0.98), "q8_0": Bound(0.02, 0.90)}

PROSE_TOKENS = 256  # at most this much of CHECK_TEXT (and within the model's positions)
# Plain prose (no chat template) for perplexity and KL on ordinary text, as llama.cpp's tool measures them.
CHECK_TEXT = (
    "The river rises in the hills above the town and runs for forty miles before it reaches the sea. In spring "
    "the water is high and brown with melted snow; by late summer children can wade across it at the old ford. "
    "A stone bridge was built there in the year 1812, and a mill stood beside it until the great flood of 1907. "
    "Today the mill is a small museum, open on weekends from ten until four, where visitors can see the wheel, "
    "the grinding stones and a model of the town as it looked two hundred years ago."
)

CHECK_PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about rain.",
    "Explain in one sentence what a CPU does.",
    "List three colors, separated by commas.",
    "Translate 'good morning' into Spanish.",
)

# Tokenizer-only prompts (no logits): the text where pre-tokenizers differ. A wrong `tokenizer.ggml.pre` still
# tokenizes plain sentences the same way, but not digit runs, upper-case contractions, CRLF, tabs, runs of
# punctuation or non-Latin scripts.
TOKENIZER_PROBES = (
    "Order 1234567 costs $3.14159, isn't it? I'LL pay 20% (WE'RE sure)!!!?...",
    "\tindented line\r\nnext line\n\n   three spaces,\ttab; x=42+17 -> done",
    "naïve café, Москва, 東京, Ελλάδα 🙂",
)


class VerificationError(LlamabrewError):
    """The GGUF does not reproduce the torch model within the stated bounds."""


@dataclass
class Reference:
    """Prompts as rendered text, their token ids, and torch's logits at every position."""

    texts: list[str]
    ids: list[list[int]]
    logits: list[np.ndarray]
    probe_texts: list[str]  # compared token by token only
    probe_ids: list[list[int]]
    rule_ids: list[list[int]] = field(default_factory=list)  # texts + probes under llama.cpp's dummy-prefix rule

    def token_texts(self) -> tuple[list[str], list[list[int]], list[list[int]]]:
        """Every text checked token by token, HF's ids, and the ids of the known llama.cpp difference."""
        ids = self.ids + self.probe_ids
        return self.texts + self.probe_texts, ids, self.rule_ids or ids


def check_conversations(prompts: tuple[str, ...] = CHECK_PROMPTS) -> list[list[dict[str, str]]]:
    """Single-turn prompts plus one two-turn chat, so an end-of-turn token in mid-prompt is checked too."""
    convs = [[{"role": "user", "content": p}] for p in prompts]
    convs.append(
        [
            {"role": "user", "content": prompts[0]},
            {"role": "assistant", "content": "Paris is the capital of France."},
            {"role": "user", "content": "And of Spain?"},
        ]
    )
    return convs


@torch.inference_mode()
def reference_logits(
    model: Any, tokenizer: Any, template: Template, prompts: tuple[str, ...] = CHECK_PROMPTS
) -> Reference:
    texts, ids, logits = [], [], []
    for conv in check_conversations(prompts):
        text = template.render(tokenizer, conv, add_generation_prompt=True)
        tok = encode_text(tokenizer, text)
        out = model(input_ids=torch.tensor([tok], device=model.device)).logits[0]
        texts.append(text)
        ids.append(tok)
        logits.append(out.float().cpu().numpy())
    room = min(PROSE_TOKENS, int(getattr(model.config, "max_position_embeddings", 0) or 4096) - 16)
    sentences = CHECK_TEXT.split(". ")
    for n in range(len(sentences), 0, -1):  # whole sentences, as many as fit (so text and ids agree)
        prose_text = ". ".join(sentences[:n]) + ("" if n == len(sentences) else ".")
        if len(prose := encode_text(tokenizer, prose_text)) <= room or n == 1:
            break
    out = model(input_ids=torch.tensor([prose], device=model.device)).logits[0]
    texts.append(prose_text)
    ids.append(prose)
    logits.append(out.float().cpu().numpy())
    probes = [template.render(tokenizer, [{"role": "user", "content": p}], add_generation_prompt=True)
              for p in TOKENIZER_PROBES]
    scheme = space_prefix(tokenizer)
    rule = [llamacpp_rule_ids(tokenizer, scheme, t) for t in texts + probes]
    return Reference(texts, ids, logits, probes, [encode_text(tokenizer, t) for t in probes], rule)


@dataclass
class Check:
    quant: str
    max_abs_diff: float
    logit_std: float
    top1: float
    token_diffs: list[TokenDiff]  # texts stock llama.cpp tokenizes differently from training
    positions: int
    mean_kl: float = 0.0  # mean KL(torch || GGUF) of the next-token distributions, nats
    ppl_torch: float = 1.0  # perplexity of the checked texts' own next tokens
    ppl_gguf: float = 1.0

    @property
    def ppl_change(self) -> float:
        """Relative perplexity change of the GGUF against torch (0.01 = 1% worse)."""
        return self.ppl_gguf / max(self.ppl_torch, 1e-12) - 1

    @property
    def tokens_match(self) -> bool:
        return not self.token_diffs

    @property
    def tokens_ok(self) -> bool:
        """No difference but the known SentencePiece dummy prefix (reported, not refused)."""
        return all(d.known for d in self.token_diffs)

    def token_warnings(self) -> list[str]:
        """The known differences, each text named (reported, not refused)."""
        known = [f"llama.cpp reads {d.describe()}" for d in self.token_diffs if d.known]
        return [KNOWN, *known] if known else []

    @property
    def rel_diff(self) -> float:
        return self.max_abs_diff / max(self.logit_std, 1e-12)

    @property
    def bound(self) -> Bound | None:
        return BOUNDS.get(self.quant)

    def problems(self) -> list[str]:
        wrong = [d.describe() for d in self.token_diffs if not d.known]
        out = [f"llama.cpp tokenizes the prompts differently from the HF tokenizer in {len(wrong)} texts: "
               + "; ".join(wrong[:3]) + (" ..." if len(wrong) > 3 else "")] if wrong else []
        if b := self.bound:
            if self.mean_kl > b.max_mean_kl:
                out.append(f"mean KL divergence {self.mean_kl:.4g} nats (bound {b.max_mean_kl})")
            if self.top1 < b.min_top1:
                out.append(f"top-1 agreement {self.top1:.1%} (bound {b.min_top1:.0%})")
        return out

    @property
    def passed(self) -> bool:
        return not self.problems()

    def summary(self) -> str:
        verdict = "ok" if self.passed else "FAILED" if self.bound or not self.tokens_ok else "reported"
        tokens = ("same" if self.tokens_match else f"same but the dummy prefix in {len(self.token_diffs)} texts"
                  if self.tokens_ok else "DIFFERS")
        return (
            f"{self.quant}: mean KL {self.mean_kl:.2g}, top-1 agreement {self.top1:.1%}, perplexity "
            f"{self.ppl_change:+.2%} over {self.positions} positions (max |Δlogit| {self.max_abs_diff:.3g}), "
            f"tokenizer {tokens} -> {verdict}"
        )


def compare(engine: Any, ref: Reference, quant: str, token_diffs: list[TokenDiff]) -> Check:
    """Compare a `LlamaCppEngine` opened with ``logits_all=True`` against the torch reference (on HF's ids, so
    a tokenizer difference does not hide a weight difference); ``token_diffs`` from `tokencheck.diff_tokens`."""
    max_diff, agree, n, kl, nll_torch, nll_gguf, n_next = 0.0, 0, 0, 0.0, 0.0, 0.0, 0
    for ids, want in zip(ref.ids, ref.logits, strict=True):
        got = engine.logits(ids)[:, : want.shape[1]].astype(np.float64)
        max_diff = max(max_diff, float(np.abs(got - want).max()))
        tol = 1e-3 * float(want.std())
        picked = want[np.arange(len(ids)), got.argmax(-1)]
        agree += int((picked >= want.max(-1) - tol).sum())
        n += len(ids)
        log_p, log_q = log_softmax(want.astype(np.float64)), log_softmax(got)
        kl += float((np.exp(log_p) * (log_p - log_q)).sum())
        nxt = np.asarray(ids[1:])
        nll_torch -= float(log_p[np.arange(len(nxt)), nxt].sum())
        nll_gguf -= float(log_q[np.arange(len(nxt)), nxt].sum())
        n_next += len(nxt)
    std = float(np.concatenate([w.ravel() for w in ref.logits]).std())
    ppl = [math.exp(min(50.0, v / max(n_next, 1))) for v in (nll_torch, nll_gguf)]
    return Check(quant, max_diff, std, agree / max(n, 1), token_diffs, n, kl / max(n, 1), *ppl)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def verify_gguf(
    path: str | Path, ref: Reference, quant: str, threads: int | None = None, lora: str | Path | None = None
) -> Check:
    """Load ``path`` in llama.cpp (with an optional LoRA GGUF on top) and compare it with ``ref``: tokens through
    llama.cpp's stock vocab-only tokenizer, logits through the engine."""
    from llamabrew.engines.llamacpp import LlamaCppEngine

    vocab = stock_vocab(path)
    try:
        token_diffs = diff_tokens(vocab, *ref.token_texts())
    finally:
        vocab.close()
    ctx = max(len(i) for i in ref.ids) + 16
    engine = LlamaCppEngine(path, threads=threads, ctx=ctx, lora=lora, logits_all=True, announce=False)
    try:
        return compare(engine, ref, quant, token_diffs)
    finally:
        engine.close()


def enforce(check: Check, path: str | Path) -> None:
    """Refuse an f16 / q8_0 export (or any with a tokenizer mismatch) that fails its bound."""
    if (check.bound is not None or not check.tokens_ok) and not check.passed:
        raise VerificationError(
            f"{path}: export verification failed: {'; '.join(check.problems())}. "
            "Please report this with the model's config.json (or skip with --no-verify)."
        )
