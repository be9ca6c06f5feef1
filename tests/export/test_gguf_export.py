"""GGUF export: files read back with gguf.GGUFReader, llama.cpp logits vs torch, other archs/tokenizers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from gguf import GGMLQuantizationType, GGUFReader  # noqa: E402
from tinymodels import build_tiny_mistral, build_tiny_qwen2, save_model  # noqa: E402

from llamabrew.data.templates import get_template  # noqa: E402
from llamabrew.errors import LlamabrewError  # noqa: E402
from llamabrew.export import BOUNDS, VerificationError, export_gguf  # noqa: E402


def field(reader: GGUFReader, key: str):
    return reader.fields[key].contents()


def by_quant(report, quant: str):
    return next(r for r in report.results if r.quant == quant)


def test_every_quant_is_written_and_verified(exported) -> None:
    assert [r.quant for r in exported.results] == ["f16", "q8_0", "q4_0", "q4_k_m"]
    for r in exported.results:
        assert r.path.is_file() and r.check is not None and r.check.tokens_match, r.check.summary()
        assert r.modelfile is not None and r.modelfile.path.is_file()
    for quant, bound in BOUNDS.items():
        check = by_quant(exported, quant).check
        assert check.passed, check.summary()
        assert check.mean_kl <= bound.max_mean_kl and check.top1 >= bound.min_top1
    f16, q8, q4 = (by_quant(exported, q).check for q in ("f16", "q8_0", "q4_0"))
    assert 0 < f16.mean_kl < q8.mean_kl < q4.mean_kl  # the cost of fewer bits is visible in the report
    assert f16.max_abs_diff < q4.max_abs_diff
    sizes = [r.size_bytes for r in exported.results]
    assert sizes[0] > sizes[1] > sizes[2]  # f16 > q8_0 > q4_0


def test_eval_scores_torch_and_every_gguf_side_by_side(exported) -> None:
    assert exported.torch_score is not None and exported.torch_score.n == 3
    assert all(r.score is not None and r.score.n == 3 for r in exported.results)
    table = exported.lines()
    assert table[0].split()[:2] == ["model", "MiB"] and table[1].startswith("torch")
    assert [line.split()[0] for line in table[2:]] == ["f16", "q8_0", "q4_0", "q4_k_m"]
    assert table[2].split()[-1] == "ok" and table[4].split()[-1] == "reported"


def test_gguf_metadata_and_tensors_read_back(exported, lora_run: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(lora_run)
    reader = GGUFReader(by_quant(exported, "f16").path)
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "tokenizer.ggml.model") == "gpt2" and field(reader, "tokenizer.ggml.pre") == "gpt-2"
    assert field(reader, "tokenizer.chat_template") == get_template("chatml").jinja
    assert field(reader, "tokenizer.ggml.bos_token_id") == tok.bos_token_id
    assert field(reader, "tokenizer.ggml.eos_token_id") == tok.eos_token_id
    assert field(reader, "tokenizer.ggml.add_bos_token") is True
    assert field(reader, "llamabrew.stop") == ["<|im_end|>", "<|im_start|>"]
    assert len(field(reader, "tokenizer.ggml.tokens")) == field(reader, "llama.vocab_size") == len(tok)
    assert (
        field(reader, "llama.attention.head_count") == 4
        and field(reader, "llama.attention.head_count_kv") == 2
    )
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 3 + 9 * 2  # embeddings, output norm, output + 9 per block
    assert list(tensors["token_embd.weight"].shape) == [32, len(tok)]  # ggml order: [row length, rows]
    assert list(tensors["blk.0.attn_k.weight"].shape) == [32, 16]  # 2 KV heads x 8
    assert list(tensors["blk.1.ffn_down.weight"].shape) == [64, 32]
    assert tensors["blk.0.attn_q.weight"].tensor_type == GGMLQuantizationType.F16
    assert tensors["blk.0.attn_norm.weight"].tensor_type == GGMLQuantizationType.F32
    q4 = {t.name: t.tensor_type for t in GGUFReader(by_quant(exported, "q4_0").path).tensors}
    assert q4["blk.0.ffn_up.weight"] == GGMLQuantizationType.Q4_0
    assert q4["output.weight"] == GGMLQuantizationType.Q8_0


def test_broken_conversion_is_refused(
    lora_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without LLaMA's q/k permutation the model loads and runs, but wrongly: verification must refuse it."""
    import llamabrew.gguf.writer as writer

    monkeypatch.setattr(writer, "_permute", lambda w, n_head: w)
    with pytest.raises(VerificationError, match="verification failed"):
        export_gguf(lora_run, "f16", tmp_path / "bad.gguf", verbose=False, modelfile=False)
    assert not (tmp_path / "bad.gguf").exists() and (tmp_path / "bad.gguf.rejected").is_file()


