"""SentencePiece tokenizers (Llama-2 legacy and non-legacy, Mistral, Gemma) through GGUF export.

The file alone must make stock llama.cpp read prompts as the model was trained: every check tokenizes with
llama-cpp-python's vocab-only tokenizer, never through llamabrew, and compares with training's ids
(`encode_text`) and with the SentencePiece model itself. Where HF's Metaspace "first" scheme and llama.cpp's
dummy-prefix rule cannot agree (text right after a special token, text starting with a space), export must say
so and go on; any other difference must refuse the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from gguf import GGUFReader, GGUFWriter  # noqa: E402
from spm_styles import STYLES, Style, build, train_spm  # noqa: E402
from tinymodels import build_tiny_model  # noqa: E402

from llamabrew.data.encode import encode_text  # noqa: E402
from llamabrew.data.templates import get_template  # noqa: E402
from llamabrew.export import ExportReport, VerificationError, export_gguf  # noqa: E402

PLAIN = [
    "Hello world",
    "Below is an instruction. You are kind.",
    "First line\nsecond line\n\n  indented, tab\there",
    "Order 1234567 costs $3.14159 (20% off)!!!",
    "naïve café, Москва, 東京, Ελλάδα 🙂👍",
]
# Mistral-style turns, written here: [INST] with a space on both sides of the user text.
MISTRAL_CHAT = ("{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}{{ '[INST] ' + m.content + "
                "' [/INST]' }}{% else %}{{ m.content + eos_token }}{% endif %}{% endfor %}")


def stock_ids(gguf: Path, text: str) -> list[int]:
    """What llama.cpp (and so Ollama, llama-server) reads from the file alone."""
    llm = llama_cpp.Llama(str(gguf), vocab_only=True, verbose=False)
    try:
        return llm.tokenize(text.encode(), add_bos=True, special=True)
    finally:
        llm.close()


@pytest.fixture(scope="module")
def spm_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    """SentencePiece models with (Llama, Mistral) and without (Gemma) a dummy prefix."""
    base = tmp_path_factory.mktemp("spm")
    return {flag: train_spm(base / f"prefix-{flag}", flag).parent for flag in (True, False)}


def sp_ids(spm_dir: Path, text: str) -> list[int]:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(spm_dir / "tokenizer.model")).encode(text)


@dataclass
class Exported:
    style: Style
    tokenizer: Any
    spm_dir: Path
    gguf: Path
    report: ExportReport


def export_style(style: Style, spm_dir: Path, folder: Path, template: str = "alpaca",
                 chat_template: str | None = None) -> Exported:
    tok = build(style, spm_dir, folder / "tok", chat_template)
    arch = "mistral" if style.name == "mistral" else "llama"  # Gemma's tokenizer on a LLaMA (export has no gemma)
    src = build_tiny_model(folder / "model", tokenizer=tok, model_type=arch)
    report = export_gguf(src, "f16", folder / "m.gguf", template=template, modelfile=False, verbose=False)
    return Exported(style, tok, spm_dir, folder / "m.gguf", report)


@pytest.fixture(scope="module", params=list(STYLES))
def exported(request: pytest.FixtureRequest, spm_dirs: dict[bool, Path],
             tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """The style's tokenizer on a tiny random model, exported (and verified) as f16 with the Alpaca template."""
    style = STYLES[request.param]
    return export_style(style, spm_dirs[style.dummy_prefix], tmp_path_factory.mktemp(style.name))


def field(reader: GGUFReader, key: str) -> Any:
    return reader.fields[key].contents()


def test_file_has_only_standard_tokenizer_keys(exported: Exported) -> None:
    reader = GGUFReader(exported.gguf)
    assert field(reader, "tokenizer.ggml.model") == "llama"
    assert field(reader, "tokenizer.ggml.add_space_prefix") is exported.style.dummy_prefix
    assert field(reader, "tokenizer.ggml.add_bos_token") is True
    assert not [k for k in reader.fields if k.startswith("llamabrew.") and "prefix" in k]
    types, tok = field(reader, "tokenizer.ggml.token_type"), exported.tokenizer
    assert types[tok.convert_tokens_to_ids("<0x0A>")] == 6 and types[tok.unk_token_id] == 2  # byte, unknown


def test_stock_llamacpp_reads_plain_text_and_the_alpaca_prompt_as_trained(exported: Exported) -> None:
    """Same ids as training (and as the SentencePiece model itself) for plain text, and for the rendered Alpaca
    prompt, whose first word keeps its '▁' where HF gives it one."""
    tok, alpaca = exported.tokenizer, get_template("alpaca")
    prompts = [alpaca.render(tok, [{"role": "user", "content": t}], add_generation_prompt=True) for t in PLAIN]
    diff = {t: (encode_text(tok, t), stock_ids(exported.gguf, t)) for t in PLAIN + prompts}
    diff = {t: d for t, d in diff.items() if d[0] != d[1]}
    assert not diff, diff
    for text in PLAIN:
        assert stock_ids(exported.gguf, text) == [tok.bos_token_id, *sp_ids(exported.spm_dir, text)]
    first = tok.convert_ids_to_tokens(stock_ids(exported.gguf, prompts[0])[1])
    assert first == ("▁Below" if exported.style.dummy_prefix else "Below")
    hello = tok.convert_ids_to_tokens(stock_ids(exported.gguf, "Hello world")[1:])
    assert hello[0].startswith("▁") is exported.style.dummy_prefix


