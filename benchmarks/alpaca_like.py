"""Alpaca-like data for the training benchmarks: lengths shaped like Alpaca-52K's in a LLaMA tokenizer (lognormal,
median 150 tokens, clipped to 60-1024), as random-token examples with a masked prompt, or as a JSONL stand-in with
Alpaca's size for `llamabrew plan`. Used by train_throughput.py and gpu_train_check.py."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def alpaca_like_lengths(n: int, seed: int = 0) -> list[int]:
    """Lognormal lengths, median 150 tokens, clipped to 60-1024 (Alpaca-52K's shape in a LLaMA tokenizer)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    raw = torch.exp(math.log(150) + 0.6 * torch.randn(n, generator=gen))
    return [int(x) for x in raw.clamp(60, 1024).round()]


def examples(n: int, vocab: int, cutoff: int, seed: int = 0) -> list[Any]:
    """``n`` examples of random token ids (3..vocab) with Alpaca-like lengths cut at ``cutoff``, the first 40% of
    each a masked prompt."""
    import torch

    from llamabrew.data.encode import IGNORE, Encoded

    gen = torch.Generator().manual_seed(seed)
    out = []
    for length in alpaca_like_lengths(n, seed):
        ids = torch.randint(3, vocab, (length,), generator=gen).tolist()[:cutoff]
        prompt = min(len(ids) - 1, int(0.4 * length))
        out.append(Encoded(ids, [IGNORE] * prompt + ids[prompt:]))
    return out


def write_alpaca_like(path: Path, n: int = 52002) -> None:
    """A stand-in with Alpaca-52K's size and lengths for `llamabrew plan` where the real file and the base's tokenizer
    are not at hand: about 4 characters a token, the plan's own estimate, 30% instruction and 70% answer."""
    words = "the of and to in is that for it as with was on be by this are from or an".split()
    with path.open("w") as f:
        for i, length in enumerate(alpaca_like_lengths(n)):
            chars = 4 * max(1, length - 40)  # the plan counts 40 tokens of Alpaca prompt around the text
            text = (f"task {i}: " + " ".join(words[(i + k) % len(words)] for k in range(chars)))[:chars]
            cut = int(0.3 * chars)
            f.write(json.dumps({"instruction": text[:cut], "input": "", "output": text[cut:]}) + "\n")
