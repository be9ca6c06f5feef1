"""The tokenizer part of a GGUF file, read from the Hugging Face fast tokenizer (``tokenizer.json``).

llama.cpp re-implements tokenization, so the file must say which algorithm to run: ``gpt2`` (byte-level BPE
with merges and a pre-tokenizer regex named by ``tokenizer.ggml.pre``) or ``llama`` (SentencePiece-style BPE
with byte fallback, where a piece's score is its merge priority). A wrong choice here gives a model that loads
fine but reads a different token sequence than it was trained on, so `llamabrew.export.verify` re-checks
tokenization afterwards.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from gguf import GGUFWriter, TokenType

from llamabrew.data.encode import adds_bos
from llamabrew.errors import LlamabrewError

# Pre-tokenizer regexes of the byte-level BPE families llama.cpp knows, by their `tokenizer.ggml.pre` name.
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
_QWEN2_REGEX = _LLAMA3_REGEX.replace(r"\p{N}{1,3}", r"\p{N}")
_KNOWN_SPLITS = {_LLAMA3_REGEX: "llama-bpe", _QWEN2_REGEX: "qwen2"}


@dataclass
class GGUFVocab:
    """Everything `tokenizer.ggml.*` holds, ready to be written."""

    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece-style)
    pre: str | None
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    space_prefix: str = "never"  # see _space_prefix
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad, eot
    add_bos: bool = False
    warnings: list[str] = field(default_factory=list)


def _backend_json(tokenizer: Any) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise LlamabrewError("GGUF export needs a fast tokenizer (tokenizer.json); this one has none")
    return json.loads(backend.to_str())


def _pieces(obj: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A normalizer / pre-tokenizer / decoder, flattened out of any ``Sequence``."""
    if not obj:
        return []
    inner = obj.get("pretokenizers") or obj.get("normalizers") or obj.get("decoders")
    return [p for o in inner for p in _pieces(o)] if inner is not None else [obj]


def _bpe_pre(spec: dict[str, Any]) -> tuple[str, list[str]]:
    """The llama.cpp pre-tokenizer name for a byte-level BPE tokenizer, plus a warning when it is a guess."""
    parts = _pieces(spec.get("pre_tokenizer"))
    splits = [p for p in parts if p.get("type") == "Split"]
    level = next((p for p in parts if p.get("type") == "ByteLevel"), None)
    if not splits and level is not None and level.get("use_regex", True):
        if level.get("add_prefix_space"):
            return "gpt-2", ["byte-level pre-tokenizer adds a prefix space; llama.cpp's 'gpt-2' does not"]
        return "gpt-2", []
    if len(splits) == 1:
        regex = splits[0].get("pattern", {}).get("Regex", "")
        if regex in _KNOWN_SPLITS:
            return _KNOWN_SPLITS[regex], []
    return "default", ["unrecognised pre-tokenizer; llama.cpp may split text differently (tokenizer check)"]


def _merge_pairs(model: dict[str, Any]) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else (m[0], m[1]) for m in model.get("merges") or []]


def _merges(model: dict[str, Any]) -> list[str]:
    """Merges as "a b" strings; a space inside a part is escaped the way llama.cpp's reader expects."""
    return [" ".join(p.replace(" ", chr(288)) for p in pair) for pair in _merge_pairs(model)]


def _sentencepiece_style(spec: dict[str, Any]) -> bool:
    model = spec["model"]
    if model["type"] == "Unigram":
        return True
    return model["type"] == "BPE" and bool(model.get("byte_fallback"))


def _space_prefix(spec: dict[str, Any]) -> str:
    """Where the HF tokenizer gives SentencePiece-style text its word-start '▁' (the dummy prefix): "prepend"
    (legacy ``Prepend`` normalizer: every text run, exactly llama.cpp's rule), "always" / "first" (Metaspace:
    every run / only the run at offset 0, and never to a run that already starts with a space) or "never"
    (Gemma)."""
    for p in _pieces(spec.get("normalizer")) + _pieces(spec.get("pre_tokenizer")):
        if p.get("type") == "Prepend":
            return "prepend"
        if p.get("type") == "Metaspace":
            return p.get("prepend_scheme", "always" if p.get("add_prefix_space", True) else "never")
    return "never"


