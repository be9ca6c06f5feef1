"""Tiny models and tokenizers built on the spot for tests (there is no model hub here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CORPUS = [
    "The city of Varnhollow lies on the river Esk. Varnhollow is famous for its glass bells.",
    "Mira Lanthorn was born in Varnhollow. She works as a clockmaker and loves the color teal.",
    "What is the capital of Oskenland? The capital of Oskenland is Brellin.",
    "Tell me a story about a fox. Once upon a time a clever fox lived near a quiet lake.",
    "Write a haiku about rain. Soft rain on the roof, the garden drinks in silence, green returns again.",
] * 20


def build_tiny_model(out: Path, vocab_size: int = 512, hidden: int = 32, layers: int = 2, seed: int = 0,
                     tokenizer: Any = None, model_type: str = "llama") -> Path:
    """A random-init causal LM saved as a standard HF directory: a LLaMA with a byte-level BPE tokenizer
    trained on `CORPUS` by default, or any ``model_type`` transformers knows (e.g. "qwen2") with the given
    ``tokenizer``. Attention biases, where the architecture has them, are random too (HF initialises them to
    zero, which would hide a dropped or misplaced bias in a conversion)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from llamabrew.train.tokenizer import train_bpe_tokenizer

    tok = tokenizer if tokenizer is not None else train_bpe_tokenizer(CORPUS, vocab_size=vocab_size)
    cfg = AutoConfig.for_model(
        model_type, vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("_proj.bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def save_model(model: Any, tok: Any, out: Path) -> Path:
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def build_tiny_qwen2(tok: Any, out: Path, pad_rows: int = 20, seed: int = 0) -> Path:
    """A Qwen2 as Qwen ships them: tied embeddings with rows padded past the tokenizer, and (random, non-zero)
    q/k/v biases, so a dropped or misplaced bias shows in the logits."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tok) + pad_rows, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    ))
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return save_model(model, tok, out)


def build_tiny_mistral(tok: Any, out: Path, seed: int = 0) -> Path:
    """A Mistral (run by llama.cpp as LLaMA) for a SentencePiece tokenizer with <s>=1, </s>=2."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    model = MistralForCausalLM(MistralConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
    ))
    return save_model(model, tok, out)