def test_qwen2_with_biases_and_tied_embeddings(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    report = export_gguf(
        build_tiny_qwen2(tok, tmp_path / "qwen"), "q8_0", tmp_path / "qwen.gguf", verbose=False, template="alpaca"
    )
    check = report.results[0].check
    assert check.passed, check.summary()
    tensors = {t.name for t in GGUFReader(tmp_path / "qwen.gguf").tensors}
    assert (
        "blk.0.attn_q.bias" in tensors and "output.weight" not in tensors
    )  # tied: llama.cpp reuses token_embd
    reader = GGUFReader(tmp_path / "qwen.gguf")
    assert field(reader, "general.architecture") == "qwen2"
    assert field(reader, "tokenizer.ggml.tokens")[-1] == f"[PAD{len(tok) + 19}]"
    assert field(reader, "tokenizer.ggml.token_type")[-1] == 5  # unused


def test_mistral_with_sentencepiece_tokenizer(tmp_path: Path) -> None:
    """A model directory with only a SentencePiece ``tokenizer.model`` (BPE, byte fallback), as transformers 5
    loads it (Metaspace "first"): a 'llama' vocab stock llama.cpp tokenizes alike. The corpus is the project's
    own text (tests/spm_styles.py), so this runs everywhere."""
    import llama_cpp
    from spm_styles import train_spm
    from transformers import LlamaTokenizer

    from llamabrew.data.encode import encode_text

    tok = LlamaTokenizer.from_pretrained(train_spm(tmp_path / "tok", dummy_prefix=True).parent)
    src = build_tiny_mistral(tok, tmp_path / "mistral")
    report = export_gguf(src, "f16", tmp_path / "m.gguf", template="alpaca", verbose=False, modelfile=False)
    check = report.results[0].check
    assert check.tokens_ok and check.passed, check.summary()
    reader = GGUFReader(tmp_path / "m.gguf")
    assert field(reader, "tokenizer.ggml.model") == "llama"
    assert field(reader, "tokenizer.ggml.add_space_prefix") is True
    assert field(reader, "general.architecture") == "llama"  # llama.cpp runs Mistral as LLaMA
    types = field(reader, "tokenizer.ggml.token_type")
    assert types[tok.convert_tokens_to_ids("<0x0A>")] == 6 and types[0] == 2  # byte and unknown tokens
    llm = llama_cpp.Llama(str(tmp_path / "m.gguf"), vocab_only=True, verbose=False)
    prompt = get_template("alpaca").render(tok, [{"role": "user", "content": "Hello world"}], True)
    for text in ("Hello world", prompt):
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == encode_text(tok, text), text
    llm.close()


def test_not_a_gguf_and_truncated_files_give_clear_errors(exported, tmp_path: Path) -> None:
    from llamabrew.engines.llamacpp import LlamaCppEngine
    from llamabrew.gguf.reader import read_gguf_info

    data = by_quant(exported, "q8_0").path.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    (tmp_path / "head.gguf").write_bytes(data[:1000])  # cut inside the header
    (tmp_path / "noise.gguf").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "empty.gguf").write_bytes(b"")
    for name in ("cut", "head", "noise", "empty"):
        with pytest.raises(LlamabrewError, match="GGUF"):
            read_gguf_info(tmp_path / f"{name}.gguf")
        with pytest.raises(LlamabrewError):
            LlamaCppEngine(tmp_path / f"{name}.gguf", announce=False)


def test_unknown_quant_and_architecture_are_refused(lora_run: Path, tmp_path: Path) -> None:
    from transformers import GPT2Config

    from llamabrew.gguf.writer import arch_of

    with pytest.raises(LlamabrewError, match="unknown quant type 'q3_k'"):
        export_gguf(lora_run, "q3_k", tmp_path / "x.gguf", verbose=False)
    with pytest.raises(LlamabrewError, match="supports llama, mistral, qwen2"):
        arch_of(GPT2Config())


def test_llama3_rope_scaling(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Llama 3.x long-context rope: per-frequency factors go into `rope_freqs`; llama.cpp matches torch."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, rope_parameters=rope,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    with torch.no_grad():  # peaked attention, so positions (and a wrong rope) change the logits a lot
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
    report = export_gguf(save_model(model, tok, tmp_path / "l3"), "f16", tmp_path / "l3.gguf", template="alpaca",
                         verbose=False, modelfile=False)
    assert report.results[0].check.passed, report.results[0].check.summary()
    factors = next(t for t in GGUFReader(tmp_path / "l3.gguf").tensors if t.name == "rope_freqs.weight")
    assert 1.0 < float(np.max(factors.data)) <= 8.0  # some frequencies really are scaled
