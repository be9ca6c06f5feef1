"""Llama-3- and Qwen2-style byte-level BPE tokenizers through GGUF export.

The tokenizers are built here as those models' ``tokenizer.json`` has them (a ``Split`` on the family's regex,
then ``ByteLevel`` without its own regex) and trained on a small varied corpus. The export must name the
pre-tokenizer llama.cpp re-implements (``tokenizer.ggml.pre``), llama.cpp must then cut awkward text into
exactly the ids transformers does, and export's own verification must pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_cpp")

from gguf import GGUFReader  # noqa: E402
from tinymodels import CORPUS, build_tiny_model  # noqa: E402

from llamabrew.export import ExportReport, export_gguf  # noqa: E402

# The Split regexes exactly as in the real tokenizer.json files (Meta-Llama-3-8B, Qwen2-7B): written out, not
# imported from llamabrew, so a typo there shows up as a wrong `tokenizer.ggml.pre` here.
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

TRAIN_TEXT = [
    *CORPUS,
    *[
        "I'll say it: we're sure you've seen THEY'RE and I'M before, but don't we'd rather ask? It's fine.",
        "Order 1234567 shipped on 2024-05-17 at 09:45; total $1,299.99 (3 items), pi is 3.14159.",
        "Wow!!! Really?? Yes... (maybe) -- or not; [see: x/y] {a: 1, b: 2} #tag @user 50% & more.",
        "def main():\n    print('hello')\n\treturn 0\n\n\nclass Foo:\n    pass\n",
        "  Indented text\n\n  with blank lines\r\n and   trailing spaces   \n",
        "Naïve café owners in Москва and 東京 love crème brûlée 🙂; Zürich, São Paulo, Kraków.",
    ]
    * 10,
]

# Awkward text where a wrong pre-tokenizer (or a wrong byte / merge table) gives different ids.
TRICKY = [
    "1234567 and 3.14159",
    "I'LL don't WE'RE you've She'd they'Re",
    "a  b   c\t\td \t e",
    "\n\n  indented\n",
    "!!!?... ---> ***",
    "naïve café, Москва, 東京, emoji 🙂",
    " leading space",
    "   three leading spaces and trailing   ",
    "line\r\nwindows\rold mac\n",
    "x=1;y=22;z=333;w=4444",
    "",
]


@dataclass(frozen=True)
class Family:
    name: str
    regex: str
    pre: str  # the `tokenizer.ggml.pre` llama.cpp knows it by
    model_type: str
    bos: str | None
    eos: str
    ignore_merges: bool  # Llama-3's tokenizer.json sets it (and llama.cpp's "llama-bpe" implies it)
    nfc: bool  # Qwen2's tokenizer.json normalizes to NFC
    digits: tuple[str, ...]  # how "1234567" is cut: groups of 3 (Llama-3) or single digits (Qwen2)


FAMILIES = {
    "llama3": Family("llama3", LLAMA3_REGEX, "llama-bpe", "llama", "<|begin_of_text|>", "<|end_of_text|>",
                     ignore_merges=True, nfc=False, digits=("123", "456", "7")),
    "qwen2": Family("qwen2", QWEN2_REGEX, "qwen2", "qwen2", None, "<|endoftext|>", ignore_merges=False, nfc=True,
                    digits=tuple("1234567")),
}
CHAT_SPECIALS = ["<|im_start|>", "<|im_end|>"]


def byte_level_bpe(regex: str, family: Family | None = None, vocab_size: int = 800) -> Any:
    """A `PreTrainedTokenizerFast` laid out like ``family``'s tokenizer.json, with a Split on ``regex``."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    family = family or FAMILIES["llama3"]
    specials = [t for t in (family.bos, family.eos, *CHAT_SPECIALS) if t]
    tok = Tokenizer(models.BPE(ignore_merges=family.ignore_merges))
    if family.nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TRAIN_TEXT, trainer=trainer)
    if family.bos:  # Llama-3 puts <|begin_of_text|> in front of every text; Qwen2 has no BOS
        tok.post_processor = processors.TemplateProcessing(
            single=f"{family.bos} $A", pair=f"{family.bos} $A {family.bos} $B",
            special_tokens=[(family.bos, tok.token_to_id(family.bos))],
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=family.bos, eos_token=family.eos,
                                   clean_up_tokenization_spaces=False)


@dataclass
class Exported:
    family: Family
    tokenizer: Any
    gguf: Path
    report: ExportReport


