"""Does stock llama.cpp read the rendered prompts as the model was trained? Token ids compared text by text.

Verification tokenizes through llama-cpp-python's own vocab-only tokenizer (what Ollama, llama-server and LM
Studio run), never through a llamabrew rule, and compares with the ids training used (`encode_text`).

One difference has no standard GGUF setting that avoids it, so it is reported rather than refused: the
SentencePiece dummy prefix. llama.cpp, like the original SentencePiece model, gives every run of raw text that
starts the text or follows a special token one word-start '▁'. A HF Metaspace tokenizer gives it only to the
run at offset 0 (``prepend_scheme="first"``, Llama-2 / Mistral as transformers 5 builds them) and never to a run
that already starts with a space. Any other difference refuses the export.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamabrew.data.encode import adds_bos, encode_text

# HF dummy-prefix schemes (`gguf_tokenizer._space_prefix`) that llama.cpp's one rule cannot always reproduce.
METASPACE_SCHEMES = ("always", "first")
KNOWN = ("llama.cpp gives every text run that starts a prompt or follows a special token SentencePiece's dummy-prefix "
         "'▁', as the original SentencePiece model does; this HF tokenizer (Metaspace) does not always, so these "
         "check prompts reach the model one '▁' different from training:")


@dataclass(frozen=True)
class TokenDiff:
    """One text whose llama.cpp ids differ from HF's: the first differing position and pieces from just before."""

    text: str
    position: int
    offset: int  # about where in ``text`` (characters)
    hf: tuple[str, ...]
    llama: tuple[str, ...]
    known: bool  # exactly the dummy-prefix difference (see the module docstring)

    def describe(self) -> str:
        def show(pieces: tuple[str, ...]) -> str:
            return " ".join(map(repr, pieces)) or "(end)"

        near = self.text[max(self.offset - 16, 0):self.offset + 24]
        where = (f"{_short(self.text, 40)} near {near!r}, token {self.position}: HF {show(self.hf)} | "
                 f"llama.cpp {show(self.llama)}")
        return f"{where} (dummy prefix)" if self.known else where


def _short(text: str, n: int = 60) -> str:
    return repr(text if len(text) <= n else text[:n] + "…")


def special_texts(tokenizer: Any) -> list[str]:
    """The texts llama.cpp cuts out as special tokens (added tokens and UNK), longest first as it matches them."""
    texts = {t.content for t in tokenizer.added_tokens_decoder.values()}
    if isinstance(tokenizer.unk_token, str):
        texts.add(tokenizer.unk_token)
    return sorted(texts, key=len, reverse=True)


def fragments(text: str, specials: list[str]) -> list[tuple[str, bool]]:
    """``text`` cut into (piece, is_special): special tokens and the runs of raw text between them."""
    if not specials:
        return [(text, False)] if text else []
    parts = re.split("(" + "|".join(map(re.escape, specials)) + ")", text)
    return [(p, i % 2 == 1) for i, p in enumerate(parts) if p]


def dummy_prefix_ids(tokenizer: Any, text: str) -> list[int]:
    """HF's own ids for ``text`` under llama.cpp's rule: every raw text run gets one ' ' in front (a Metaspace
    tokenizer turns it into the '▁' and adds none of its own), special tokens as they are, BOS as training."""
    ids: list[int] = []
    for piece, special in fragments(text, special_texts(tokenizer)):
        if special:
            ids.append(tokenizer.convert_tokens_to_ids(piece))
        else:
            ids += tokenizer(" " + piece, add_special_tokens=False)["input_ids"]
    if adds_bos(tokenizer) and (not ids or ids[0] != tokenizer.bos_token_id):
        ids = [tokenizer.bos_token_id, *ids]
    return ids


def llamacpp_rule_ids(tokenizer: Any, scheme: str | None, text: str) -> list[int]:
    """What llama.cpp should give for ``text`` if its only difference from HF is the known one."""
    return dummy_prefix_ids(tokenizer, text) if scheme in METASPACE_SCHEMES else encode_text(tokenizer, text)


def raw_after_special(tokenizer: Any, texts: list[str]) -> tuple[str, str] | None:
    """The first (special token, the raw text after it) in ``texts``."""
    specials = special_texts(tokenizer)
    for text in texts:
        frags = fragments(text, specials)
        for (a, a_special), (b, b_special) in zip(frags, frags[1:], strict=False):
            if a_special and not b_special:
                return a, b
    return None


def template_warning(tokenizer: Any, scheme: str | None, template: str, texts: list[str]) -> str | None:
    """Said at export time: on a "first"-scheme tokenizer, text the template writes right after a special token
    gets a '▁' in llama.cpp that it never had in training."""
    found = raw_after_special(tokenizer, texts) if scheme == "first" else None
    if found is None:
        return None
    special, text = found
    return (f"template '{template}' puts text right after the special token {special!r} ({_short(text, 24)}); "
            "this tokenizer (Metaspace prepend_scheme 'first') gives such text no word-start '▁', llama.cpp (and "
            "Ollama, llama-server, LM Studio) gives it one, as the original SentencePiece model does, so those "
            "prompts differ from training there")


def stock_vocab(path: str | Path) -> Any:
    """llama-cpp-python's tokenizer for ``path`` alone (no weights): what every llama.cpp runtime reads."""
    from llamabrew.extras import require

    llama_cpp = require("llamacpp", "verifying a GGUF in llama.cpp (--no-verify skips it)")
    with _quiet_stderr():  # llama.cpp warns that the context outgrows a vocab-only file's (absent) training one
        return llama_cpp.Llama(str(path), vocab_only=True, verbose=False)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _pieces(llm: Any, ids: list[int]) -> tuple[str, ...]:
    return tuple(llm._model.token_get_text(i) for i in ids)


def diff_tokens(llm: Any, texts: list[str], want: list[list[int]], rule: list[list[int]]) -> list[TokenDiff]:
    """Texts whose stock llama.cpp ids differ from ``want`` (HF's), each marked known when they equal ``rule``
    (`llamacpp_rule_ids`)."""
    from llamabrew.gguf.runtime import stock_tokenize

    out = []
    for text, hf, expected in zip(texts, want, rule, strict=True):
        got = stock_tokenize(llm, text)
        if got == hf:
            continue
        pos = next((i for i, (a, b) in enumerate(zip(hf, got, strict=False)) if a != b), min(len(hf), len(got)))
        lo = max(pos - 1, 0)
        offset = len(llm.detokenize(hf[:pos], special=True).decode("utf-8", "replace"))
        out.append(TokenDiff(text, pos, offset, _pieces(llm, hf[lo:pos + 4]), _pieces(llm, got[lo:pos + 4]),
                             known=got == expected))
    return out
