"""Check an exported GGUF against the torch model it came from: same tokens, same next-token logits.

A GGUF can load and chat while being subtly wrong (a missed rotary permutation, a wrong pre-tokenizer, a lost
chat template). So every export feeds the same prompts, rendered with the trained template, to torch and to
llama.cpp and compares the logits at every position, and the token ids stock llama.cpp reads from the file alone
(`tokencheck`) with training's.
"""

from __future__ import annotations

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
    """``max_rel_diff``: max |logit difference| over all prompts, positions and tokens, divided by the
    standard deviation of the torch logits (so one bound fits tiny and 7B models). ``min_top1``: share of
    positions where both pick the same most likely next token (near-ties within 1e-3 std agree).
    ``abs_floor``: a max |logit difference| at or below this always passes, however flat the logits are (a
    random or barely trained model has a tiny logit std, and 0.1 nats moves no probability by more than ~10%)."""

    max_rel_diff: float
    min_top1: float
    abs_floor: float = 0.0


# Export is refused beyond these. f16 only rounds weights and activations to 11-bit mantissas: a tiny random
# LLaMA shows ~0.003-0.01; 0.05 leaves room for long prompts. q8_0 also quantizes activations to 8 bits: ~0.05
# to 0.17 on tiny random models; 0.35 leaves room for outlier logits while still catching broken conversions
# (a missed q/k permutation or a wrong tokenizer gives > 1 and top-1 near chance). 4-bit types are reported
# only: their cost is expected and shown (with --eval) rather than refused.
BOUNDS: dict[str, Bound] = {"f16": Bound(0.05, 0.98, abs_floor=0.02), "q8_0": Bound(0.35, 0.90, abs_floor=0.1)}

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
            if self.rel_diff > b.max_rel_diff and self.max_abs_diff > b.abs_floor:
                out.append(
                    f"max logit difference {self.max_abs_diff:.4g} is {self.rel_diff:.3f} x the logit std "
                    f"(bound {b.max_rel_diff}, or at most {b.abs_floor} absolute)"
                )
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
            f"{self.quant}: max |Δlogit| {self.max_abs_diff:.4g} ({self.rel_diff:.3f} std), top-1 agreement "
            f"{self.top1:.1%} over {self.positions} positions, tokenizer {tokens} -> {verdict}"
        )


def compare(engine: Any, ref: Reference, quant: str, token_diffs: list[TokenDiff]) -> Check:
    """Compare a `LlamaCppEngine` opened with ``logits_all=True`` against the torch reference (on HF's ids, so
    a tokenizer difference does not hide a weight difference); ``token_diffs`` from `tokencheck.diff_tokens`."""
    max_diff, agree, n = 0.0, 0, 0
    for ids, want in zip(ref.ids, ref.logits, strict=True):
        got = engine.logits(ids)[:, : want.shape[1]]
        max_diff = max(max_diff, float(np.abs(got - want).max()))
        tol = 1e-3 * float(want.std())
        picked = want[np.arange(len(ids)), got.argmax(-1)]
        agree += int((picked >= want.max(-1) - tol).sum())
        n += len(ids)
    std = float(np.concatenate([w.ravel() for w in ref.logits]).std())
    return Check(quant, max_diff, std, agree / max(n, 1), token_diffs, n)


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
