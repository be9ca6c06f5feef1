"""Pretraining from scratch: a standard HF directory, a plan first, the time budget honoured."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tinymodels import CORPUS

from llamabrew.errors import InputError
from llamabrew.train.pretrain import SHAPES, count_params, llama_config, read_corpus


def write_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(CORPUS))
    return path


def test_pretrain_writes_a_loadable_model_within_the_time_budget(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "base"
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "llamabrew.cli", "pretrain", "--corpus", str(write_corpus(tmp_path)),
                          "--out", str(out), "--max-minutes", "0.25", "--epochs", "1000", "--vocab-size", "400",
                          "--seq-len", "64", "--threads", "1"], capture_output=True, text=True)
    wall = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    assert "plan" in res.stderr and "parameters" in res.stderr and "expected time" in res.stderr
    assert wall < 0.25 * 60 + 40  # the budget plus start-up (imports, tokenizer, size probes) and saving
    plan = json.loads((out / "pretrain_plan.json").read_text())
    assert plan["epochs"] < 1000  # the budget, not the epochs asked for, set the length
    for name in ("config.json", "model.safetensors", "tokenizer.json", "recipe.yaml", "loss.jsonl", "loss.png"):
        assert (out / name).is_file(), name
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "llama"
    assert sum(p.numel() for p in model.parameters()) == plan["params"]
    ids = tok("The city of Varnhollow", return_tensors="pt").input_ids
    assert ids[0, 0].item() == tok.bos_token_id
    assert model(ids).logits.shape[-1] == len(tok)
    log = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"]


def test_params_flag_picks_the_nearest_shape(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "base"
    res = subprocess.run([sys.executable, "-m", "llamabrew.cli", "pretrain", "--corpus", str(write_corpus(tmp_path)),
                          "--out", str(out), "--params", "1000000", "--max-minutes", "0.1", "--vocab-size", "400",
                          "--seq-len", "64"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    n = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(out).parameters())
    assert 0.5e6 < n < 2e6


def test_shape_ladder_grows() -> None:
    from llamabrew.train.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer(CORPUS, 300)
    sizes = [count_params(llama_config(h, n, tok, 64)) for h, n in SHAPES]
    assert sizes == sorted(sizes)


def test_corpus_errors_name_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": "no text field"}\n')
    with pytest.raises(InputError, match=r"c\.jsonl:2: field 'text'"):
        read_corpus([bad])
    empty = tmp_path / "e.txt"
    empty.write_text("\n\n")
    with pytest.raises(InputError, match="empty"):
        read_corpus([empty])
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"ok\n\xff\xfe")
    with pytest.raises(InputError, match="UTF-8"):
        read_corpus([binary])
