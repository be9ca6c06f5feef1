"""benchmarks/train_throughput.py's CPU mode, the part the suite can check: Alpaca-like lengths, and one
configuration of each kind (a fixed recipe, llamabrew's fast path) measured in-process on the tiny shape, and
the Alpaca-like data it and gpu_train_check.py share (benchmarks/alpaca_like.py)."""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "train_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_lengths_are_alpaca_like(bench) -> None:
    from alpaca_like import alpaca_like_lengths  # benchmarks/alpaca_like.py, on the path once the benchmark loads

    lengths = alpaca_like_lengths(5000)
    assert min(lengths) >= 60 and max(lengths) <= 1024
    assert 140 <= statistics.median(lengths) <= 160
    assert sum(n > 400 for n in lengths) > 20  # a long tail, as real instruction data has


@pytest.mark.parametrize("name, expect", [("alpaca-lora", "padded, sdpa, plain loss, checkpointing, adamw"),
                                          ("packed-cpu", "packed, sdpa, plain loss, adamw")])
def test_one_configuration_measures_real_tokens_memory_and_a_finite_loss(bench, tmp_path: Path, name: str,
                                                                          expect: str) -> None:
    args = argparse.Namespace(device="cpu", shape="tiny", seconds=0.5, warmup=0, grad_accum=1, examples=32,
                              work=str(tmp_path))
    result = bench.measure(next(c for c in bench.CONFIGS if c.name == name), args)
    assert result["fast_path"] == expect
    assert result["tokens_per_s"] > 0 and result["steps"] >= 2 and result["peak_gib"] > 0
    assert 60 <= result["context"] <= 512 and result["loss_first"] == pytest.approx(9.0, abs=0.5)  # ln(8000)
    table = bench.report([result], argparse.Namespace(shape="tiny", device="cpu"), (1e11, "test"))
    assert name in table and "%" in table