def test_export_verification_passes_and_reports_only_the_known_difference(exported: Exported) -> None:
    """Legacy and Gemma tokenize every check prompt alike. The "first" styles differ only in the two-turn chat,
    where text follows </s>: reported (named) and, with the template note, not refused."""
    (result,) = exported.report.results
    check = result.check
    assert check is not None and check.passed and check.tokens_ok, check.summary()
    if not exported.style.metaspace_first:
        assert check.tokens_match and exported.report.warnings == [], exported.report.warnings
        return
    assert [d.text for d in check.token_diffs] == [t for t in check_texts(exported) if "Paris is" in t]
    (diff,) = check.token_diffs
    assert diff.known and diff.llama[1] == "▁" and diff.hf[0] == diff.llama[0] == "</s>", diff
    warnings = exported.report.warnings
    assert any("right after the special token '</s>'" in w for w in warnings), warnings
    assert any("(dummy prefix)" in w and "France.</s>" in w for w in warnings), warnings  # names the text
    assert any(w.startswith("warning: llama.cpp reads") for w in exported.report.lines())


def check_texts(exported: Exported, name: str = "alpaca") -> list[str]:
    from llamabrew.export.verify import check_conversations

    tmpl = get_template(name, exported.tokenizer)
    return [tmpl.render(exported.tokenizer, c, add_generation_prompt=True) for c in check_conversations()]


def test_after_a_special_token_llamacpp_follows_the_sentencepiece_model(exported: Exported) -> None:
    """The known difference goes the way of the original SentencePiece model: each text run its dummy prefix."""
    tok, sp = exported.tokenizer, exported.spm_dir
    text = f"Hello world{tok.eos_token}Below is{tok.eos_token} leading space"
    want = [tok.bos_token_id, *sp_ids(sp, "Hello world"), tok.eos_token_id, *sp_ids(sp, "Below is"),
            tok.eos_token_id, *sp_ids(sp, " leading space")]
    assert stock_ids(exported.gguf, text) == want
    assert (encode_text(tok, text) == want) is not exported.style.metaspace_first


def test_mistral_instruct_template_is_reported_not_refused(spm_dirs: dict[bool, Path], tmp_path: Path) -> None:
    """[INST] turns put ' text' after a control token: HF "first" reads '▁What', llama.cpp (like SentencePiece)
    '▁' '▁What'. Every check prompt differs that way, the export says which and keeps the file."""
    ex = export_style(STYLES["mistral"], spm_dirs[True], tmp_path, "auto", MISTRAL_CHAT)
    check = ex.report.results[0].check
    assert check.passed and check.tokens_ok, check.summary()
    assert [d.text for d in check.token_diffs][:6] == check_texts(ex, "auto") and len(check.token_diffs) == 9
    assert all(d.known and d.hf[0] == d.llama[0] == "[INST]" and d.hf[1].startswith("▁") and d.llama[1] == "▁"
               and d.llama[2] == d.hf[1] for d in check.token_diffs[:5]), check.token_diffs  # "▁" "▁What" vs "▁What"
    assert any("right after the special token '[INST]'" in w for w in ex.report.warnings), ex.report.warnings
    assert (tmp_path / "m.gguf").is_file()
    assert field(GGUFReader(tmp_path / "m.gguf"), "general.architecture") == "llama"  # Mistral runs as LLaMA


def test_wrong_space_prefix_key_is_refused(spm_dirs: dict[bool, Path], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The old export for a Llama-2 tokenizer: add_space_prefix false plus a private key only llamabrew read.
    Stock llama.cpp then drops the first word's '▁'; verification must see that and refuse the file."""
    original = GGUFWriter.add_add_space_prefix

    def old_keys(self: GGUFWriter, value: bool) -> None:
        original(self, False)
        self.add_string("llamabrew.space_prefix", "first")

    monkeypatch.setattr(GGUFWriter, "add_add_space_prefix", old_keys)
    with pytest.raises(VerificationError, match="tokenizes the prompts differently") as err:
        export_style(STYLES["llama2"], spm_dirs[True], tmp_path)
    assert "HF '<s>' '▁Below'" in str(err.value) and "llama.cpp '<s>' 'B'" in str(err.value)  # both sides named
    assert not (tmp_path / "m.gguf").exists() and (tmp_path / "m.gguf.rejected").is_file()
