"""A LoRA adapter alone as a GGUF adapter: base GGUF + adapter GGUF in llama.cpp = torch base + adapter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from gguf import GGUFReader  # noqa: E402

from llamabrew.errors import LlamabrewError  # noqa: E402
from llamabrew.export import export_adapter_gguf, export_gguf, verify_gguf  # noqa: E402


def test_adapter_gguf_applies_like_peft(lora_run: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llamabrew.data.templates import get_template
    from llamabrew.export.verify import reference_logits

    path = export_adapter_gguf(lora_run, tmp_path / "adapter.gguf")
    reader = GGUFReader(path)
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["adapter.lora.alpha"].contents() == 8.0
    tensors = {t.name: list(t.shape) for t in reader.tensors}
    assert tensors["blk.0.attn_q.weight.lora_a"] == [32, 4] and tensors["blk.0.attn_q.weight.lora_b"] == [
        4,
        32,
    ]
    assert len(tensors) == 2 * 7 * 2  # A and B for 7 linear layers in each of 2 blocks

    base = (
        export_gguf(
            tiny_model_dir,
            "f16",
            tmp_path / "base.gguf",
            verify=False,
            modelfile=False,
            template="chatml",
            verbose=False,
        )
        .results[0]
        .path
    )
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora_run).eval()
    ref = reference_logits(model, AutoTokenizer.from_pretrained(lora_run), get_template("chatml"))
    with_adapter = verify_gguf(base, ref, "f16", lora=path)
    assert with_adapter.passed, with_adapter.summary()
    assert not verify_gguf(base, ref, "f16").passed  # without it the base alone is clearly different


def test_unsupported_adapters_are_refused(lora_run: Path, tmp_path: Path) -> None:
    dora = tmp_path / "dora"
    shutil.copytree(lora_run, dora)
    cfg = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(LlamabrewError, match="DoRA"):
        export_adapter_gguf(dora, tmp_path / "d.gguf")
    cut = tmp_path / "cut"
    shutil.copytree(lora_run, cut)
    (cut / "adapter_model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(LlamabrewError, match="corrupt or truncated"):
        export_adapter_gguf(cut, tmp_path / "c.gguf")
    assert not (tmp_path / "d.gguf").exists() and not (tmp_path / "c.gguf").exists()
