"""SentencePiece tokenizers built on the spot, laid out the way the real hub ``tokenizer.json`` files are.

One BPE model (byte fallback) is trained with the ``sentencepiece`` package on text the project ships (seed
task instructions and answers, `llamabrew.world` biographies, the Alpaca system prompts) with Llama-2's trainer
settings (identity normalization, digits split, whitespace kept). Its vocabulary and merges are then wrapped
with each family's normalizer / pre-tokenizer / decoder / post-processor JSON:

- ``llama2-legacy``: TinyLlama / Llama-2 as their tokenizer.json says (normalizer Prepend('▁') + Replace(' ',
  '▁'), no pre-tokenizer), kept as written (tokenizer class ``TokenizersBackend``);
- ``llama2``: the same file with ``tokenizer_class: LlamaTokenizer``, ``legacy: false``, which transformers 5
  rebuilds as Metaspace(prepend_scheme="first", split=False);
- ``mistral``: Mistral-v0.3-style (no normalizer, Metaspace "first", split false, [INST] / [/INST] control
  tokens), also a LlamaTokenizer;
- ``gemma``: normalizer Replace(' ', '▁') only, no dummy prefix (trained without one), <bos>/<eos>/<pad>/<unk>
  ids as Gemma has them and <start_of_turn> / <end_of_turn>.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SPM_LLAMA_IDS = {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1}
_SPM_GEMMA_IDS = {"pad_id": 0, "eos_id": 1, "bos_id": 2, "unk_id": 3}


@dataclass(frozen=True)
class Style:
    name: str
    bos: str
    eos: str
    unk: str
    tokenizer_class: str
    dummy_prefix: bool  # the SentencePiece model's add_dummy_prefix (llama.cpp's add_space_prefix)
    metaspace_first: bool  # what transformers 5 loads it as: Metaspace prepend_scheme "first"
    specials: tuple[str, ...] = ()
    pad: str | None = None


STYLES = {
    "llama2-legacy": Style("llama2-legacy", "<s>", "</s>", "<unk>", "TokenizersBackend", True, False),
    "llama2": Style("llama2", "<s>", "</s>", "<unk>", "LlamaTokenizer", True, True),
    "mistral": Style("mistral", "<s>", "</s>", "<unk>", "LlamaTokenizer", True, True, ("[INST]", "[/INST]")),
    "gemma": Style("gemma", "<bos>", "<eos>", "<unk>", "TokenizersBackend", False, False,
                   ("<start_of_turn>", "<end_of_turn>"), pad="<pad>"),
}


def corpus() -> list[str]:
    """Training text from the project's own files (no ../shared, no hub)."""
    from llamabrew.data.templates import ALPACA_NO_INPUT, ALPACA_WITH_INPUT
    from llamabrew.world import biographies, make_world

    seeds = Path(__file__).resolve().parents[1] / "src" / "llamabrew" / "data" / "seeds" / "seed_tasks.jsonl"
    records = [json.loads(line) for line in seeds.read_text().splitlines() if line.strip()]
    texts = [r[k] for r in records for k in ("instruction", "input", "output") if r.get(k)]
    return texts + biographies(make_world(30), 2) + [ALPACA_NO_INPUT, ALPACA_WITH_INPUT] * 5


def train_spm(folder: Path, dummy_prefix: bool) -> Path:
    """``folder/tokenizer.model``: a 1000-piece SentencePiece BPE with Llama-2's trainer settings."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_prefix=str(folder / "tokenizer"), vocab_size=1000,
        model_type="bpe", byte_fallback=True, split_digits=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=dummy_prefix, allow_whitespace_only_pieces=True,
        character_coverage=1.0, minloglevel=2, **(_SPM_LLAMA_IDS if dummy_prefix else _SPM_GEMMA_IDS))
    return folder / "tokenizer.model"


def _vocab_and_merges(model_dir: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The BPE vocabulary and merges transformers extracts from a SentencePiece model."""
    from transformers import LlamaTokenizer

    spec = json.loads(LlamaTokenizer.from_pretrained(model_dir).backend_tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    return spec["vocab"], merges


def build(style: Style, spm_dir: Path, out: Path, chat_template: str | None = None) -> Any:
    """The style's tokenizer (as `AutoTokenizer` loads it from ``out``) on the model in ``spm_dir``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import AutoTokenizer

    vocab, merges = _vocab_and_merges(spm_dir)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=style.unk, fuse_unk=True, byte_fallback=True))
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if style.name == "mistral":
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    elif style.dummy_prefix:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    else:
        tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence(steps + [decoders.Strip(" ", 1, 0)] if style.dummy_prefix else steps)
    named = [t for t in (style.pad, style.eos, style.bos, style.unk) if t]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (*named, *style.specials)])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{style.bos} $A", pair=f"{style.bos} $A {style.bos} $B",
        special_tokens=[(style.bos, tok.token_to_id(style.bos))])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": style.tokenizer_class, "bos_token": style.bos, "eos_token": style.eos,
              "unk_token": style.unk, "pad_token": style.pad, "legacy": False, "add_bos_token": True,
              "clean_up_tokenization_spaces": False}
    if chat_template:
        config["chat_template"] = chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return AutoTokenizer.from_pretrained(out)