@pytest.fixture(scope="module", params=list(FAMILIES))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """The family's tokenizer on a tiny random model of its architecture, exported (and verified) as f16."""
    family = FAMILIES[request.param]
    tok = byte_level_bpe(family.regex, family)
    folder = tmp_path_factory.mktemp(family.name)
    src = build_tiny_model(folder / "model", tokenizer=tok, model_type=family.model_type)
    report = export_gguf(src, "f16", folder / "model.gguf", template="chatml", modelfile=False, verbose=False)
    return Exported(family, tok, folder / "model.gguf", report)


def field(reader: GGUFReader, key: str) -> Any:
    return reader.fields[key].contents()


def test_gguf_names_the_family_pre_tokenizer(exported: Exported) -> None:
    reader = GGUFReader(exported.gguf)
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == exported.family.pre
    assert field(reader, "general.architecture") == exported.family.model_type
    assert field(reader, "tokenizer.ggml.add_bos_token") is (exported.family.bos is not None)
    assert exported.report.warnings == []


def test_export_verification_passes(exported: Exported) -> None:
    """Export re-tokenizes chat prompts (ChatML special tokens included) in llama.cpp and compares logits (for
    Qwen2 with its random, non-zero q/k/v biases in the file)."""
    (result,) = exported.report.results
    assert result.check is not None and result.check.tokens_match and result.check.passed, result.check.summary()
    biases = any(t.name == "blk.0.attn_q.bias" for t in GGUFReader(exported.gguf).tensors)
    assert biases is (exported.family.model_type == "qwen2")


def test_llamacpp_tokenizes_tricky_text_like_transformers(exported: Exported) -> None:
    """Same ids from llama.cpp's stock vocab-only tokenizer for plain text (special tokens parsed) and with the
    model's own specials added (BOS in front for Llama-3, nothing for Qwen2)."""
    import llama_cpp

    tok, fam = exported.tokenizer, exported.family
    texts = [*TRICKY, f"<|im_start|>user\n{TRICKY[0]}<|im_end|>\n<|im_start|>assistant\n", f"the end{fam.eos}"]
    llm = llama_cpp.Llama(str(exported.gguf), vocab_only=True, verbose=False)  # stock: the file alone
    try:
        diff: dict[str, tuple[list[int], list[int]]] = {}
        for text in texts:
            for add in (False, True):
                want = tok(text, add_special_tokens=add)["input_ids"]
                got = llm.tokenize(text.encode("utf-8"), add_bos=add, special=True)
                if got != want:
                    diff[f"{text!r} add_special={add}"] = (want, got)
    finally:
        llm.close()
    assert not diff, diff
    pieces = tuple(tok.decode([i]) for i in tok("1234567", add_special_tokens=False)["input_ids"])
    assert pieces == fam.digits  # the family's own digit rule is in force, so the comparison means something


def test_unrecognised_split_regex_is_written_as_default_with_a_warning(tmp_path: Path) -> None:
    """A byte-level tokenizer whose Split regex is no family llama.cpp knows: 'default', and export says so."""
    tok = byte_level_bpe(r"\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+|\s+", vocab_size=400)
    src = build_tiny_model(tmp_path / "model", tokenizer=tok)
    report = export_gguf(src, "f16", tmp_path / "m.gguf", verify=False, template="chatml", modelfile=False,
                         verbose=False)
    reader = GGUFReader(tmp_path / "m.gguf")
    assert field(reader, "tokenizer.ggml.model") == "gpt2" and field(reader, "tokenizer.ggml.pre") == "default"
    assert any("unrecognised pre-tokenizer" in w for w in report.warnings), report.warnings


def test_export_refuses_a_wrong_pre_tokenizer_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Named "gpt-2" instead of "llama-bpe", plain sentences still tokenize alike; export's probe prompts (digit
    runs, upper-case contractions, CRLF) catch it and the file is refused."""
    from llamabrew.export.verify import VerificationError
    from llamabrew.gguf import vocab as gguf_tokenizer

    tok = byte_level_bpe(LLAMA3_REGEX)
    src = build_tiny_model(tmp_path / "model", tokenizer=tok)
    monkeypatch.setattr(gguf_tokenizer, "_KNOWN_SPLITS", {LLAMA3_REGEX: "gpt-2"})
    with pytest.raises(VerificationError, match="tokenizes the prompts differently"):
        export_gguf(src, "f16", tmp_path / "m.gguf", template="chatml", modelfile=False, verbose=False)
    assert not (tmp_path / "m.gguf").exists()
