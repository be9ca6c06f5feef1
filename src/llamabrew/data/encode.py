"""Turn examples into token ids and labels: responses trained on, prompts masked, EOS always last.

The rendered text is tokenized once as a whole (so token boundaries match inference) and the character offsets
decide which tokens belong to assistant turns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from llamabrew.data.formats import Example
from llamabrew.data.templates import Template

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class EncodeReport:
    kept: int = 0
    truncated: int = 0
    dropped: int = 0
    no_target: int = 0  # nothing left to learn after truncation (prompt alone fills the cutoff)


def response_spans(template: Template, tokenizer: Any, example: Example) -> tuple[str, list[tuple[int, int]]]:
    """The full rendered text and the character spans of each assistant turn."""
    messages = [m.as_dict() for m in example.messages]
    spans: list[tuple[int, int]] = []
    full = template.render(tokenizer, messages)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = template.render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = template.render(tokenizer, messages[: i + 1])
        start = _common_prefix_len(prefix, full)
        end = len(upto) if full.startswith(upto) else _common_prefix_len(upto, full)
        spans.append((start, end))
    return full, spans


def _common_prefix_len(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts BOS in front of plain text (LLaMA-style), which templates then rely on."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Tokenize rendered template text the way training does (BOS added when the model expects one)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if adds_bos(tokenizer) and (not ids or ids[0] != tokenizer.bos_token_id):
        ids = [tokenizer.bos_token_id, *ids]
    return ids


def encode_example(
    example: Example,
    tokenizer: Any,
    template: Template,
    cutoff_len: int,
    train_on_inputs: bool = False,
) -> Encoded:
    """Token ids and labels for one example, truncated to ``cutoff_len`` with EOS as the last token."""
    text, spans = response_spans(template, tokenizer, example)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets: list[tuple[int, int]] = list(enc["offset_mapping"])
    trainable = [train_on_inputs or any(s <= a < e for s, e in spans) for a, _ in offsets]
    if adds_bos(tokenizer) and (not ids or ids[0] != tokenizer.bos_token_id):
        ids, trainable = [tokenizer.bos_token_id, *ids], [train_on_inputs, *trainable]
    eos = tokenizer.eos_token_id
    truncated = len(ids) > cutoff_len or (len(ids) == cutoff_len and ids[-1] != eos)
    if truncated:
        ids, trainable = ids[: cutoff_len - 1], trainable[: cutoff_len - 1]
    if not ids or ids[-1] != eos:
        ids, trainable = [*ids, eos], [*trainable, True]
    labels = [t if keep else IGNORE for t, keep in zip(ids, trainable, strict=True)]
    return Encoded(ids, labels, truncated)


def encode_examples(
    examples: list[Example],
    tokenizer: Any,
    template: Template,
    cutoff_len: int,
    overlong: Literal["truncate", "drop"] = "truncate",
    train_on_inputs: bool = False,
    progress: Any = None,
) -> tuple[list[Encoded], EncodeReport]:
    """Encode a dataset, truncating or dropping examples longer than the cutoff, and count what happened."""
    report = EncodeReport()
    out: list[Encoded] = []
    for ex in examples:
        e = encode_example(ex, tokenizer, template, cutoff_len, train_on_inputs)
        if progress is not None:
            progress()
        if e.truncated and overlong == "drop":
            report.dropped += 1
            continue
        if all(label == IGNORE for label in e.labels[:-1]) and not train_on_inputs and e.truncated:
            # Only the forced EOS is left: the prompt alone filled the cutoff; nothing useful to learn.
            report.no_target += 1
            continue
        report.truncated += e.truncated
        report.kept += 1
        out.append(e)
    return out, report


@dataclass
class EncodedPair:
    """A preference pair as two encoded sequences that share their prompt tokens; only the final answer is a
    target (an earlier assistant turn of a chat prompt is context, not what is preferred)."""

    chosen: Encoded
    rejected: Encoded
    margin: float = 0.0

    def __len__(self) -> int:
        return len(self.chosen) + len(self.rejected)


def last_turn_only(e: Encoded) -> Encoded:
    """Keep the labels of the last run of targets (the final answer and its EOS); the rest becomes context."""
    start = len(e.labels)
    while start > 0 and e.labels[start - 1] != IGNORE:
        start -= 1
    return Encoded(e.input_ids, [IGNORE] * start + e.labels[start:], e.truncated)


def encode_pairs(pairs: list[Any], tokenizer: Any, template: Template, cutoff_len: int,
                 overlong: Literal["truncate", "drop"] = "truncate") -> tuple[list[EncodedPair], EncodeReport]:
    """Encode `PreferencePair`s; a pair is dropped (and counted) when either side loses its whole answer to the
    cutoff, or, with ``overlong="drop"``, when either side is truncated at all."""
    report = EncodeReport()
    out = []
    for p in pairs:
        chosen, rejected = (last_turn_only(encode_example(p.example(text), tokenizer, template, cutoff_len))
                            for text in (p.chosen, p.rejected))
        truncated = chosen.truncated or rejected.truncated
        if truncated and overlong == "drop":
            report.dropped += 1
            continue
        if any(all(lab == IGNORE for lab in e.labels[:-1]) and e.truncated for e in (chosen, rejected)):
            report.no_target += 1
            continue
        report.truncated += truncated
        report.kept += 1
        out.append(EncodedPair(chosen, rejected, p.margin or 0.0))
    return out, report