def space_prefix(tokenizer: Any) -> str | None:
    """`_space_prefix` of a SentencePiece-style tokenizer; None for byte-level BPE (no dummy prefix at all)."""
    spec = _backend_json(tokenizer)
    return _space_prefix(spec) if _sentencepiece_style(spec) else None


def build_vocab(tokenizer: Any, vocab_size: int, stop: tuple[str, ...] = ()) -> GGUFVocab:
    """Tokens, types, scores or merges and special ids, padded to the model's embedding rows."""
    spec = _backend_json(tokenizer)
    model = spec["model"]
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    if model["type"] == "Unigram":
        base = {piece: i for i, (piece, _) in enumerate(model["vocab"])}
        unigram_scores = {i: float(score) for i, (_, score) in enumerate(model["vocab"])}
    elif model["type"] == "BPE":
        base, unigram_scores = dict(model["vocab"]), {}
    else:
        raise LlamabrewError(f"a '{model['type']}' tokenizer cannot go into a GGUF (BPE or Unigram only)")
    by_id: dict[int, str] = {i: t for t, i in base.items()}
    by_id.update({i: t["content"] for i, t in added.items()})
    n = max(by_id) + 1
    if n > vocab_size:
        raise LlamabrewError(f"tokenizer has {n} tokens but the model's embedding has only {vocab_size} rows")
    spm = _sentencepiece_style(spec)
    unk = tokenizer.unk_token_id

    def token_type(i: int, text: str | None) -> TokenType:
        if text is None:
            return TokenType.UNUSED  # embedding rows past the tokenizer (padded vocabularies)
        if i == unk:
            return TokenType.UNKNOWN
        if i in added:
            return TokenType.CONTROL if added[i].get("special") else TokenType.USER_DEFINED
        return TokenType.BYTE if spm and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text) else TokenType.NORMAL

    types = [token_type(i, by_id.get(i)) for i in range(vocab_size)]
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    vocab = GGUFVocab("llama" if spm else "gpt2", None, tokens, [int(t) for t in types],
                      add_bos=adds_bos(tokenizer))
    if spm:
        # SentencePiece merges the adjacent pair whose joined piece scores highest: score = -merge rank (BPE)
        # or the unigram log-probability.
        scores = [0.0] * vocab_size
        if unigram_scores:
            for i, s in unigram_scores.items():
                scores[i] = s
        else:
            for rank, (a, b) in enumerate(_merge_pairs(model)):
                tid = base.get(a + b)
                if tid is not None and scores[tid] == 0.0:
                    scores[tid] = -float(rank + 1)
        vocab.scores = scores
        vocab.space_prefix = _space_prefix(spec)
    else:
        vocab.pre, vocab.warnings = _bpe_pre(spec)
        vocab.merges = _merges(model)
    for name in ("bos", "eos", "unk", "pad"):
        tid = getattr(tokenizer, f"{name}_token_id", None)
        if isinstance(tid, int) and 0 <= tid < vocab_size:
            vocab.special_ids[name] = tid
    # A chat format whose turn ends in a special token (ChatML's <|im_end|>) stops on it: mark it end-of-turn.
    for s in stop:
        tid = base.get(s) if s in base else next((i for i, t in added.items() if t["content"] == s), None)
        if tid is not None and types[tid] == TokenType.CONTROL:
            vocab.special_ids["eot"] = tid
            break
    return vocab


def add_vocab(writer: GGUFWriter, vocab: GGUFVocab, chat_template: str | None) -> None:
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
        # llama.cpp has one rule: a '▁' in front of every text run that starts the text or follows a special
        # token (the original SentencePiece model's dummy prefix). That is HF's "prepend" and the nearest to
        # Metaspace "always" / "first"; verification names the texts where those differ (`tokencheck`).
        writer.add_add_space_prefix(vocab.space_prefix != "never")
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    for name, tid in vocab.special_ids.items():
        getattr(writer, f"add_{name}_token_id")(tid)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(False)  # answers end with EOS because the model learned to write it
    if chat_template:
        writer.add_chat_template(chat_template)
